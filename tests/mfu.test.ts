// MFU (src/train/mfu.ts): the peak table by CUDA device name, and a run's logged `mfu` against a
// hand count: N from the tensors stored in the fixture's model.safetensors (not from the config),
// plus causal attention 3.5 * 2*H*S*D per token and layer, over the given peak.

import { assert, assertEquals, assertLess } from "./assert.ts";
import { join } from "node:path";
import { bf16PeakTflops, runPeakTflops } from "../src/train/mfu.ts";
import { train } from "../src/train/trainer.ts";

const GQA = new URL("./fixtures/gqa", import.meta.url).pathname;

Deno.test("mfu: bf16 peaks by CUDA device name; none on the CPU or an unknown GPU", () => {
  assertEquals(bf16PeakTflops("NVIDIA H100 80GB HBM3"), 989);
  assertEquals(bf16PeakTflops("NVIDIA H100 PCIe"), 756);
  assertEquals(bf16PeakTflops("NVIDIA H100 NVL"), 835);
  assertEquals(bf16PeakTflops("NVIDIA H200"), 989);
  assertEquals(bf16PeakTflops("NVIDIA A100-SXM4-80GB"), 312);
  assertEquals(bf16PeakTflops("NVIDIA GeForce GTX 1080"), null);
  assertEquals(runPeakTflops(undefined, "cpu", "host CPU (2 cores)"), null);
  assertEquals(runPeakTflops(undefined, "cuda", "NVIDIA H100 80GB HBM3"), 989);
  assertEquals(runPeakTflops(500, "cpu", "host CPU (2 cores)"), 500);
});

/** Elements of every tensor in a safetensors file, from its JSON header. */
async function storedParameters(path: string): Promise<number> {
  const bytes = await Deno.readFile(path);
  const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  let total = 0;
  for (const [name, t] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    total += (t as { shape: number[] }).shape.reduce((a, b) => a * b, 1);
  }
  return total;
}

Deno.test("mfu: metrics.jsonl and TensorBoard log mfu = training FLOPs x tokens/s / peak", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const L = 32, peak = 1e-6; // a tiny "peak" makes the CPU's rate a readable utilisation
    const common = {
      model: GQA,
      synthetic: true,
      modelMaxLength: L,
      maxSteps: 2,
      loggingSteps: 1,
      device: "cpu",
      saveStrategy: "no",
      saveFinalModel: false,
    };
    const out = join(tmp, "with");
    await train({ ...common, outputDir: out, peakTflops: peak, reportTo: "tensorboard" }, {
      log: () => {},
    });
    // The fixture: 4 heads of 16, 2 layers (tied embeddings: stored once).
    const N = await storedParameters(join(GQA, "model.safetensors"));
    const perToken = 6 * N + 3.5 * 2 * 4 * L * 16 * 2;
    const lines = (await Deno.readTextFile(join(out, "metrics.jsonl"))).trim().split("\n")
      .map((l) => JSON.parse(l));
    assertEquals(lines.length, 2);
    for (const m of lines) {
      const want = (perToken * m.tokens_per_s) / (peak * 1e12);
      assert(typeof m.mfu === "number" && m.mfu > 0, JSON.stringify(m));
      assertLess(Math.abs(m.mfu - want) / want, 1e-12, `${m.mfu} vs ${want}`);
    }
    const runs = join(out, "runs");
    const [event] = [...Deno.readDirSync(runs)].map((e) => join(runs, e.name));
    assert(new TextDecoder("latin1").decode(await Deno.readFile(event)).includes("train/mfu"));

    // On the CPU backend without --peak-tflops the peak is unknown: no mfu field.
    const plain = join(tmp, "without");
    await train({ ...common, outputDir: plain }, { log: () => {} });
    const first = JSON.parse(
      (await Deno.readTextFile(join(plain, "metrics.jsonl"))).split("\n")[0],
    );
    assert(!("mfu" in first) && "tokens_per_s" in first, JSON.stringify(first));
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
