/**
 * Evaluation and MFU under every layout of CPU ranks (each rank a process of the launcher):
 * - eval_loss and eval_tokens on dp x sp layouts with full_shard (2 x 1, 1 x 2, 2 x 2, 4 x 1), odd
 *   and even window counts, and fewer windows than data-parallel groups, equal the one-rank
 *   figure for the same windows (lr 0: the weights are the fixture's at every evaluation);
 * - the logged mfu on 1, 2 and 4 ranks equals the hand figure: the FLOPs of a step (dp groups x
 *   batch x L tokens, 6N + 3.5 x 2HLD per token with N counted from the stored tensors) over the
 *   step's time (the difference of the logged elapsed_s) x ranks x the given peak.
 */
import { assert, assertEquals, assertLess } from "./assert.ts";
import { join } from "node:path";
import { writeNpy } from "../src/io/npy.ts";
import { rng, runCli } from "./_util.ts";

const MHA = new URL("./fixtures/mha", import.meta.url).pathname;
const L = 28, PEAK = 1e-6; // a tiny peak makes the CPU's rate a readable utilisation
// The fixture: 4 heads of 16, 2 layers, vocabulary 256, untied embeddings.
const H = 4, D = 16, LAYERS = 2, VOCAB = 256;

async function storedParameters(path: string): Promise<number> {
  const bytes = await Deno.readFile(path);
  const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  let total = 0;
  for (const [name, t] of Object.entries(header)) {
    if (name !== "__metadata__") total += (t as { shape: number[] }).shape.reduce((a, b) => a * b);
  }
  return total;
}

/** `windows` windows of L + 1 random token ids. */
async function windowsFile(path: string, windows: number, seed: number): Promise<void> {
  const u = rng(seed);
  await writeNpy(
    path,
    Int32Array.from({ length: windows * (L + 1) }, () => Math.floor(u() * VOCAB)),
  );
}

interface Line {
  step: number;
  mfu?: number;
  elapsed_s: number;
  eval_loss?: number;
  eval_tokens?: number;
}

async function run(
  out: string,
  train: string,
  evalData: string,
  dp: number,
  sp: number,
): Promise<Line[]> {
  const r = await runCli([
    "train",
    `--nproc-per-node=${dp * sp}`,
    `--sp-size=${sp}`,
    ...(dp * sp > 1 ? ["--fsdp=full_shard"] : []),
    `--model=${MHA}`,
    `--data-path=${train}`,
    `--eval-data-path=${evalData}`,
    `--model-max-length=${L}`,
    "--max-steps=3",
    "--logging-steps=1",
    "--learning-rate=0",
    "--per-device-train-batch-size=1",
    "--per-device-eval-batch-size=2",
    `--peak-tflops=${PEAK}`,
    "--device=cpu",
    "--save-strategy=no",
    "--save-final-model=false",
    `--output-dir=${out}`,
  ]);
  assertEquals(r.code, 0, r.stderr);
  return (await Deno.readTextFile(join(out, "metrics.jsonl"))).trim().split("\n")
    .map((l) => JSON.parse(l));
}

Deno.test("eval layouts: eval_loss under every dp x sp layout equals one rank's; mfu on 1, 2, 4 ranks is the hand figure", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const train = join(tmp, "train.npy");
    await windowsFile(train, 8, 1);
    const perToken = 6 * (await storedParameters(join(MHA, "model.safetensors"))) +
      3.5 * 2 * H * L * D * LAYERS;
    const single = new Map<number, { loss: number; tokens: number }>();
    // [windows, dp, sp]: odd and even counts, and fewer windows than groups.
    const layouts: [number, number, number][] = [
      [5, 1, 1],
      [4, 1, 1],
      [1, 1, 1],
      [3, 1, 1],
      [5, 2, 1],
      [4, 1, 2],
      [5, 2, 2],
      [4, 2, 2],
      [1, 2, 2],
      [3, 4, 1],
    ];
    for (const [windows, dp, sp] of layouts) {
      const what = `${windows} windows, dp ${dp} x sp ${sp}`;
      const data = join(tmp, `eval-${windows}.npy`);
      if (dp * sp === 1) await windowsFile(data, windows, 100 + windows);
      const lines = await run(join(tmp, `${windows}-${dp}x${sp}`), train, data, dp, sp);
      const e = lines.find((m) => m.eval_loss !== undefined)!;
      assert(e !== undefined, `${what}: no evaluation`);
      assertEquals(e.eval_tokens, windows * L, what);
      if (dp * sp === 1) {
        single.set(windows, { loss: e.eval_loss!, tokens: e.eval_tokens! });
      } else {
        const want = single.get(windows)!.loss;
        // fp32 sums in another order over ranks and sequence chunks: 1e-5 relative is ~100x that.
        assertLess(
          Math.abs(e.eval_loss! - want) / want,
          1e-5,
          `${what}: ${e.eval_loss} vs ${want}`,
        );
      }
      // MFU of steps 2 and 3 (step 1's window starts before the clock of elapsed_s).
      const steps = lines.filter((m) => m.mfu !== undefined);
      assertEquals(steps.map((m) => m.step), [1, 2, 3], what);
      for (const i of [1, 2]) {
        const seconds = steps[i].elapsed_s - steps[i - 1].elapsed_s;
        const want = (perToken * dp * L) / (seconds * dp * sp * PEAK * 1e12);
        assertLess(Math.abs(steps[i].mfu! - want) / want, 1e-6, `${what} step ${i + 1} mfu`);
      }
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
