/**
 * cuDNN's fused attention (csrc/cuda/cudnn_attention.cu) against the fp32 CUDA-core kernels, for
 * every kind of block pair DistAttn and the zigzag ring produce: full blocks, the causal diagonal,
 * causal blocks at other offsets (bottom-right and general diagonal bands), Tq != Tk, GQA without
 * expanding K/V, head dims 64 and 128, and queries that see no key (cuDNN does not take those
 * calls; the native kernels must still give out = 0, lse = -inf). Runs only with
 * DISTFLASH_TEST_BACKEND=cuda and a loadable cuDNN 9 (scripts/gpu_cudnn.sh); DistAttn, zigzag and
 * head groups over cuDNN are the existing tests run with DISTFLASH_TEST_ATTENTION_KERNEL=cudnn.
 * NOT YET RUN ON A GPU.
 *
 * Both sides see the same bf16-rounded inputs (the reference gets them converted to fp32).
 * Tolerances, ||got - ref|| / ||ref||: out < 1e-2 and dq, dk, dv < 2e-2, the bounds of the native
 * bf16 kernels (tests/attention_gpu.test.ts gives the error budget: P and dS rounded to bf16 before
 * the products, out rounded to bf16); cuDNN also hands dq, dk, dv over in bf16 (another 2^-9 per
 * element, before the fp32 add). lse < 1e-3 (fp32 statistics; cuDNN's stats are max + log(sum exp),
 * the same natural-log LSE). That cuDNN and not the native fallback produced a result is checked by
 * comparing its bits with the native bf16 kernel's: different arithmetic, different roundings.
 */
import { assert, assertEquals, assertLess, assertThrows } from "./assert.ts";
import { randn, relError, TEST_BACKEND, testDevice } from "./_util.ts";
import type { DeviceBuffer, DevicePtr } from "../src/runtime/device.ts";
import * as ops from "../src/runtime/ops.ts";
import { DType } from "../src/runtime/ops.ts";
import { bf16BitsToF32 } from "../src/io/dtype.ts";
import { probeCudnn, selectAttentionKernel } from "../src/runtime/attention_kernel.ts";

const { f32: F32, bf16: BF16 } = DType;
const GPU = TEST_BACKEND === "cuda";
const cudnn = GPU ? probeCudnn(testDevice()) : { available: false, error: "cpu backend" };

if (!GPU || !cudnn.available) {
  Deno.test({
    name: `cuDNN attention (needs DISTFLASH_TEST_BACKEND=cuda and cuDNN 9: ${cudnn.error ?? ""})`,
    ignore: true,
    fn() {},
  });
}

interface Block {
  what: string;
  tq: number;
  tk: number;
  qPos0: number;
  kPos0: number;
  /** Whether cuDNN takes it (else the native kernels run it). */
  cudnn: boolean;
}

const BLOCKS: Block[] = [
  { what: "diagonal", tq: 1024, tk: 1024, qPos0: 0, kPos0: 0, cudnn: true },
  { what: "diagonal of a later slice", tq: 2048, tk: 2048, qPos0: 2048, kPos0: 2048, cudnn: true },
  { what: "full block, Tq != Tk", tq: 1024, tk: 2048, qPos0: 4096, kPos0: 0, cudnn: true },
  { what: "full block, Tq = Tk", tq: 1024, tk: 1024, qPos0: 1024, kPos0: 0, cudnn: true },
  { what: "bottom-right causal, Tq < Tk", tq: 512, tk: 1024, qPos0: 512, kPos0: 0, cudnn: true },
  { what: "diagonal band, delta 256", tq: 1024, tk: 1024, qPos0: 1280, kPos0: 1024, cudnn: true },
  { what: "diagonal band, Tq > Tk", tq: 2048, tk: 1024, qPos0: 128, kPos0: 0, cudnn: true },
  {
    what: "leading queries see nothing",
    tq: 1024,
    tk: 1024,
    qPos0: 1000,
    kPos0: 1500,
    cudnn: false,
  },
  { what: "no query sees any key", tq: 256, tk: 256, qPos0: 0, kPos0: 512, cudnn: false },
];
const HEADS: [number, number][] = [[4, 4], [8, 2]];
const HEAD_DIMS = [64, 128];

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
  }
}

function sameBits(a: Float32Array, b: Float32Array): boolean {
  return a.every((x, i) => Object.is(x, b[i]));
}

if (GPU && cudnn.available) {
  Deno.test(`cuda: cuDNN ${cudnn.version} attention forward and backward vs the fp32 kernels`, () => {
    const d = testDevice();
    let seed = 5000;
    try {
      for (const hd of HEAD_DIMS) {
        for (const [nh, nkv] of HEADS) {
          for (const b of BLOCKS) {
            const s = new Scope();
            try {
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

              const run = (kernel: "cudnn" | "native") => {
                selectAttentionKernel(d, kernel);
                const out = s.alloc(nq * 2), lse = s.fill(nl, NaN);
                ops.attentionForward(d, out, lse, q.b, k.b, v.b, a);
                const grads = [s.fill(nq, 0.5), s.fill(nk, 0.5), s.fill(nk, 0.5)];
                ops.attentionBackward(
                  d,
                  grads[0],
                  grads[1],
                  grads[2],
                  dout.b,
                  q.b,
                  k.b,
                  v.b,
                  out,
                  lse,
                  a,
                );
                return {
                  out: s.getBf16(out, nq),
                  outPtr: out,
                  lse: s.getF32(lse, nl),
                  lsePtr: lse,
                  grads: grads.map((p, i) => s.getF32(p, i === 0 ? nq : nk)),
                };
              };
              const got = run("cudnn");
              const native = run("native");
              assertEquals(
                !sameBits(got.out, native.out),
                b.cudnn,
                `${name}: cuDNN ${b.cudnn ? "should" : "should not"} have taken this block pair`,
              );

              // Reference: fp32 kernels on the same values; the backward from cuDNN's out and lse.
              const outF = s.fill(nq, NaN), lseF = s.fill(nl, NaN);
              ops.attentionForward(d, outF, lseF, q.f, k.f, v.f, af);
              const refOut = s.getF32(outF, nq), refLse = s.getF32(lseF, nl);
              for (let i = 0; i < nl; i++) {
                if (refLse[i] === -Infinity) {
                  assertEquals(
                    got.lse[i],
                    -Infinity,
                    `${name}: lse[${i}] of a query seeing nothing`,
                  );
                }
              }
              const finite = refLse.map((x, i) => (x === -Infinity ? 0 : got.lse[i]));
              const finiteRef = refLse.map((x) => (x === -Infinity ? 0 : x));
              if (finiteRef.some((x) => x !== 0)) {
                assertLess(relError(finite, finiteRef), 1e-3, `${name}: lse`);
              }
              assert(got.out.every(Number.isFinite), `${name}: out has non-finite values`);
              if (refOut.some((x) => x !== 0)) {
                assertLess(relError(got.out, refOut), 1e-2, `${name}: out`);
              } else {assert(
                  got.out.every((x) => x === 0),
                  `${name}: out must be 0 where no key is seen`,
                );}

              const outBf = s.alloc(nq * 4);
              ops.convert(d, outBf, F32, got.outPtr, BF16, nq);
              const ref = [s.fill(nq, 0.5), s.fill(nk, 0.5), s.fill(nk, 0.5)];
              ops.attentionBackward(
                d,
                ref[0],
                ref[1],
                ref[2],
                dout.f,
                q.f,
                k.f,
                v.f,
                outBf,
                got.lsePtr,
                af,
              );
              ["dq", "dk", "dv"].forEach((g, i) => {
                const want = s.getF32(ref[i], i === 0 ? nq : nk);
                assert(got.grads[i].every(Number.isFinite), `${name}: ${g} has non-finite values`);
                // The accumulators started at 0.5: the backward must add, not overwrite.
                const gotD = got.grads[i].map((x) => x - 0.5), wantD = want.map((x) => x - 0.5);
                if (wantD.every((x) => x === 0)) {
                  assert(gotD.every((x) => x === 0), `${name}: ${g} must stay`);
                } else assertLess(relError(gotD, wantD), 2e-2, `${name}: ${g}`);
              });
            } finally {
              s.free();
            }
          }
        }
      }
    } finally {
      selectAttentionKernel(d, "auto");
    }
    // An fp32 run is told why cuDNN does not run its attention, and cudnn is refused for it.
    assert(/fp32 run: cuDNN's fused attention takes bf16 only/.test(
      selectAttentionKernel(d, "auto", { bf16: false }),
    ));
    assertEquals(d.sym.df_attention_kernel_get(), 1, "native for an fp32 run");
    assertThrows(() => selectAttentionKernel(d, "cudnn", { bf16: false }));
    selectAttentionKernel(d, "auto");
  });
}
