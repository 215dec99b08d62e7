// --save-dtype with --bf16: the final model and checkpoints hold the fp32 master weights by default
// (as HF Trainer saves a bf16 run's model), bf16 with --save-dtype bf16; checked against the masters
// in the checkpoint's optimizer file (laid out by ParamLayout), and resuming from either kind
// (a bf16 one is also what checkpoints written before the option held) gives the straight run's
// loss curve and final weights.

import { assert, assertEquals } from "./assert.ts";
import { join } from "node:path";
import { train } from "../src/train/trainer.ts";
import { openSafetensors } from "../src/io/safetensors.ts";
import { f32ToBf16 } from "../src/io/dtype.ts";
import { ParamLayout } from "../src/model/params.ts";
import { presetConfig } from "../src/model/presets.ts";

const base = {
  model: "debug-tiny",
  synthetic: true,
  modelMaxLength: 16,
  perDeviceTrainBatchSize: 2,
  maxSteps: 4,
  learningRate: 1e-2,
  lrSchedulerType: "cosine",
  warmupSteps: 1,
  loggingSteps: 1,
  saveSteps: 2,
  device: "cpu",
  bf16: true,
};

async function metrics(dir: string) {
  const text = await Deno.readTextFile(join(dir, "metrics.jsonl"));
  return text.trim().split("\n").map((line) => JSON.parse(line));
}

/** Every tensor of a model folder: its dtype and its values as float32. */
async function weights(dir: string): Promise<Map<string, { dtype: string; values: Float32Array }>> {
  const file = await openSafetensors(dir);
  try {
    const out = new Map<string, { dtype: string; values: Float32Array }>();
    for (const name of file.names()) {
      out.set(name, { dtype: file.info(name).dtype, values: await file.readFloat32(name) });
    }
    return out;
  } finally {
    file.close();
  }
}

/** The fp32 master weights in a checkpoint's optimizer file, per parameter. */
async function masters(checkpoint: string): Promise<Map<string, Float32Array>> {
  const file = await openSafetensors(join(checkpoint, "optimizer.safetensors"));
  try {
    const flat = await file.readFloat32("master");
    const layout = new ParamLayout(presetConfig("debug-tiny"));
    assertEquals(flat.length, layout.size);
    return new Map(
      layout.entries.map((e) => [e.name, flat.subarray(e.offset, e.offset + e.numel)]),
    );
  } finally {
    file.close();
  }
}

/** Asserts the folder's weights are `dtype` and equal to the masters (rounded to bf16 for BF16). */
async function assertSaved(dir: string, master: Map<string, Float32Array>, dtype: string) {
  const saved = await weights(dir);
  assertEquals([...saved.keys()].sort(), [...master.keys()].sort(), dir);
  for (const [name, m] of master) {
    const { dtype: got, values } = saved.get(name)!;
    assertEquals(got, dtype, `${dir}: ${name}`);
    if (dtype === "F32") assertEquals(values, m, `${dir}: ${name} is the fp32 master`);
    else assertEquals(f32ToBf16(values), f32ToBf16(m), `${dir}: ${name} is the master in bf16`);
  }
  const config = JSON.parse(await Deno.readTextFile(join(dir, "config.json")));
  assertEquals(config.torch_dtype, dtype === "F32" ? "float32" : "bfloat16", `${dir}: config`);
}

Deno.test("save dtype: --bf16 saves fp32 masters by default, bf16 with --save-dtype bf16, and both resume exactly", async () => {
  const dirs: string[] = [];
  const temp = async () => {
    dirs.push(await Deno.makeTempDir());
    return dirs.at(-1)!;
  };
  try {
    const runs: Record<string, string> = {};
    for (const [saveDtype, dtype] of [[undefined, "F32"], ["bf16", "BF16"]] as const) {
      const out = await temp();
      const lines: string[] = [];
      await train(
        { ...base, outputDir: out, ...(saveDtype ? { saveDtype } : {}) },
        { log: (l) => lines.push(l) },
      );
      const header = lines.find((l) => l.startsWith("distflash train:")) ?? "";
      const word = dtype === "F32" ? "fp32" : "bf16";
      assert(header.includes(`bf16 (saves ${word} weights)`), header);
      for (const step of [2, 4]) {
        const checkpoint = join(out, `checkpoint-${step}`);
        await assertSaved(checkpoint, await masters(checkpoint), dtype);
      }
      // The final model is the last step's masters (checkpoint-4 holds them too).
      await assertSaved(out, await masters(join(out, "checkpoint-4")), dtype);
      runs[dtype] = out;
    }
    // The bf16 run trained exactly as the fp32-saving one: only the files differ.
    assertEquals(
      (await metrics(runs.BF16)).map((m) => m.loss),
      (await metrics(runs.F32)).map((m) => m.loss),
    );
    const straight = await metrics(runs.F32);
    const straightWeights = await weights(runs.F32);
    // Resume from each kind of checkpoint-2, saving fp32: steps 3 and 4 and the final weights are
    // the straight run's.
    for (const from of ["F32", "BF16"]) {
      const out = await temp();
      await train({
        ...base,
        outputDir: out,
        resumeFromCheckpoint: join(runs[from], "checkpoint-2"),
      }, {
        log: () => {},
      });
      const resumed = (await metrics(out)).slice(-2);
      assertEquals(resumed.map((m) => m.step), [3, 4]);
      for (let i = 0; i < 2; i++) {
        assertEquals(resumed[i].loss, straight[2 + i].loss, `from ${from}: step ${3 + i} loss`);
        assertEquals(resumed[i].grad_norm, straight[2 + i].grad_norm, `from ${from}: norm`);
      }
      const final = await weights(out);
      for (const [name, { values }] of straightWeights) {
        assertEquals(final.get(name)!.values, values, `from ${from}: final ${name}`);
      }
    }
  } finally {
    for (const dir of dirs) await Deno.remove(dir, { recursive: true });
  }
});
