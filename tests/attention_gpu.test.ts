/**
 * The tensor-core attention kernels (csrc/cuda/flash_fwd.cuh, flash_bwd.cuh, launched by
 * csrc/cuda/flash_attention.cu: bf16, head dims 64 and 128) at sizes that cross many tiles, against the fp32 CUDA-core kernels of csrc/cuda/attention.cu run on
 * the same bf16-rounded inputs converted to fp32 (df_convert on the device), so both see exactly
 * the same values and the difference is the bf16 kernel's own arithmetic. Runs only with
 * DISTFLASH_TEST_BACKEND=cuda (the CPU backend has no such kernel).
 *
 * Tolerances, as ||out - ref|| / ||ref||:
 *  - out < 1e-2: the kernel rounds the probabilities P to bf16 before P V (relative 2^-9 ≈ 2e-3 per
 *    element, independent between keys, so the sum's error is smaller still) and rounds out to bf16
 *    (2^-9 again); expected errors sit near 3e-3.
 *  - lse < 1e-3: computed in fp32 from fp32 scores (ex2.approx / lg2.approx, relative ~1e-7 each),
 *    |lse| of order log(Tk); the observed error is ~1e-7, the bound only guards against a wrong term.
 *  - dq, dk, dv < 2e-2: the backward rounds P and dS = P (dP - D) to bf16 before the three products
 *    dV = P^T dO, dK = dS^T Q, dQ = dS K (2^-9 each). dP and D are computed in fp32 from the same bf16
 *    values as the reference (both get the same out and lse), so the cancellation in dP - D adds no
 *    error of its own beyond the rounding of its result; sums over hundreds to thousands of terms
 *    average the independent roundings. Expected 3e-3 to 6e-3; 2e-2 leaves a margin of three.
 */
import { assert, assertEquals, assertLess } from "./assert.ts";
import { randn, relError, TEST_BACKEND, testDevice } from "./_util.ts";
import type { DeviceBuffer, DevicePtr } from "../src/runtime/device.ts";
import * as ops from "../src/runtime/ops.ts";
import { DType } from "../src/runtime/ops.ts";
import { bf16BitsToF32 } from "../src/io/dtype.ts";

const GPU = TEST_BACKEND === "cuda";
const { f32: F32, bf16: BF16 } = DType;

if (!GPU) {
  Deno.test({
    name: "cpu: tensor-core attention (run with DISTFLASH_TEST_BACKEND=cuda)",
    ignore: true,
    fn() {},
  });
}

/** Device buffers of one case, freed at the end even when it fails. */
class Scope {
  #buffers: DeviceBuffer[] = [];
  constructor(readonly d = testDevice()) {}
  alloc(bytes: number): DevicePtr {
    const b = this.d.alloc(bytes);
    this.#buffers.push(b);
    return b.ptr;
  }
  f32(values: Float32Array): DevicePtr {
    const p = this.alloc(values.length * 4);
    this.d.upload(p, values);
    return p;
  }
  fill(n: number, value: number): DevicePtr {
    return this.f32(new Float32Array(n).fill(value));
  }
  /** bf16 storage filled with NaN bits: an element the kernel leaves unwritten stays NaN. */
  nanBf16(n: number): DevicePtr {
    const p = this.alloc(n * 2);
    this.d.upload(p, new Uint16Array(n).fill(0x7fc0));
    return p;
  }
  /** Random normal values rounded to bf16 on the device: returns the bf16 tensor and its fp32 copy. */
  randomPair(n: number, seed: number): { b: DevicePtr; f: DevicePtr } {
    const raw = this.f32(randn(n, seed));
    const b = this.alloc(n * 2), f = this.alloc(n * 4);
    ops.convert(this.d, b, BF16, raw, F32, n);
    ops.convert(this.d, f, F32, b, BF16, n);
    return { b, f };
  }
  getF32(p: DevicePtr, n: number): Float32Array {
    return this.d.download(new Float32Array(n), p);
  }
  getBf16(p: DevicePtr, n: number): Float32Array {
    return Float32Array.from(this.d.download(new Uint16Array(n), p), bf16BitsToF32);
  }
  free(): void {
    for (const b of this.#buffers) b.free();
    this.#buffers = [];
  }
}

function withScope(fn: (s: Scope) => void): void {
  const s = new Scope();
  try {
    fn(s);
  } finally {
    s.free();
  }
}

interface Block {
  what: string;
  tq: number;
  tk: number;
  qPos0: number;
  kPos0: number;
}

const BLOCKS: Block[] = [
  { what: "diagonal", tq: 1024, tk: 1024, qPos0: 0, kPos0: 0 },
  { what: "diagonal of a later slice", tq: 2048, tk: 2048, qPos0: 2048, kPos0: 2048 },
  { what: "fully visible, Tq != Tk", tq: 1024, tk: 2048, qPos0: 4096, kPos0: 0 },
  {
    what: "partly visible, queries 0..499 see nothing",
    tq: 1024,
    tk: 1024,
    qPos0: 1000,
    kPos0: 1500,
  },
  { what: "ragged sizes, frontier off the tile grid", tq: 1000, tk: 1030, qPos0: 77, kPos0: 20 },
  { what: "no query sees any key", tq: 200, tk: 300, qPos0: 0, kPos0: 500 },
];
const HEADS: [number, number][] = [[4, 4], [8, 2]];
const HEAD_DIMS = [64, 128];

/** Finite lse entries compared by relative error; -inf entries must match exactly. */
function checkLse(name: string, got: Float32Array, want: Float32Array) {
  const g: number[] = [], w: number[] = [];
  for (let i = 0; i < want.length; i++) {
    if (want[i] === -Infinity) {
      assertEquals(got[i], -Infinity, `${name}: lse[${i}] of a query that sees no key`);
    } else {
      g.push(got[i]);
      w.push(want[i]);
    }
  }
  if (w.length) assertLess(relError(g, w), 1e-3, `${name}: lse rel error`);
}

function assertFinite(name: string, x: Float32Array) {
  for (let i = 0; i < x.length; i++) {
    if (!Number.isFinite(x[i])) {
      throw new Error(`${name}: element ${i} is ${x[i]} (unwritten or overflow)`);
    }
  }
}

/** Prints the worst errors with DISTFLASH_TEST_VERBOSE=1 (for bench/NOTES.md). */
const worst = new Map<string, number>();
function check(name: string, got: ArrayLike<number>, want: ArrayLike<number>, tol: number) {
  const e = relError(got, want);
  worst.set(name, Math.max(worst.get(name) ?? 0, e));
  assertLess(e, tol, `${name}: rel error`);
}

if (GPU) {
  Deno.test("cuda: bf16 tensor-core attention forward and backward vs the fp32 kernels", () => {
    const d = testDevice();
    let seed = 1000;
    for (const hd of HEAD_DIMS) {
      for (const [nh, nkv] of HEADS) {
        for (const b of BLOCKS) {
          withScope((s) => {
            const name = `hd=${hd} nh=${nh}/nkv=${nkv} ${b.what}`;
            const a: ops.AttentionShape = {
              tq: b.tq,
              tk: b.tk,
              nh,
              nkv,
              hd,
              qPos0: b.qPos0,
              kPos0: b.kPos0,
              scale: 1 / Math.sqrt(hd),
              dtype: BF16,
            };
            const af = { ...a, dtype: F32 };
            const nq = b.tq * nh * hd, nk = b.tk * nkv * hd, nl = nh * b.tq;
            const q = s.randomPair(nq, seed++), k = s.randomPair(nk, seed++);
            const v = s.randomPair(nk, seed++), dout = s.randomPair(nq, seed++);

            // Forward: bf16 kernel (outputs poisoned first) vs the fp32 kernel.
            const outB = s.nanBf16(nq), lseB = s.fill(nl, NaN);
            ops.attentionForward(d, outB, lseB, q.b, k.b, v.b, a);
            const outF = s.fill(nq, NaN), lseF = s.fill(nl, NaN);
            ops.attentionForward(d, outF, lseF, q.f, k.f, v.f, af);
            const gotOut = s.getBf16(outB, nq), refOut = s.getF32(outF, nq);
            const gotLse = s.getF32(lseB, nl), refLse = s.getF32(lseF, nl);
            assertFinite(`${name} out`, gotOut);
            check("forward out", gotOut, refOut, 1e-2);
            checkLse(name, gotLse, refLse);
            for (let h = 0; h < nh; h++) {
              for (let i = 0; i < b.tq; i++) {
                if (refLse[h * b.tq + i] !== -Infinity) continue;
                for (let c = 0; c < hd; c++) {
                  assertEquals(
                    gotOut[(i * nh + h) * hd + c],
                    0,
                    `${name}: out of a query seeing nothing`,
                  );
                }
              }
            }
            if (refLse.some(Number.isFinite)) {
              worst.set(
                "forward lse",
                Math.max(
                  worst.get("forward lse") ?? 0,
                  relError(
                    gotLse.filter(Number.isFinite),
                    refLse.filter(Number.isFinite),
                  ),
                ),
              );
            }

            // Backward: both get the bf16 kernel's out (as fp32 for the reference) and lse.
            const outBf = s.alloc(nq * 4);
            ops.convert(d, outBf, F32, outB, BF16, nq);
            const [dqB, dkB, dvB] = [s.fill(nq, 0), s.fill(nk, 0), s.fill(nk, 0)];
            ops.attentionBackward(d, dqB, dkB, dvB, dout.b, q.b, k.b, v.b, outB, lseB, a);
            const [dqF, dkF, dvF] = [s.fill(nq, 0), s.fill(nk, 0), s.fill(nk, 0)];
            ops.attentionBackward(d, dqF, dkF, dvF, dout.f, q.f, k.f, v.f, outBf, lseB, af);
            const grads: [string, DevicePtr, DevicePtr, number][] = [
              ["dq", dqB, dqF, nq],
              ["dk", dkB, dkF, nk],
              ["dv", dvB, dvF, nk],
            ];
            for (const [g, pb, pf, n] of grads) {
              const got = s.getF32(pb, n), ref = s.getF32(pf, n);
              assertFinite(`${name} ${g}`, got);
              if (ref.every((x) => x === 0)) {
                assert(
                  got.every((x) => x === 0),
                  `${name}: ${g} must stay 0 when no query sees a key`,
                );
              } else {
                check(`backward ${g}`, got, ref, 2e-2);
              }
            }
          });
        }
      }
    }
    if (Deno.env.get("DISTFLASH_TEST_VERBOSE") === "1") {
      for (const [k, v] of worst) console.log(`worst ${k}: ${v.toExponential(2)}`);
    }
  });

  Deno.test("cuda: bf16 tensor-core attention backward adds into nonzero dq, dk, dv", () => {
    const d = testDevice();
    for (const hd of HEAD_DIMS) {
      withScope((s) => {
        const [tq, tk, nh, nkv] = [512, 640, 8, 2];
        const a: ops.AttentionShape = {
          tq,
          tk,
          nh,
          nkv,
          hd,
          qPos0: 600,
          kPos0: 0,
          scale: 1 / Math.sqrt(hd),
          dtype: BF16,
        };
        const nq = tq * nh * hd, nk = tk * nkv * hd;
        const q = s.randomPair(nq, 1), k = s.randomPair(nk, 2), v = s.randomPair(nk, 3);
        const dout = s.randomPair(nq, 4);
        const out = s.nanBf16(nq), lse = s.fill(nh * tq, NaN);
        ops.attentionForward(d, out, lse, q.b, k.b, v.b, a);
        // Gradient alone, from zero.
        const [dq0, dk0, dv0] = [s.fill(nq, 0), s.fill(nk, 0), s.fill(nk, 0)];
        ops.attentionBackward(d, dq0, dk0, dv0, dout.b, q.b, k.b, v.b, out, lse, a);
        // The same gradient added to random starting values.
        const r = [randn(nq, 5), randn(nk, 6), randn(nk, 7)];
        const acc = r.map((x) => s.f32(x));
        ops.attentionBackward(d, acc[0], acc[1], acc[2], dout.b, q.b, k.b, v.b, out, lse, a);
        const zero = [dq0, dk0, dv0];
        for (let i = 0; i < 3; i++) {
          const n = r[i].length;
          const g = s.getF32(zero[i], n), got = s.getF32(acc[i], n);
          assert(g.some((x) => x !== 0), "the gradient is not trivially zero");
          const want = Float64Array.from(g, (x, j) => x + r[i][j]);
          // fp32 atomics add in any order: differences are a few ulps of the sum.
          assertLess(relError(got, want), 1e-5, `hd=${hd} ${["dq", "dk", "dv"][i]} += rel error`);
        }
      });
    }
  });
}
