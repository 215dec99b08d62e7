/**
 * The host side of a training step: how long the TypeScript code takes to issue one step (forward,
 * loss, backward, gradient norm, AdamW) when every native call returns at once. A stub stands in
 * for the native library (allocations get fake addresses; no kernel runs), so what is timed is
 * exactly the JavaScript that the GPU would wait for if it ever ran dry; the FFI transition of
 * each call is measured separately on the real CPU library and added per call.
 *
 *   deno run -A scripts/host_overhead.ts [--model llama-2-7b] [--tokens 16384] [--world 2]
 *                                        [--layout zigzag|none] [--steps 5]
 *
 * `--tokens` is the tokens of this rank; `--world` > 1 uses the full_shard parameter store and (with
 * --layout zigzag) the zigzag ring over a stub communicator whose collectives resolve at once. Run
 * anywhere (no GPU needed); compare the result with a step's GPU time from BENCHMARKS.md.
 */
import { parseArgs } from "node:util";
import { Device } from "../src/runtime/device.ts";
import { DType } from "../src/runtime/ops.ts";
import { DecoderModel } from "../src/model/decoder.ts";
import { resolveModel } from "../src/model/hf.ts";
import { ZigzagAttention } from "../src/parallel/zigzag.ts";
import { shardedParamStore } from "../src/parallel/zero3.ts";
import type { Communicator } from "../src/comm/comm.ts";

const { values } = parseArgs({
  options: {
    model: { type: "string", default: "llama-2-7b" },
    tokens: { type: "string", default: "16384" },
    world: { type: "string", default: "2" },
    layout: { type: "string", default: "zigzag" },
    steps: { type: "string", default: "5" },
  },
});
const tokens = Number(values.tokens), world = Number(values.world), steps = Number(values.steps);
for (const [flag, v] of [["--tokens", tokens], ["--world", world], ["--steps", steps]] as const) {
  if (!Number.isInteger(v) || v < 1) throw new Error(`${flag}: expected a positive integer`);
}
if (!["zigzag", "none"].includes(values.layout!)) throw new Error("--layout: zigzag or none");

/** A Device whose native calls only count themselves (and hand out fake addresses and handles). */
function stubDevice(): { device: Device; calls: Map<string, number> } {
  const calls = new Map<string, number>();
  let next = 1n << 40n;
  const sym = new Proxy({}, {
    get: (_target, name: string) => (...args: unknown[]) => {
      calls.set(name, (calls.get(name) ?? 0) + 1);
      if (name === "df_malloc" || name === "df_stream_create" || name === "df_event_create") {
        const out = args[0] as BigUint64Array;
        out[0] = next;
        next += name === "df_malloc" ? ((args[1] as bigint) + 4095n) & ~4095n : 256n;
      }
      if (name === "df_mem_info") {
        (args[0] as BigUint64Array)[0] = 1n << 40n;
        (args[1] as BigUint64Array)[0] = 1n << 40n;
      }
      return 0;
    },
  });
  const device = Object.create(Device.prototype) as Device;
  Object.defineProperty(device, "sym", { value: sym });
  Object.defineProperty(device, "backend", { value: "cuda" });
  return { device, calls };
}

/** Collectives and exchanges that complete at once (every rank would do the same work). */
function stubComm(size: number): Communicator {
  const done = () => Promise.resolve();
  return {
    rank: 0,
    size,
    exchange: done,
    allGather: done,
    reduceScatterSum: done,
    allReduceSum: done,
    broadcast: done,
    barrier: done,
  } as unknown as Communicator;
}

/** Nanoseconds per FFI call of a trivial native function on the real CPU library. */
function ffiCallNs(): number {
  const cpu = Device.open("cpu");
  try {
    const n = 200_000;
    for (let i = 0; i < 10_000; i++) cpu.sym.df_abi_version();
    const t0 = performance.now();
    for (let i = 0; i < n; i++) cpu.sym.df_abi_version();
    return ((performance.now() - t0) * 1e6) / n;
  } finally {
    cpu.close();
  }
}

const cfg = (await resolveModel(values.model!)).config;
const { device, calls } = stubDevice();
const dtype = DType.bf16;
const comm = world > 1 ? stubComm(world) : null;
const attention = comm && values.layout === "zigzag"
  ? new ZigzagAttention(device, cfg, tokens, dtype, stubComm(world), 0n, false)
  : undefined;
const model = new DecoderModel(device, cfg, {
  dtype,
  batch: 1,
  seqLen: tokens,
  params: comm ? shardedParamStore(comm, false) : undefined,
}, attention);
attention?.allocate();
model.allocate();
const ids = new Int32Array(tokens), labels = new Int32Array(tokens).fill(1);
const positions = Int32Array.from({ length: tokens }, (_, i) => i);

async function step(n: number): Promise<void> {
  model.zeroGrads();
  model.setBatch(ids, labels, positions);
  await model.forward();
  model.lossSum();
  await model.backward(1 / tokens);
  await model.params.finishGrads();
  await model.gradNorm();
  model.adamwStep({
    lr: 1e-5,
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    weightDecay: 0,
    step: n,
    gradScale: 1,
  });
}

await step(1); // warm-up (JIT)
calls.clear();
const t0 = performance.now();
for (let s = 0; s < steps; s++) await step(s + 2);
const jsMs = (performance.now() - t0) / steps;
const perStep = [...calls.values()].reduce((a, b) => a + b, 0) / steps;
const ns = ffiCallNs();
const totalMs = jsMs + (perStep * ns) / 1e6;
const top = [...calls.entries()].sort((a, b) => b[1] - a[1]).slice(0, 6)
  .map(([k, v]) => `${k} ${Math.round(v / steps)}`).join(", ");
console.log(
  `${values.model}, ${tokens} tokens per rank, world ${world}${attention ? ", zigzag" : ""}: ` +
    `${Math.round(perStep)} native calls per step (${top})`,
);
console.log(
  `TypeScript per step: ${jsMs.toFixed(2)} ms, plus ${perStep.toFixed(0)} FFI transitions x ` +
    `${ns.toFixed(0)} ns = ${totalMs.toFixed(2)} ms of host time per step`,
);
