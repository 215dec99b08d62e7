/** `distflash train` end to end on the CPU backend: flags, data contract, resume, accumulation. */
import { assert, assertEquals, assertLess, assertRejects } from "./assert.ts";
import { runCli } from "./_util.ts";
import { train } from "../src/train/trainer.ts";
import { OptionError } from "../src/train/resolve_options.ts";
import { writeNpy } from "../src/io/npy.ts";
import { presetConfig } from "../src/model/presets.ts";
import { DecoderModel } from "../src/model/decoder.ts";
import { initRandom } from "../src/model/hf.ts";
import { Device } from "../src/runtime/device.ts";
import { DType } from "../src/runtime/ops.ts";
import { join } from "node:path";
import { existsSync } from "node:fs";

const quiet = { log: () => {} };

async function metrics(dir: string) {
  const text = await Deno.readTextFile(join(dir, "metrics.jsonl"));
  return text.trim().split("\n").map((line) => JSON.parse(line));
}

Deno.test("train: bad values are rejected before any work, naming the flag", async () => {
  const cases: [Record<string, unknown>, string][] = [
    [{ model: "debug-tiny", synthetic: true, learningRate: "fast" }, "--learning-rate"],
    [{ model: "debug-tiny", synthetic: true, lrSchedulerType: "step" }, "--lr-scheduler-type"],
    [
      { model: "debug-tiny", synthetic: true, perDeviceTrainBatchSize: 0 },
      "--per-device-train-batch-size",
    ],
    [{ model: "debug-tiny", synthetic: true, device: "tpu" }, "--device"],
    [{ model: "debug-tiny", synthetic: true, warmupRatio: 2 }, "--warmup-ratio"],
    [{ model: "debug-tiny" }, "--data-path"],
    [{ model: "no-such-model", synthetic: true }, "--model"],
    [{ model: "debug-tiny", dataPath: "/no/such.jsonl" }, "/no/such.jsonl"],
  ];
  for (const [options, flag] of cases) {
    const error = await assertRejects(() => train(options, quiet));
    assert(error.message.includes(flag), `${flag}: ${error.message}`);
  }
  const e = await assertRejects(
    () => train({ model: "debug-tiny", synthetic: true, maxSteps: 1.5 }, quiet),
    OptionError,
  );
  assert(e.message.includes("--max-steps"));
});

Deno.test("train: the CLI accepts the paper's snake_case flags and stops after --max-steps", async () => {
  const out = await Deno.makeTempDir();
  const r = await runCli([
    "train",
    "--model",
    "debug-tiny",
    "--synthetic",
    "--output_dir",
    out,
    "--max_steps",
    "2",
    "--per_device_train_batch_size",
    "2",
    "--gradient_accumulation_steps",
    "1",
    "--learning_rate",
    "1e-3",
    "--weight_decay",
    "0",
    "--warmup_ratio",
    "0.03",
    "--lr_scheduler_type",
    "cosine",
    "--logging_steps",
    "1",
    "--save_strategy",
    "steps",
    "--save_steps",
    "1000",
    "--save_total_limit",
    "1",
    "--fsdp",
    "full_shard auto_wrap",
    "--model_max_length",
    "32",
    "--gradient_checkpointing",
    "True",
    "--tf32",
    "True",
    "--device",
    "cpu",
  ]);
  assertEquals(r.code, 0, r.stderr);
  assert(r.stderr.includes("--tf32 is accepted for compatibility and has no effect"), r.stderr);
  const m = await metrics(out);
  assertEquals(m.map((x) => x.step), [1, 2]);
  for (const key of ["loss", "learning_rate", "grad_norm", "tokens_per_s"]) {
    assert(Number.isFinite(m[0][key]), key);
  }
  // The flags' effects: --warmup_ratio 0.03 of 2 steps rounds up to 1 warmup step, whose update
  // uses lr 0; the second step runs at --learning_rate (cosine at progress 0).
  assertEquals(m.map((x) => x.learning_rate), [0, 1e-3]);
  assert(r.stderr.includes("2x32 tokens x 1 accumulation"), r.stderr); // batch, length, accum
  assert(r.stderr.includes('--fsdp "full_shard auto_wrap" has no effect on a single device'));
  assert((await Deno.stat(join(out, "config.json"))).isFile);
  assert((await Deno.stat(join(out, "checkpoint-2", "optimizer.safetensors"))).isFile);
  const unknown = await runCli([
    "train",
    "--model",
    "debug-tiny",
    "--synthetic",
    "--bogus-flag",
    "1",
  ]);
  assert(unknown.code !== 0 && unknown.stderr.includes("--bogus-flag"), unknown.stderr);
  await Deno.remove(out, { recursive: true });
});

Deno.test("train: a .npy file of exactly one window is the first step's batch", async () => {
  const dir = await Deno.makeTempDir();
  const L = 16;
  const tokens = Int32Array.from({ length: L + 1 }, (_, i) => (i * 37 + 5) % 256);
  await writeNpy(join(dir, "one.npy"), tokens);
  await train({
    model: "debug-tiny",
    dataPath: join(dir, "one.npy"),
    modelMaxLength: L,
    maxSteps: 1,
    outputDir: dir,
    device: "cpu",
    seed: 7,
    saveStrategy: "no",
    learningRate: 0,
  }, quiet);
  const [m] = await metrics(dir);
  // The same model (same seed) on inputs = first L tokens, labels = last L, computed directly.
  const device = Device.open("cpu");
  const model = new DecoderModel(device, presetConfig("debug-tiny"), {
    dtype: DType.f32,
    batch: 1,
    seqLen: L,
  });
  model.allocate();
  initRandom(model, 7);
  model.setBatch(tokens.subarray(0, L), tokens.subarray(1));
  await model.forward();
  const want = model.lossSum() / L;
  model.free();
  assertLess(Math.abs(m.loss - want), 1e-5 * want, "step-1 loss equals the window's loss");
  await Deno.remove(dir, { recursive: true });
});

Deno.test("train: resuming from a checkpoint continues the same run exactly", async () => {
  const a = await Deno.makeTempDir(), b = await Deno.makeTempDir();
  const base = {
    model: "debug-tiny",
    synthetic: true,
    modelMaxLength: 16,
    perDeviceTrainBatchSize: 2,
    maxSteps: 4,
    learningRate: 1e-2,
    loggingSteps: 1,
    saveSteps: 2,
    device: "cpu",
    lrSchedulerType: "cosine",
    warmupSteps: 1,
  };
  await train({ ...base, outputDir: a }, quiet);
  const full = await metrics(a);
  await train({ ...base, outputDir: b, maxSteps: 4, saveSteps: 2, saveTotalLimit: 1 }, quiet);
  const entries = [...Deno.readDirSync(b)].map((e) => e.name).filter((n) =>
    n.startsWith("checkpoint-")
  );
  assertEquals(entries, ["checkpoint-4"], "save-total-limit keeps the newest only");
  // Resume run: checkpoint-2 of run a, continued to step 4.
  await train({ ...base, outputDir: a, resumeFromCheckpoint: join(a, "checkpoint-2") }, quiet);
  // metrics.jsonl is cut back to the checkpoint's step, then continued: no step twice.
  const after = await metrics(a);
  assertEquals(after.map((m) => m.step), [1, 2, 3, 4]);
  const resumed = after.slice(2);
  for (let i = 0; i < 2; i++) {
    assertLess(Math.abs(resumed[i].loss - full[2 + i].loss), 1e-6, `step ${3 + i}`);
  }
  await Deno.remove(a, { recursive: true });
  await Deno.remove(b, { recursive: true });
});

Deno.test("train: 2 micro-batches of 1 equal 1 micro-batch of 2", async () => {
  const a = await Deno.makeTempDir(), b = await Deno.makeTempDir();
  const base = {
    model: "debug-tiny",
    synthetic: true,
    modelMaxLength: 16,
    maxSteps: 2,
    learningRate: 1e-2,
    loggingSteps: 1,
    device: "cpu",
    saveStrategy: "no",
  };
  await train({ ...base, outputDir: a, perDeviceTrainBatchSize: 2 }, quiet);
  await train(
    {
      ...base,
      outputDir: b,
      perDeviceTrainBatchSize: 1,
      gradientAccumulationSteps: 2,
      saveFinalModel: false,
    },
    quiet,
  );
  assert(existsSync(join(a, "model.safetensors")), "the final model is saved by default");
  assert(!existsSync(join(b, "model.safetensors")), "--save-final-model false writes no model");
  const [ma, mb] = [await metrics(a), await metrics(b)];
  for (let i = 0; i < 2; i++) {
    assertLess(Math.abs(ma[i].loss - mb[i].loss), 1e-5, "loss");
    assertLess(Math.abs(ma[i].grad_norm - mb[i].grad_norm) / ma[i].grad_norm, 1e-4, "grad norm");
  }
  await Deno.remove(a, { recursive: true });
  await Deno.remove(b, { recursive: true });
});

Deno.test("train: Ctrl-C finishes the step, saves a checkpoint, exits 130, and the run resumes", async () => {
  const out = await Deno.makeTempDir();
  const main = new URL("../cli/main.ts", import.meta.url).pathname;
  const args = [
    "run",
    "-A",
    main,
    "train",
    "--model",
    "debug-tiny",
    "--synthetic",
    "--model-max-length",
    "16",
    "--max-steps",
    "100000",
    "--logging-steps",
    "1",
    "--device",
    "cpu",
    "--save-strategy",
    "no",
    "--lr-scheduler-type",
    "constant", // the same lr per step whatever --max-steps, so a straight run can match
    "--output-dir",
    out,
  ];
  const child = new Deno.Command(Deno.execPath(), {
    args,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  for (let i = 0; i < 300; i++) {
    await new Promise((r) => setTimeout(r, 50));
    const text = await Deno.readTextFile(join(out, "metrics.jsonl")).catch(() => "");
    if (text.includes('"step":3')) break;
  }
  child.kill("SIGINT");
  const status = await child.output();
  const stderr = new TextDecoder().decode(status.stderr);
  assertEquals(status.code, 130, stderr);
  const match = /resume with --resume-from-checkpoint (\S+)/.exec(stderr);
  assert(match, stderr);
  const state = JSON.parse(await Deno.readTextFile(join(match[1], "trainer_state.json")));
  assert(state.global_step >= 3, `saved at step ${state.global_step}`);
  const resumeOptions = {
    model: "debug-tiny",
    synthetic: true,
    modelMaxLength: 16,
    maxSteps: state.global_step + 2,
    loggingSteps: 1,
    device: "cpu",
    saveStrategy: "no",
    lrSchedulerType: "constant",
  };
  const resumed = await train(
    { ...resumeOptions, outputDir: out, resumeFromCheckpoint: match[1] },
    quiet,
  );
  assertEquals(resumed.steps, state.global_step + 2);
  // The interrupted-and-resumed run against a straight one, step by step.
  const straight = await Deno.makeTempDir();
  await train({ ...resumeOptions, outputDir: straight }, quiet);
  const want = await metrics(straight), got = await metrics(out);
  assertEquals(got.map((x) => x.step), want.map((x) => x.step));
  for (let i = 0; i < want.length; i++) {
    assertLess(Math.abs(got[i].loss - want[i].loss), 1e-6, `step ${i + 1} loss`);
  }
  await Deno.remove(straight, { recursive: true });
  await Deno.remove(out, { recursive: true });
});

Deno.test("train: --offload-optimizer gives the same run, saves and resumes it exactly", async () => {
  const base = {
    model: "debug-tiny",
    synthetic: true,
    modelMaxLength: 16,
    perDeviceTrainBatchSize: 2,
    maxSteps: 6,
    learningRate: 1e-2,
    loggingSteps: 1,
    device: "cpu",
    saveSteps: 3,
    weightDecay: 0.1,
  };
  for (const bf16 of [false, true]) {
    const a = await Deno.makeTempDir(), b = await Deno.makeTempDir();
    await train({ ...base, bf16, outputDir: a }, quiet);
    await train({ ...base, bf16, outputDir: b, offloadOptimizer: true }, quiet);
    const [ma, mb] = [await metrics(a), await metrics(b)];
    for (let i = 0; i < ma.length; i++) {
      assertLess(
        Math.abs(ma[i].loss - mb[i].loss),
        1e-5 * ma[i].loss,
        `bf16=${bf16} step ${i + 1} loss`,
      );
      assertLess(
        Math.abs(ma[i].grad_norm - mb[i].grad_norm),
        1e-4 * ma[i].grad_norm,
        `bf16=${bf16} step ${i + 1} grad_norm`,
      );
    }
    // Resume the offloaded run from its step-3 checkpoint: steps 4-6 repeat exactly.
    await train({
      ...base,
      bf16,
      outputDir: b,
      offloadOptimizer: true,
      resumeFromCheckpoint: join(b, "checkpoint-3"),
    }, quiet);
    const after = await metrics(b);
    assertEquals(after.map((m) => m.step), [1, 2, 3, 4, 5, 6]);
    const resumed = after.slice(3);
    for (let i = 0; i < 3; i++) {
      assertLess(Math.abs(resumed[i].loss - mb[3 + i].loss), 1e-6, `resumed step ${4 + i}`);
    }
    await Deno.remove(a, { recursive: true });
    await Deno.remove(b, { recursive: true });
  }
});

/** Relative L2 distance of every saved weight of two output folders (the largest). */
async function weightDistance(a: string, b: string): Promise<number> {
  const { openSafetensors } = await import("../src/io/safetensors.ts");
  const [x, y] = [
    await openSafetensors(join(a, "model.safetensors")),
    await openSafetensors(join(b, "model.safetensors")),
  ];
  let worst = 0;
  for (const name of y.names()) {
    const [u, v] = [await x.readFloat32(name), await y.readFloat32(name)];
    let num = 0, den = 0;
    for (let i = 0; i < v.length; i++) {
      num += (u[i] - v[i]) ** 2;
      den += v[i] ** 2;
    }
    worst = Math.max(worst, Math.sqrt(num / den));
  }
  x.close();
  y.close();
  return worst;
}

Deno.test("train: --offload-gradients gives the offloaded run's loss curve and weights, and resumes exactly", async () => {
  // Two micro-batches per step: the second arrival of each unit's gradient is added on the host.
  // Clipping is active (norms > 0.5), so the norm, computed unit by unit on the host, steers the
  // update; only its summation order differs from the device norm: fp32 rounding, 1e-6 relative.
  const base = {
    model: "debug-tiny",
    synthetic: true,
    modelMaxLength: 16,
    perDeviceTrainBatchSize: 2,
    gradientAccumulationSteps: 2,
    maxSteps: 6,
    learningRate: 1e-2,
    maxGradNorm: 0.5,
    loggingSteps: 1,
    device: "cpu",
    saveSteps: 3,
    weightDecay: 0.1,
    offloadOptimizer: true,
  };
  for (const bf16 of [false, true]) {
    const a = await Deno.makeTempDir(), b = await Deno.makeTempDir();
    await train({ ...base, bf16, outputDir: a }, quiet);
    await train({ ...base, bf16, outputDir: b, offloadGradients: true }, quiet);
    const [ma, mb] = [await metrics(a), await metrics(b)];
    assertEquals(mb.length, 6);
    for (let i = 0; i < ma.length; i++) {
      assert(ma[i].grad_norm > base.maxGradNorm, `step ${i + 1} is clipped`);
      for (const key of ["loss", "grad_norm"]) {
        assertLess(
          Math.abs(ma[i][key] - mb[i][key]),
          1e-5 * ma[i][key],
          `bf16=${bf16} step ${i + 1} ${key}`,
        );
      }
    }
    assertLess(await weightDistance(b, a), 1e-5, `bf16=${bf16} final weights`);
    // Resume from step 3: steps 4-6 and the final weights repeat exactly.
    const c = await Deno.makeTempDir();
    await train({
      ...base,
      bf16,
      outputDir: c,
      offloadGradients: true,
      resumeFromCheckpoint: join(b, "checkpoint-3"),
    }, quiet);
    const resumed = (await metrics(c)).slice(-3);
    assertEquals(resumed.map((m) => m.step), [4, 5, 6]);
    for (let i = 0; i < 3; i++) {
      assertEquals(resumed[i].loss, mb[3 + i].loss, `resumed step ${4 + i} loss`);
      assertEquals(resumed[i].grad_norm, mb[3 + i].grad_norm, `resumed step ${4 + i} norm`);
    }
    assertEquals(await weightDistance(c, b), 0, `bf16=${bf16} resumed weights`);
    for (const dir of [a, b, c]) await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("train: --save-strategy epoch saves at epoch ends, and --resume-from-checkpoint last finds the newest", async () => {
  const dir = await Deno.makeTempDir();
  const L = 8;
  // 5 windows of 9 tokens, batch 2: 2 steps per epoch (the 5th window is left over each epoch).
  await writeNpy(
    join(dir, "data.npy"),
    Int32Array.from({ length: 5 * (L + 1) }, (_, i) => (i * 7) % 256),
  );
  const base = {
    model: "debug-tiny",
    dataPath: join(dir, "data.npy"),
    modelMaxLength: L,
    perDeviceTrainBatchSize: 2,
    numTrainEpochs: 2,
    loggingSteps: 1,
    device: "cpu",
    saveStrategy: "epoch",
    outputDir: join(dir, "out"),
  };
  const result = await train(base, quiet);
  assertEquals(result.steps, 4);
  const saved = [...Deno.readDirSync(join(dir, "out"))].map((e) => e.name).filter((n) =>
    n.startsWith("checkpoint-")
  ).sort();
  assertEquals(saved, ["checkpoint-2", "checkpoint-4"]);
  // "last" resumes from checkpoint-4; a third epoch adds steps 5 and 6.
  const again = await train({ ...base, resumeFromCheckpoint: "last", numTrainEpochs: 3 }, quiet);
  assertEquals(again.steps, 6);
  const state = JSON.parse(
    await Deno.readTextFile(join(dir, "out", "checkpoint-6", "trainer_state.json")),
  );
  assertEquals(state.global_step, 6);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("tokenize: the .npy it writes trains exactly as the text it came from", async () => {
  const dir = await Deno.makeTempDir();
  const corpus = new URL("../examples/corpus/tiny.jsonl", import.meta.url).pathname;
  const tokenize = (output: string) =>
    runCli(["tokenize", "--model", "debug-small", "--data-path", corpus, "--output", output]);
  const r = await tokenize(join(dir, "t.npy"));
  assertEquals(r.code, 0, r.stderr);
  assert(r.stdout.includes("818 documents"), r.stdout);
  const base = {
    model: "debug-small",
    modelMaxLength: 32,
    maxSteps: 2,
    loggingSteps: 1,
    device: "cpu",
    saveStrategy: "no",
    learningRate: 1e-3,
  };
  await train({ ...base, dataPath: corpus, outputDir: join(dir, "a") }, quiet);
  await train({ ...base, dataPath: join(dir, "t.npy"), outputDir: join(dir, "b") }, quiet);
  const [a, b] = [await metrics(join(dir, "a")), await metrics(join(dir, "b"))];
  assertEquals(a.map((m) => m.loss), b.map((m) => m.loss));
  const bad = await tokenize(join(dir, "t.bin"));
  assert(bad.code !== 0 && bad.stderr.includes("--output"), bad.stderr);
  await Deno.remove(dir, { recursive: true });
});

Deno.test({
  name: "train: --device cuda without a GPU fails before reading any data",
  ignore: Deno.env.get("DISTFLASH_TEST_BACKEND") === "cuda", // a GPU is present there
  fn: async () => {
    const error = await assertRejects(() =>
      train({ model: "debug-tiny", dataPath: "/no/such/file.jsonl", device: "cuda" }, quiet)
    );
    assert(error.message.includes("--device cuda: no CUDA GPU found"), error.message);
  },
});

Deno.test("train: long steps report the layer they are at, per micro-batch", async () => {
  const lines: string[] = [];
  const dir = await Deno.makeTempDir();
  await train({
    model: "debug-tiny",
    synthetic: true,
    maxSteps: 1,
    gradientAccumulationSteps: 2,
    modelMaxLength: 32,
    saveStrategy: "no",
    outputDir: dir,
  }, { log: (line) => lines.push(line), withinStepSeconds: 0 });
  const within = lines.filter((l) => l.includes("into the step"));
  // debug-tiny has 2 layers: forward 1, 2 then backward 2, 1, for each of the 2 micro-batches.
  const expected = [1, 2].flatMap((mb) =>
    ["forward, layer 1", "forward, layer 2", "backward, layer 2", "backward, layer 1"].map((p) =>
      `step 1/1, micro-batch ${mb}/2: ${p} of 2`
    )
  );
  assertEquals(within.map((l) => l.replace(/ \(\d+ s into the step\)$/, "")), expected);
  await Deno.remove(dir, { recursive: true });
});
