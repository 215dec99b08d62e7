/**
 * Predicted DistAttn scaling from the schedule (src/parallel/schedule.ts `simulate`) and measured
 * single-GPU rates: per-GPU forward+backward TFLOP/s for P ranks, balanced vs unbalanced, with
 * and without overlap. A model, not a measurement: diagonal blocks cost half a full block; kernel
 * launch gaps and merges are ignored, and assumes one link per direction per GPU at --link-gbs.
 *
 *   deno run -A scripts/simulate_scaling.ts [--fwd-tflops 357] [--bwd-tflops 293] [--link-gbs 300]
 */
import { parseArgs } from "node:util";
import {
  backwardSchedule,
  forwardSchedule,
  simulate,
  type Transfer,
} from "../src/parallel/schedule.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    "fwd-tflops": { type: "string", default: "357" }, // flash kernel forward, H100, 16K (BENCHMARKS.md)
    "bwd-tflops": { type: "string", default: "293" }, // flash kernel backward alone
    "link-gbs": { type: "string", default: "300" }, // assumed P2P GB/s per direction
    heads: { type: "string", default: "32" },
    "kv-heads": { type: "string", default: "32" },
    "head-dim": { type: "string", default: "128" },
    seq: { type: "string", default: "65536,131072,262144,524288" },
    ranks: { type: "string", default: "2,4,8,16" },
  },
});
const fwdRate = Number(values["fwd-tflops"]) * 1e12, bwdRate = Number(values["bwd-tflops"]) * 1e12;
const link = Number(values["link-gbs"]) * 1e9;
const H = Number(values.heads), KV = Number(values["kv-heads"]), D = Number(values["head-dim"]);

function payloadBytes(x: Transfer, S: number): number {
  switch (x.payload) {
    case "kv":
      return 2 * S * KV * D * 2; // K and V, bf16
    case "q":
      return 3 * S * H * D * 2 + H * S * 4; // backward: Q, dO, O (bf16) and LSE (fp32); forward sends Q only
    case "out":
      return S * H * D * 2 + H * S * 4;
    case "dq":
      return S * H * D * 4;
    case "dkv":
      return 2 * S * KV * D * 4;
  }
}

console.log(
  `model: fwd ${values["fwd-tflops"]} / bwd ${values["bwd-tflops"]} TFLOP/s per full block, ` +
    `${values["link-gbs"]} GB/s links, ${H} heads (${KV} kv) of ${D}`,
);
console.log("tokens   P   variant              fwd+bwd ms  TFLOP/s per GPU  (of single-GPU rate)");
const single = 3.5 / (1 / fwdRate + 2.5 / bwdRate);
for (const T of values.seq.split(",").map(Number)) {
  for (const P of values.ranks.split(",").map(Number)) {
    const S = T / P;
    for (const [balanced, overlap] of [[true, true], [false, true], [true, false]]) {
      const fwd = Math.max(...simulate(forwardSchedule(P, { balanced }), P, {
        blockTime: (t) => ((t.q === t.kv ? 2 : 4) * H * S * S * D) / fwdRate,
        transferTime: (x) => (x.payload === "q" ? S * H * D * 2 : payloadBytes(x, S)) / link,
        overlap,
      }));
      const bwd = Math.max(...simulate(backwardSchedule(P, { balanced }), P, {
        blockTime: (t) => ((t.q === t.kv ? 5 : 10) * H * S * S * D) / bwdRate,
        transferTime: (x) => payloadBytes(x, S) / link,
        overlap,
      }));
      const total = fwd + bwd, flops = (3.5 * 2 * H * T * T * D) / P;
      const name = `${balanced ? "balanced" : "unbalanced"}${overlap ? "" : ", no overlap"}`;
      console.log(
        `${String(T).padEnd(8)} ${String(P).padEnd(3)} ${name.padEnd(20)} ${
          (1e3 * total).toFixed(1).padStart(10)
        } ${(flops / total / 1e12).toFixed(0).padStart(16)}  (${
          ((100 * flops) / total / single).toFixed(0)
        }%)`,
      );
    }
    // Zigzag ring (src/parallel/zigzag.ts): every step costs each rank S^2/2 of causal work (two
    // (S/2)^2 sub-blocks), overlapped with passing K/V on; backward also returns dK/dV partials.
    const h = S / 2, kvBytes = 2 * S * KV * D * 2;
    const fwdStep = Math.max((2 * 2 * 2 * H * h * h * D) / fwdRate, kvBytes / link);
    const bwdStep = Math.max((2 * 5 * 2 * H * h * h * D) / bwdRate, (3 * kvBytes) / link);
    const total = P * (fwdStep + bwdStep), flops = (3.5 * 2 * H * T * T * D) / P;
    console.log(
      `${String(T).padEnd(8)} ${String(P).padEnd(3)} ${"zigzag ring".padEnd(20)} ${
        (1e3 * total).toFixed(1).padStart(10)
      } ${(flops / total / 1e12).toFixed(0).padStart(16)}  (${
        ((100 * flops) / total / single).toFixed(0)
      }%)`,
    );
  }
}
