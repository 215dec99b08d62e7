/**
 * DistAttn on GPUs with NCCL: bf16 error against an fp32 reference for P = 1 (the single-GPU
 * kernel) and P = the number of ranks (DistAttn), forward and backward, MHA and GQA. The error
 * must not grow with P. The reference is the fp32 CUDA kernel on the same bf16-rounded inputs
 * (itself checked against float64 to ~1e-7 by tests/ops.test.ts).
 *
 *   deno run -A scripts/gpu_dist_check.ts [--nproc 2] [--seq 4096]
 */
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { isLaunchedRank, launch } from "../src/launch/launcher.ts";
import { initDistributed } from "../src/comm/env.ts";
import { DistAttention } from "../src/parallel/distattn.ts";
import { openBackend } from "../src/runtime/info.ts";
import type { Device, DeviceBuffer } from "../src/runtime/device.ts";
import * as op from "../src/runtime/ops.ts";
import { DType } from "../src/runtime/ops.ts";
import { bf16ToF32, f32ToBf16 } from "../src/io/dtype.ts";
import type { ModelConfig } from "../src/model/config.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { nproc: { type: "string", default: "2" }, seq: { type: "string", default: "4096" } },
});
const nproc = Number(values.nproc), T = Number(values.seq);

if (!isLaunchedRank()) {
  const script = fileURLToPath(import.meta.url);
  const result = await launch({
    nprocPerNode: nproc,
    args: ["--nproc", String(nproc), "--seq", String(T)],
    outputDir: "/tmp/gpu_dist_check",
    command: [Deno.execPath(), "run", "-A", script],
    masterPort: 0,
  });
  Deno.exit(result.code);
}

function random(n: number, seed: number): Float32Array {
  let a = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = (((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1;
  }
  return bf16ToF32(f32ToBf16(out)); // exactly representable in bf16
}

const device = openBackend("cuda");
const ctx = await initDistributed({ backend: "cuda", device });
const comm = ctx.world, P = ctx.size, rank = ctx.rank;

function upload(d: Device, x: Float32Array, dtype: DType): DeviceBuffer {
  const buf = d.alloc(x.length * (dtype === DType.f32 ? 4 : 2));
  if (dtype === DType.f32) d.upload(buf.ptr, x);
  else d.upload(buf.ptr, f32ToBf16(x));
  return buf;
}

function download(d: Device, buf: DeviceBuffer, n: number, dtype: DType): Float32Array {
  if (dtype === DType.f32) return d.download(new Float32Array(n), buf.ptr);
  return bf16ToF32(d.download(new Uint16Array(n), buf.ptr));
}

/** sum (a-b)^2 and sum b^2 over all ranks. */
async function globalRel(parts: [Float32Array, Float32Array][]): Promise<number> {
  let num = 0, den = 0;
  for (const [a, b] of parts) {
    for (let i = 0; i < a.length; i++) {
      num += (a[i] - b[i]) ** 2;
      den += b[i] ** 2;
    }
  }
  const buf = device.alloc(8);
  device.upload(buf.ptr, new Float32Array([num, den]));
  await comm.allReduceSum(buf.ptr, 2, "f32");
  const [n, d] = device.download(new Float32Array(2), buf.ptr);
  buf.free();
  return Math.sqrt(n / d);
}

const rows: string[] = [];
for (const nkv of [8, 2]) {
  const nh = 8, hd = 128, S = T / P;
  const q = random(T * nh * hd, 1), k = random(T * nkv * hd, 2), v = random(T * nkv * hd, 3);
  const dout = random(T * nh * hd, 4);
  const run = (dtype: DType, tq: number, qs: Float32Array[], pos0 = 0) => {
    const [Q, K, V, DO] = qs.map((x) => upload(device, x, dtype));
    const O = device.alloc(tq * nh * hd * (dtype === DType.f32 ? 4 : 2)),
      L = device.alloc(nh * tq * 4);
    const dQ = device.alloc(tq * nh * hd * 4),
      dK = device.alloc(tq * nkv * hd * 4),
      dV = device.alloc(tq * nkv * hd * 4);
    for (const b of [dQ, dK, dV]) device.memset(b.ptr, 0, b.bytes);
    const shape = {
      tq,
      tk: tq,
      nh,
      nkv,
      hd,
      qPos0: pos0,
      kPos0: pos0,
      scale: 1 / Math.sqrt(hd),
      dtype,
    };
    op.attentionForward(device, O.ptr, L.ptr, Q.ptr, K.ptr, V.ptr, shape);
    op.attentionBackward(
      device,
      dQ.ptr,
      dK.ptr,
      dV.ptr,
      DO.ptr,
      Q.ptr,
      K.ptr,
      V.ptr,
      O.ptr,
      L.ptr,
      shape,
    );
    const out = {
      o: download(device, O, tq * nh * hd, dtype),
      dq: download(device, dQ, tq * nh * hd, DType.f32),
      dk: download(device, dK, tq * nkv * hd, DType.f32),
      dv: download(device, dV, tq * nkv * hd, DType.f32),
    };
    for (const b of [Q, K, V, DO, O, L, dQ, dK, dV]) b.free();
    return out;
  };
  const ref = run(DType.f32, T, [q, k, v, dout]);
  const one = run(DType.bf16, T, [q, k, v, dout]);
  // DistAttn over the ranks, bf16.
  const qs = S * nh * hd, kvs = S * nkv * hd;
  const slice = (x: Float32Array, n: number) => x.subarray(rank * n, (rank + 1) * n);
  const cfg = { numHeads: nh, numKvHeads: nkv, headDim: hd } as ModelConfig;
  const attn = new DistAttention(device, cfg, S, DType.bf16, comm);
  const [Q, K, V, DO] = [slice(q, qs), slice(k, kvs), slice(v, kvs), slice(dout, qs)].map((x) =>
    upload(device, x, DType.bf16)
  );
  const O = device.alloc(qs * 2), L = device.alloc(nh * S * 4);
  const dQ = device.alloc(qs * 4), dK = device.alloc(kvs * 4), dV = device.alloc(kvs * 4);
  for (const b of [dQ, dK, dV]) device.memset(b.ptr, 0, b.bytes);
  const tensors = { q: Q.ptr, k: K.ptr, v: V.ptr, out: O.ptr, lse: L.ptr };
  await attn.forward(tensors);
  await attn.backward(tensors, { dout: DO.ptr, dq: dQ.ptr, dk: dK.ptr, dv: dV.ptr });
  device.synchronize();
  const dist = {
    o: download(device, O, qs, DType.bf16),
    dq: download(device, dQ, qs, DType.f32),
    dk: download(device, dK, kvs, DType.f32),
    dv: download(device, dV, kvs, DType.f32),
  };
  attn.free();
  for (const b of [Q, K, V, DO, O, L, dQ, dK, dV]) b.free();
  const errs1: string[] = [], errsP: string[] = [];
  for (const key of ["o", "dq", "dk", "dv"] as const) {
    const n = key === "o" || key === "dq" ? qs : kvs;
    const e1 = await globalRel([[slice(one[key], n), slice(ref[key], n)]]);
    const eP = await globalRel([[dist[key], slice(ref[key], n)]]);
    errs1.push(`${key} ${e1.toExponential(2)}`);
    errsP.push(`${key} ${eP.toExponential(2)}`);
  }
  rows.push(`${nkv === nh ? "MHA" : "GQA"} T=${T} P=1: ${errs1.join(", ")}`);
  rows.push(`${nkv === nh ? "MHA" : "GQA"} T=${T} P=${P}: ${errsP.join(", ")}`);
}
if (rank === 0) {
  console.log(
    `DistAttn bf16 error vs fp32 reference (||x - ref|| / ||ref||), NCCL, ${device.props(0).name}:`,
  );
  for (const r of rows) console.log(r);
}
await comm.close();
