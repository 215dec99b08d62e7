/**
 * Single-GPU attention kernel benchmark: distflash's df_attention_forward / df_attention_backward
 * (bf16, causal, batch 1) beside PyTorch SDPA's flash and cuDNN backends measured in the same run
 * (bench/torch_attn.py), one table.
 *
 *   deno run -A bench/attn_kernel.ts [--sizes 16384,32768,65536] [--heads 32] [--hd 128,64]
 *        [--hd64-sizes 16384] [--reps 10] [--warmup 3] [--torch] [--sweep 16384,32768]
 *
 * Timing: CUDA events around the region (Device.recordEvent / elapsedMs), median of --reps after
 * --warmup, random bf16 inputs (uniform in [-1, 1), scale 1/sqrt(D)). "fwd+bwd" is one forward, the
 * zeroing of the fp32 dq/dk/dv the backward adds into, and one backward (the D = rowsum(dO*O) pre-pass
 * is inside df_attention_backward). FLOPs: causal forward = 2*B*H*S^2*D, fwd+bwd = 3.5x that.
 * --sweep times every tile variant of the kernels (DISTFLASH_FLASH_FWD / _BWD) at those sizes after
 * checking each against the fp32 kernel on a small problem.
 */
import { fillRandom } from "../src/bench/attn.ts";
import { Device } from "../src/runtime/device.ts";
import * as op from "../src/runtime/ops.ts";
import { DType } from "../src/runtime/ops.ts";
import { bf16BitsToF32 } from "../src/io/dtype.ts";

const args = Deno.args;
function flag(name: string, fallback: string): string {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback;
}
const ints = (s: string) => s.split(",").filter((x) => x).map(Number);
const sizes = ints(flag("sizes", "16384,32768,65536"));
const H = Number(flag("heads", "32"));
const headDims = ints(flag("hd", "128,64"));
const hd64Sizes = ints(flag("hd64-sizes", "16384"));
const reps = Number(flag("reps", "10"));
const warmup = Number(flag("warmup", "3"));
const withTorch = args.includes("--torch");
const sweepSizes = ints(flag("sweep", ""));
/** Tile variants by their DISTFLASH_FLASH_FWD / _BWD value (forward_variant and
 * backward_variant in csrc/cuda/flash_attention.cu); forward 4 and 5, backward 4 are the Hopper
 * kernels (sm_90a only; the defaults there), forward 6 and backward 5 the mma.sync ones. */
const FWD_VARIANTS: Record<number, [number, string][]> = {
  128: [
    [0, "default (sm_90a: v5 wgmma; else v6)"],
    [6, "mma.sync 4w x 32r, BK 64"],
    [1, "4w x 32r, BK 32"],
    [2, "8w x 16r, BK 128"],
    [3, "8w x 32r, BK 32"],
    [4, "wgmma sm_90a, 2 WG x 64r, BK 128"],
    [5, "wgmma sm_90a, overlapped P V"],
  ],
  64: [
    [0, "default (sm_90a: v5 wgmma; else v6)"],
    [6, "mma.sync 4w x 32r, BK 64"],
    [1, "4w x 32r, BK 128"],
    [2, "8w x 16r, BK 128"],
    [4, "wgmma sm_90a, 2 WG x 64r, BK 128"],
    [5, "wgmma sm_90a, overlapped P V"],
  ],
};
const BWD_VARIANTS: Record<number, [number, string][]> = {
  128: [
    [0, "default (sm_90a: v4 wgmma; else v5)"],
    [5, "mma.sync FA2 grid, 8-B dQ atomics"],
    [1, "FA2 grid, 16-B dQ atomics"],
    [2, "16-key warps, BK 128, BQ 64"],
    [3, "16-key, BK 128, BQ 32"],
    [4, "wgmma sm_90a, 2 WG x 64 keys, BQ 64"],
  ],
  64: [
    [0, "default (sm_90a: v4 wgmma; else v5)"],
    [5, "mma.sync FA2 grid, 8-B dQ atomics"],
    [1, "FA2 grid, 16-B dQ atomics"],
    [2, "16-key warps, BK 128, BQ 64"],
    [4, "wgmma sm_90a, 2 WG x 64 keys, BQ 64"],
  ],
};

const d = Device.open("cuda");
const props = d.props(0);
console.log(`device: ${props.name}, ${props.multiprocessors} SMs; ${d.buildInfo}`);

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const causalFlops = (S: number, D: number) => 2 * H * S * S * D;

const ev0 = d.createEvent(), ev1 = d.createEvent();
function timeMs(fn: () => void, before?: () => void): number {
  const times: number[] = [];
  for (let i = 0; i < warmup + reps; i++) {
    before?.();
    d.recordEvent(ev0);
    fn();
    d.recordEvent(ev1);
    d.syncEvent(ev1);
    if (i >= warmup) times.push(d.elapsedMs(ev0, ev1));
  }
  return median(times);
}

/** Buffers for the largest problem; smaller ones use prefixes (rows are [S, H, D]). */
const maxS = Math.max(...sizes, ...hd64Sizes, ...sweepSizes, 2048);
const maxD = Math.max(...headDims);
const nMax = maxS * H * maxD;
const buf = {
  q: d.alloc(nMax * 2),
  k: d.alloc(nMax * 2),
  v: d.alloc(nMax * 2),
  dout: d.alloc(nMax * 2),
  out: d.alloc(nMax * 2),
  lse: d.alloc(maxS * H * 4),
  dq: d.alloc(nMax * 4),
  dk: d.alloc(nMax * 4),
  dv: d.alloc(nMax * 4),
};
const t0 = performance.now();
fillRandom(d, buf.q.ptr, nMax, 1);
fillRandom(d, buf.k.ptr, nMax, 2);
fillRandom(d, buf.v.ptr, nMax, 3);
fillRandom(d, buf.dout.ptr, nMax, 4);
console.log(`random inputs: ${((performance.now() - t0) / 1000).toFixed(1)} s`);

function shape(S: number, D: number, dtype: DType = DType.bf16): op.AttentionShape {
  return { tq: S, tk: S, nh: H, nkv: H, hd: D, qPos0: 0, kPos0: 0, scale: 1 / Math.sqrt(D), dtype };
}
const fwd = (a: op.AttentionShape) =>
  op.attentionForward(d, buf.out.ptr, buf.lse.ptr, buf.q.ptr, buf.k.ptr, buf.v.ptr, a);
const bwd = (a: op.AttentionShape) =>
  op.attentionBackward(
    d,
    buf.dq.ptr,
    buf.dk.ptr,
    buf.dv.ptr,
    buf.dout.ptr,
    buf.q.ptr,
    buf.k.ptr,
    buf.v.ptr,
    buf.out.ptr,
    buf.lse.ptr,
    a,
  );
function zeroGrads(a: op.AttentionShape) {
  const n = a.tq * a.nh * a.hd * 4;
  d.memset(buf.dq.ptr, 0, n);
  d.memset(buf.dk.ptr, 0, n);
  d.memset(buf.dv.ptr, 0, n);
}

interface Row {
  impl: string;
  S: number;
  D: number;
  fwdMs?: number;
  fwdBwdMs?: number;
  note?: string;
}
const rows: Row[] = [];

function measure(S: number, D: number, impl = "distflash") {
  const a = shape(S, D);
  const fwdMs = timeMs(() => fwd(a));
  const fwdBwdMs = timeMs(() => {
    fwd(a);
    zeroGrads(a);
    bwd(a);
  });
  const row = { impl, S, D, fwdMs, fwdBwdMs };
  rows.push(row);
  console.log(JSON.stringify(row));
}

/** ||x - y|| / ||y|| */
function rel(x: Float32Array, y: Float32Array): number {
  let n = 0, m = 0;
  for (let i = 0; i < x.length; i++) {
    n += (x[i] - y[i]) ** 2;
    m += y[i] ** 2;
  }
  return Math.sqrt(n / m);
}

/** Each variant against the fp32 kernel at S = 2048 (inputs are prefixes of the bench tensors). */
function checkVariant(D: number): string {
  const S = 2048, n = S * H * D;
  const a = shape(S, D), af = shape(S, D, DType.f32);
  const f32 = (p: bigint) => {
    const b = d.alloc(n * 4);
    op.convert(d, b.ptr, DType.f32, p, DType.bf16, n);
    return b;
  };
  const [qf, kf, vf, df] = [buf.q, buf.k, buf.v, buf.dout].map((b) => f32(b.ptr));
  const outF = d.alloc(n * 4), lseF = d.alloc(S * H * 4);
  op.attentionForward(d, outF.ptr, lseF.ptr, qf.ptr, kf.ptr, vf.ptr, af);
  fwd(a);
  zeroGrads(a);
  bwd(a);
  const outBf = f32(buf.out.ptr);
  const g = [d.alloc(n * 4), d.alloc(n * 4), d.alloc(n * 4)];
  for (const x of g) d.memset(x.ptr, 0, n * 4);
  op.attentionBackward(
    d,
    g[0].ptr,
    g[1].ptr,
    g[2].ptr,
    df.ptr,
    qf.ptr,
    kf.ptr,
    vf.ptr,
    outBf.ptr,
    buf.lse.ptr,
    af,
  );
  const get = (p: bigint) => d.download(new Float32Array(n), p);
  const out = Float32Array.from(d.download(new Uint16Array(n), buf.out.ptr), bf16BitsToF32);
  const errs = [
    rel(out, get(outF.ptr)),
    rel(get(buf.dq.ptr), get(g[0].ptr)),
    rel(get(buf.dk.ptr), get(g[1].ptr)),
    rel(get(buf.dv.ptr), get(g[2].ptr)),
  ];
  for (const b of [qf, kf, vf, df, outF, lseF, outBf, ...g]) b.free();
  return `err out ${errs[0].toExponential(1)} dq ${errs[1].toExponential(1)} dk ${
    errs[2].toExponential(1)
  } dv ${errs[3].toExponential(1)}`;
}

if (sweepSizes.length) {
  console.log("== variant sweep (fwd alone; bwd alone after one fwd) ==");
  for (const D of headDims) {
    for (const [fv, fwdLabel] of FWD_VARIANTS[D]) {
      for (const [bv, bwdLabel] of BWD_VARIANTS[D]) {
        // Every fwd variant with bwd 0, every bwd variant with fwd 0.
        if (fv !== 0 && bv !== 0) continue;
        Deno.env.set("DISTFLASH_FLASH_FWD", String(fv));
        Deno.env.set("DISTFLASH_FLASH_BWD", String(bv));
        const errs = checkVariant(D);
        for (const S of sweepSizes) {
          const a = shape(S, D);
          const fwdMs = bv === 0 ? timeMs(() => fwd(a)) : NaN;
          fwd(a);
          const bwdMs = fv === 0 ? timeMs(() => bwd(a), () => zeroGrads(a)) : NaN;
          const f = causalFlops(S, D);
          console.log(
            `sweep D=${D} S=${S} fwd[${fv}] ${fwdLabel} | bwd[${bv}] ${bwdLabel}: ` +
              `fwd ${fwdMs.toFixed(2)} ms ${(f / fwdMs / 1e9).toFixed(0)} TF/s, ` +
              `bwd ${bwdMs.toFixed(2)} ms ${(2.5 * f / bwdMs / 1e9).toFixed(0)} TF/s; ${errs}`,
          );
        }
      }
    }
  }
  Deno.env.delete("DISTFLASH_FLASH_FWD");
  Deno.env.delete("DISTFLASH_FLASH_BWD");
}

for (const D of headDims) {
  for (const S of D === 64 ? hd64Sizes : sizes) measure(S, D);
}

if (withTorch) {
  const here = new URL(".", import.meta.url).pathname;
  const hdList = headDims.join(",");
  const out = await new Deno.Command("python3", {
    args: [
      `${here}torch_attn.py`,
      "--sizes",
      [...new Set([...sizes, ...hd64Sizes])].join(","),
      "--heads",
      String(H),
      "--hd",
      hdList,
      "--reps",
      String(reps),
      "--warmup",
      String(warmup),
    ],
    env: { PYTHONUNBUFFERED: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  for (const line of text.split("\n")) {
    if (line.startsWith("TORCHINFO ")) console.log(`torch: ${line.slice(10)}`);
    if (!line.startsWith("TORCH ")) continue;
    const r = JSON.parse(line.slice(6));
    if (r.D === 64 && !hd64Sizes.includes(r.S)) continue;
    if (r.D !== 64 && !sizes.includes(r.S)) continue;
    rows.push({
      impl: r.backend,
      S: r.S,
      D: r.D,
      fwdMs: r.fwd_ms,
      fwdBwdMs: r.fwdbwd_ms,
      note: r.error,
    });
  }
  if (!out.success) {
    console.log(`torch_attn.py failed: ${new TextDecoder().decode(out.stderr).slice(-2000)}`);
  }
}

console.log(`\n== causal attention, B=1, H=${H}, bf16, ${props.name} (median of ${reps}) ==`);
console.log("impl        |     S |   D | fwd ms   | fwd TF/s | fwd+bwd ms | fwd+bwd TF/s");
rows.sort((x, y) => x.D - y.D || x.S - y.S || x.impl.localeCompare(y.impl));
for (const r of rows) {
  const f = causalFlops(r.S, r.D);
  const cell = (ms: number | undefined, w: number) => (ms ? ms.toFixed(2) : "-").padStart(w);
  const tf = (ms: number | undefined, k: number, w: number) =>
    (ms ? (k * f / ms / 1e9).toFixed(0) : "-").padStart(w);
  console.log(
    `${r.impl.padEnd(11)} | ${String(r.S).padStart(5)} | ${String(r.D).padStart(3)} | ${
      cell(r.fwdMs, 8)
    } | ${tf(r.fwdMs, 1, 8)} | ${cell(r.fwdBwdMs, 10)} | ${tf(r.fwdBwdMs, 3.5, 12)}${
      r.note ? "  " + r.note : ""
    }`,
  );
}
for (const b of Object.values(buf)) b.free();
d.destroyEvent(ev0);
d.destroyEvent(ev1);
