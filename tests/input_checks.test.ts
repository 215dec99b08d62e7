/**
 * Inputs that used to give silent wrong results, hangs or late errors (README "Reliability"): a
 * SentencePiece-only model folder, a checkpoint whose step was edited or renamed, absurd sizes in
 * config.json, a FIFO among the model's files, and a resume with another rank count or --fsdp.
 */
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { runCli, SAVING_RUN, trainFlags } from "./_util.ts";
import { train } from "../src/train/trainer.ts";
import { readSafetensorsHeader } from "../src/io/safetensors.ts";
import { existsSync } from "node:fs";
import { join } from "node:path";

const quiet = { log: () => {} };
const tiny = { ...SAVING_RUN, maxSteps: 1 };

let modelFolder: Promise<string> | undefined;
/** A model folder as a run saves it (config.json, model.safetensors, the byte tokenizer's files). */
function savedModel(): Promise<string> {
  modelFolder ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "distflash-model-" });
    await train({ ...tiny, saveStrategy: "no", saveFinalModel: true, outputDir: dir }, quiet);
    return dir;
  })();
  return modelFolder;
}

/** A copy of the saved model's config and weights in a fresh folder. */
async function modelCopy(): Promise<string> {
  const from = await savedModel();
  const dir = await Deno.makeTempDir({ prefix: "distflash-model-copy-" });
  for (const f of ["config.json", "model.safetensors"]) {
    await Deno.copyFile(join(from, f), join(dir, f));
  }
  return dir;
}

async function textData(): Promise<string> {
  const path = await Deno.makeTempFile({ suffix: ".jsonl" });
  const lines = Array.from({ length: 64 }, (_, i) => JSON.stringify({ text: `document ${i} ` }));
  await Deno.writeTextFile(path, lines.join("\n") + "\n");
  return path;
}

Deno.test("input checks: tokenizer.model without tokenizer.json is refused with the conversion command", async () => {
  const model = await modelCopy();
  const data = await textData();
  const out = await Deno.makeTempDir();
  await Deno.writeFile(join(model, "tokenizer.model"), new Uint8Array([10, 3, 0x3c, 0x73, 0x3e]));
  const text = { ...tiny, synthetic: false, model, dataPath: data };
  const e = await assertRejects(() => train({ ...text, outputDir: out }, quiet));
  for (const part of ["tokenizer.model", "no tokenizer.json", "save_pretrained", model]) {
    assert(e.message.includes(part), e.message);
  }
  // The launcher refuses before any rank starts; `tokenize` refuses too.
  const launched = await runCli([
    "train",
    ...trainFlags({ ...text, saveFinalModel: true }),
    ...["--nproc-per-node", "2", "--output-dir", out],
  ]);
  assertEquals(launched.code, 1, launched.stderr);
  assert(launched.stderr.includes("save_pretrained"), launched.stderr);
  assert(!existsSync(join(out, "logs")), "no rank was started");
  const npy = join(out, "tokens.npy");
  const tokenized = await runCli([
    "tokenize",
    "--model",
    model,
    "--data-path",
    data,
    "--output",
    npy,
  ]);
  assertEquals(tokenized.code, 1, tokenized.stderr);
  assert(tokenized.stderr.includes("no tokenizer.json"), tokenized.stderr);
  assert(!existsSync(npy));
  // Synthetic data and token files need no tokenizer.
  await train({ ...tiny, model, outputDir: out }, quiet);
  for (const p of [model, out, data]) await Deno.remove(p, { recursive: true });
});

Deno.test("input checks: a checkpoint whose global_step or folder name disagrees with complete.json is refused", async () => {
  const out = await Deno.makeTempDir();
  await train({ ...SAVING_RUN, maxSteps: 2, outputDir: out }, quiet);
  const ckpt = join(out, "checkpoint-2");
  const resume = { ...SAVING_RUN, maxSteps: 4, outputDir: out };
  // An edited global_step (same length, so complete.json's sizes still agree).
  const statePath = join(ckpt, "trainer_state.json");
  const original = await Deno.readTextFile(statePath);
  const edited = original.replace('"global_step": 2', '"global_step": 3');
  assert(edited !== original && edited.length === original.length, original);
  await Deno.writeTextFile(statePath, edited);
  const e = await assertRejects(() => train({ ...resume, resumeFromCheckpoint: ckpt }, quiet));
  assert(e.message.includes(statePath), e.message);
  assert(e.message.includes("global_step 3 disagrees with complete.json (step 2)"), e.message);
  await Deno.writeTextFile(statePath, original);
  // A renamed folder: complete.json and trainer_state.json say 2, the name says 5.
  const renamed = join(out, "checkpoint-5");
  await Deno.rename(ckpt, renamed);
  const r = await assertRejects(() => train({ ...resume, resumeFromCheckpoint: renamed }, quiet));
  assert(r.message.includes(join(renamed, "complete.json")), r.message);
  assert(r.message.includes("checkpoint-5"), r.message);
  await Deno.remove(out, { recursive: true });
});

Deno.test("input checks: a resume with another rank count or --fsdp is refused by the launcher", async () => {
  const out = await Deno.makeTempDir();
  await train({ ...SAVING_RUN, maxSteps: 1, outputDir: out }, quiet);
  const ckpt = join(out, "checkpoint-1");
  const launched = await runCli([
    "train",
    ...trainFlags({ ...SAVING_RUN, maxSteps: 2 }),
    ...["--nproc-per-node", "2", "--fsdp", "full_shard", "--output-dir", out],
    ...["--resume-from-checkpoint", ckpt],
  ]);
  assertEquals(launched.code, 1, launched.stderr);
  assert(
    launched.stderr.includes(
      "resume with the same ranks and --fsdp as the checkpoint (1 rank, no_shard)",
    ),
    launched.stderr,
  );
  assert(!existsSync(join(out, "logs")), "no rank was started");
  await Deno.remove(out, { recursive: true });
});

Deno.test({
  // No timing assertion: before the check, these ran out of memory or hung for minutes.
  name: "input checks: absurd sizes in config.json are refused by arithmetic, naming the field",
  async fn() {
    const from = JSON.parse(await Deno.readTextFile(join(await savedModel(), "config.json")));
    const dir = await Deno.makeTempDir();
    const cases: [Record<string, number>, string][] = [
      [{ num_hidden_layers: 1e9 }, "num_hidden_layers 1000000000"],
      [{ num_hidden_layers: 1e5 }, "num_hidden_layers 100000"],
      [{ hidden_size: 2 ** 30, num_attention_heads: 4, num_key_value_heads: 4 }, "hidden_size"],
      [{ intermediate_size: 1e12 }, "intermediate_size"],
      [{ vocab_size: 1e10 }, "vocab_size"],
      [{ num_hidden_layers: 1000, hidden_size: 65536, num_attention_heads: 64 }, "parameters"],
    ];
    for (const [change, field] of cases) {
      const config = { ...from, ...change };
      delete config.head_dim;
      await Deno.writeTextFile(join(dir, "config.json"), JSON.stringify(config));
      const e = await assertRejects(() =>
        train({ ...tiny, model: dir, outputDir: join(dir, "out") }, quiet)
      );
      assert(e.message.includes(field), `${JSON.stringify(change)}: ${e.message}`);
      assert(e.message.includes("config.json"), e.message);
      const plan = await runCli(["plan", "--model", dir, "--device", "cpu"]);
      assertEquals(plan.code, 1, plan.stderr);
      assert(plan.stderr.includes(field), `plan ${JSON.stringify(change)}: ${plan.stderr}`);
    }
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test("input checks: a FIFO among the model folder's files is refused before any save", async () => {
  const model = await modelCopy();
  const out = await Deno.makeTempDir();
  const fifo = join(model, "generation_config.json");
  const made = await new Deno.Command("mkfifo", { args: [fifo] }).output();
  assertEquals(made.code, 0);
  const e = await assertRejects(() => train({ ...tiny, model, outputDir: out }, quiet));
  assert(e.message.includes(`${fifo} is not a regular file`), e.message);
  for (const p of [model, out]) await Deno.remove(p, { recursive: true });
});

/** Runs the CLI as a subprocess, killed after `ms` (a hang): its exit code, stderr, and whether it was killed. */
async function runCliWithin(
  args: string[],
  ms: number,
): Promise<{ code: number; stderr: string; killed: boolean }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", join(import.meta.dirname!, "..", "cli", "main.ts"), ...args],
    env: { NO_COLOR: "1" },
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let killed = false;
  const timer = setTimeout(() => {
    killed = true;
    child.kill("SIGKILL");
  }, ms);
  const out = await child.output();
  clearTimeout(timer);
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr), killed };
}

Deno.test("input checks: a FIFO as config.json or a weights file is refused by train and plan, no hang", async () => {
  const cases: [string, (dir: string) => Promise<void>][] = [
    ["config.json", async () => {}],
    ["model.safetensors", async () => {}],
    // Sharded weights: the index names the shard, which the loader would open.
    ["model-00001-of-00001.safetensors", async (dir) => {
      const { tensors } = await readSafetensorsHeader(join(dir, "model.safetensors"));
      const names = tensors.map((t) => t.name);
      const weightMap = Object.fromEntries(
        names.map((n) => [n, "model-00001-of-00001.safetensors"]),
      );
      await Deno.writeTextFile(
        join(dir, "model.safetensors.index.json"),
        JSON.stringify({ metadata: {}, weight_map: weightMap }),
      );
      await Deno.remove(join(dir, "model.safetensors"));
    }],
    // A shard whose name does not end in .safetensors: the index still names it.
    ["weights.bin", async (dir) => {
      const { tensors } = await readSafetensorsHeader(join(dir, "model.safetensors"));
      const weightMap = Object.fromEntries(tensors.map((t) => [t.name, "weights.bin"]));
      await Deno.writeTextFile(
        join(dir, "model.safetensors.index.json"),
        JSON.stringify({ metadata: {}, weight_map: weightMap }),
      );
      await Deno.remove(join(dir, "model.safetensors"));
    }],
  ];
  for (const [name, prepare] of cases) {
    const model = await modelCopy();
    await prepare(model);
    const fifo = join(model, name);
    await Deno.remove(fifo).catch(() => {});
    assertEquals((await new Deno.Command("mkfifo", { args: [fifo] }).output()).code, 0);
    const out = join(model, "out");
    const commands = [
      ["train", ...trainFlags({ ...tiny, model, outputDir: out })],
      ["plan", "--model", model, "--device", "cpu"],
    ];
    for (const args of commands) {
      const r = await runCliWithin(args, 60_000);
      assert(!r.killed, `${args[0]} with a FIFO ${name}: still running after 60 s`);
      assertEquals(r.code, 1, `${args[0]} ${name}: ${r.stderr}`);
      assert(r.stderr.includes(`${fifo} is not a regular file`), `${args[0]} ${name}: ${r.stderr}`);
    }
    assert(!existsSync(join(out, "logs")), "no rank was started");
    await Deno.remove(model, { recursive: true });
  }
});
