/**
 * The Llama ops (csrc/include/distflash.h) on the backend under test, against float64 references
 * written independently in tests/reference_ops.ts.
 *
 * Tolerances, as ||out - ref|| / ||ref||:
 *  - fp32 storage: < 1e-5. Each output is a short fp32 computation (unit roundoff 2^-24 ≈ 6e-8),
 *    so errors sit near 1e-7; 1e-5 leaves room for sums of a few hundred terms.
 *  - bf16 storage: inputs are rounded to bf16 first, so the reference sees exactly the values the
 *    kernel reads. bf16 keeps 8 significant bits: unit roundoff 2^-9 ≈ 2e-3 per rounding of an
 *    output (or of an intermediate stored in bf16), so 1e-2 bounds the few roundings of each op.
 *  - Backward passes on the CPU backend are also checked against central finite differences of
 *    L = sum(out * R) (R random), evaluated with the fp32 forward op. The error of a central
 *    difference is ~ eps^2 |f'''| / 6 (truncation) + ~ u |L| / eps (fp32 roundoff of L, u ≈ 6e-8):
 *    with eps = 2^-7 ≈ 8e-3 both are ~1e-5 to 1e-4 relative to gradients of order one, so < 1e-3
 *    is a meaningful bound. The step is a power of two and the denominator is the step actually
 *    represented in fp32. On CUDA the backward passes are compared with the float64 formulas
 *    instead (finite differences through a GPU would mostly measure its launch overhead).
 */
import { assert, assertEquals, assertLess, assertThrows } from "./assert.ts";
import {
  type DeviceScope,
  randn,
  relError,
  TEST_BACKEND,
  testDevice,
  withDeviceScope,
} from "./_util.ts";
import {
  adamwRef,
  attentionBackwardRef,
  attentionRef,
  type AttentionRefShape,
  crossEntropyBackwardRef,
  crossEntropyRef,
  embeddingBackwardRef,
  embeddingRef,
  gemmRef,
  rmsnormBackwardRef,
  rmsnormRef,
  ropeRef,
  swigluBackwardRef,
  swigluRef,
} from "./reference_ops.ts";
import type { DevicePtr } from "../src/runtime/device.ts";
import * as ops from "../src/runtime/ops.ts";
import { DType, DTYPE_BYTES } from "../src/runtime/ops.ts";
import { bf16BitsToF32, f32ToBf16Bits } from "../src/io/dtype.ts";
import { DfStatus, DistflashError } from "../ffi/unwrap.ts";
import { fillNormal } from "../src/runtime/ops_basic.ts";
import { Device } from "../src/runtime/device.ts";

const d = testDevice();
const CPU = TEST_BACKEND === "cpu";
const { f32: F32, bf16: BF16 } = DType;
/** Storage types with their forward tolerances (see the header comment). */
const STORAGE = [
  { name: "f32", dtype: F32, tol: 1e-5 },
  { name: "bf16", dtype: BF16, tol: 1e-2 },
] as const;
const FD_TOL = 1e-3;
const FD_EPS = 2 ** -7;

/** Largest error seen per check, printed with DISTFLASH_TEST_VERBOSE=1 (used for reports). */
const observed = new Map<string, number>();

function checkClose(name: string, got: ArrayLike<number>, want: ArrayLike<number>, tol: number) {
  const e = relError(got, want);
  observed.set(name, Math.max(observed.get(name) ?? 0, e));
  assertLess(e, tol, `${TEST_BACKEND} ${name}: rel error`);
}

function bf16Round(x: ArrayLike<number>): Float32Array {
  return Float32Array.from(x, (v) => bf16BitsToF32(f32ToBf16Bits(v)));
}

/** Random normal values, already rounded to bf16 when that is the storage type. */
function data(n: number, seed: number, dtype: DType, scale = 1): Float32Array {
  const x = randn(n, seed, scale);
  return dtype === BF16 ? bf16Round(x) : x;
}

function dot64(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

function addArrays(a: ArrayLike<number>, b: ArrayLike<number>): Float64Array {
  return Float64Array.from({ length: a.length }, (_, i) => a[i] + b[i]);
}

const withScope = (fn: (s: DeviceScope) => void) => withDeviceScope(d, fn);

/** Address `elements` elements of `dtype` past `ptr` (a block of a larger tensor). */
function offset(ptr: DevicePtr, elements: number, dtype: DType = F32): DevicePtr {
  return ptr + BigInt(elements * DTYPE_BYTES[dtype]);
}

/**
 * Central differences of loss(x) for every element of x. x + eps and x - eps are rounded to fp32
 * before use, and the represented step is the denominator.
 */
function finiteDiff(x: Float32Array, loss: (x: Float32Array) => number, eps = FD_EPS) {
  const g = new Float64Array(x.length);
  const xx = Float32Array.from(x);
  for (let i = 0; i < x.length; i++) {
    xx[i] = x[i] + eps;
    const xp = xx[i], lp = loss(xx);
    xx[i] = x[i] - eps;
    const xm = xx[i], lm = loss(xx);
    xx[i] = x[i];
    g[i] = (lp - lm) / (xp - xm);
  }
  return g;
}

// ---------------------------------------------------------------------------------------------
// GEMM

Deno.test(`${TEST_BACKEND}: gemm, all transposes, alpha/beta, padded leading dimensions`, () => {
  const [m, n, k] = [37, 45, 300]; // K crosses the CPU kernel's 256-deep blocks
  for (const st of STORAGE) {
    for (const transA of [false, true]) {
      for (const transB of [false, true]) {
        withScope((s) => {
          const lda = (transA ? m : k) + 3, ldb = (transB ? k : n) + 5, ldc = n + 2;
          const a = data((transA ? k : m) * lda, 1, st.dtype);
          const b = data((transB ? n : k) * ldb, 2, st.dtype);
          const c0 = data(m * ldc, 3, st.dtype);
          const [alpha, beta] = [0.75, 0.5];
          const dc = s.put(c0, st.dtype);
          ops.gemm(d, {
            transA,
            transB,
            m,
            n,
            k,
            alpha,
            a: s.put(a, st.dtype),
            lda,
            b: s.put(b, st.dtype),
            ldb,
            beta,
            c: dc,
            ldc,
            abType: st.dtype,
            cType: st.dtype,
          });
          const got = s.get(dc, m * ldc, st.dtype);
          const dense = Float32Array.from(
            { length: m * n },
            (_, i) => got[Math.floor(i / n) * ldc + (i % n)],
          );
          const want = gemmRef(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c0, ldc);
          checkClose(`gemm ${st.name}`, dense, want, st.tol);
          // Padding columns of C are untouched.
          for (let i = 0; i < m; i++) {
            for (let j = n; j < ldc; j++) assertEquals(got[i * ldc + j], c0[i * ldc + j]);
          }
        });
      }
    }
  }
});

Deno.test(`${TEST_BACKEND}: gemm beta = 0 ignores NaN in C; bf16 inputs into an fp32 C`, () => {
  withScope((s) => {
    const [m, n, k] = [150, 200, 64]; // several output tiles and threads on the CPU
    const a = data(m * k, 4, BF16), b = data(n * k, 5, BF16);
    const dc = s.put(new Float32Array(m * n).fill(NaN));
    ops.gemm(d, {
      transA: false,
      transB: true,
      m,
      n,
      k,
      a: s.put(a, BF16),
      lda: k,
      b: s.put(b, BF16),
      ldb: k,
      c: dc,
      ldc: n,
      abType: BF16,
      cType: F32,
    });
    const want = gemmRef(false, true, m, n, k, 1, a, k, b, k, 0, null, n);
    // Inputs are exact bf16 values and C is fp32: only fp32 accumulation error remains.
    checkClose("gemm bf16->f32 beta=0", s.get(dc, m * n), want, 1e-5);
  });
});

Deno.test(`${TEST_BACKEND}: linear and linearBackward (x W^T, dy W, dW += dy^T x)`, () => {
  withScope((s) => {
    const [t, inF, outF] = [24, 40, 56];
    const x = randn(t * inF, 6), w = randn(outF * inF, 7), dy = randn(t * outF, 8);
    const dw0 = randn(outF * inF, 9);
    const [px, pw, pdy] = [s.put(x), s.put(w), s.put(dy)];
    const py = s.zeros(t * outF), pdx = s.zeros(t * inF), pdw = s.put(dw0);
    ops.linear(d, py, px, pw, t, inF, outF, F32);
    ops.linearBackward(d, pdx, pdw, pdy, px, pw, t, inF, outF, F32);
    checkClose(
      "linear y",
      s.get(py, t * outF),
      gemmRef(false, true, t, outF, inF, 1, x, inF, w, inF, 0, null, outF),
      1e-5,
    );
    checkClose(
      "linear dx",
      s.get(pdx, t * inF),
      gemmRef(false, false, t, inF, outF, 1, dy, outF, w, inF, 0, null, inF),
      1e-5,
    );
    const dwRef = gemmRef(true, false, outF, inF, t, 1, dy, outF, x, inF, 1, dw0, inF);
    checkClose("linear dW", s.get(pdw, outF * inF), dwRef, 1e-5);
  });
});

// ---------------------------------------------------------------------------------------------
// Embedding

Deno.test(`${TEST_BACKEND}: embedding forward and backward (repeated ids accumulate)`, () => {
  const [t, v, h] = [12, 20, 16];
  const ids = [3, 0, 19, 3, 7, 7, 7, 12, 1, 0, 19, 5];
  for (const st of STORAGE) {
    withScope((s) => {
      const table = data(v * h, 10, st.dtype), dout = data(t * h, 11, st.dtype);
      const dtable0 = randn(v * h, 12);
      const pids = s.i32(ids), pout = s.zeros(t * h, st.dtype), pdt = s.put(dtable0);
      ops.embeddingForward(d, pout, s.put(table, st.dtype), pids, t, v, h, st.dtype);
      // A copy: exact.
      assertEquals(
        Array.from(s.get(pout, t * h, st.dtype)),
        Array.from(embeddingRef(table, ids, h)),
      );
      ops.embeddingBackward(d, pdt, s.put(dout, st.dtype), pids, t, v, h, st.dtype);
      const want = addArrays(dtable0, embeddingBackwardRef(dout, ids, v, h));
      // dtable is fp32 and dout values are exact: fp32 accumulation error only.
      checkClose(`embedding backward ${st.name}`, s.get(pdt, v * h), want, 1e-5);
    });
  }
  if (!CPU) return;
  withScope((s) => {
    const table = randn(v * h, 13), r = randn(t * h, 14);
    const pids = s.i32(ids), ptable = s.put(table), pout = s.zeros(t * h), pdt = s.zeros(v * h);
    ops.embeddingBackward(d, pdt, s.put(r), pids, t, v, h, F32);
    const fd = finiteDiff(table, (x) => {
      s.set(ptable, x);
      ops.embeddingForward(d, pout, ptable, pids, t, v, h, F32);
      return dot64(s.get(pout, t * h), r);
    });
    checkClose("embedding backward vs FD", s.get(pdt, v * h), fd, FD_TOL);
  });
});

// ---------------------------------------------------------------------------------------------
// RMSNorm

Deno.test(`${TEST_BACKEND}: rmsnorm forward and backward against the float64 reference`, () => {
  const [t, h, eps] = [24, 64, 1e-5];
  for (const st of STORAGE) {
    withScope((s) => {
      const x = data(t * h, 20, st.dtype, 2),
        w = data(h, 21, st.dtype),
        dout = data(t * h, 22, st.dtype);
      const dx0 = data(t * h, 23, st.dtype), dw0 = randn(h, 24);
      const [px, pw] = [s.put(x, st.dtype), s.put(w, st.dtype)];
      const pout = s.zeros(t * h, st.dtype), prstd = s.zeros(t);
      ops.rmsnormForward(d, pout, prstd, px, pw, t, h, eps, st.dtype);
      const ref = rmsnormRef(x, w, t, h, eps);
      checkClose(`rmsnorm out ${st.name}`, s.get(pout, t * h, st.dtype), ref.out, st.tol);
      checkClose(`rmsnorm rstd ${st.name}`, s.get(prstd, t), ref.rstd, 1e-5); // fp32 always
      const pdx = s.put(dx0, st.dtype), pdw = s.put(dw0);
      ops.rmsnormBackward(d, pdx, pdw, s.put(dout, st.dtype), px, pw, prstd, t, h, st.dtype);
      const g = rmsnormBackwardRef(dout, x, w, t, h, eps);
      // dx += in the storage type; compare the increment with the exact one.
      checkClose(
        `rmsnorm dx ${st.name}`,
        s.get(pdx, t * h, st.dtype),
        addArrays(dx0, g.dx),
        st.tol,
      );
      checkClose(`rmsnorm dw ${st.name}`, s.get(pdw, h), addArrays(dw0, g.dw), st.tol);
    });
  }
});

Deno.test({
  name: `${TEST_BACKEND}: rmsnorm backward against finite differences`,
  ignore: !CPU,
  fn: () =>
    withScope((s) => {
      const [t, h, eps] = [8, 32, 1e-5];
      const x = randn(t * h, 25), w = randn(h, 26, 0.5), r = randn(t * h, 27);
      for (let i = 0; i < h; i++) w[i] += 1;
      const [px, pw, pout, prstd] = [s.put(x), s.put(w), s.zeros(t * h), s.zeros(t)];
      const loss = () => {
        ops.rmsnormForward(d, pout, prstd, px, pw, t, h, eps, F32);
        return dot64(s.get(pout, t * h), r);
      };
      loss();
      const [pdx, pdw] = [s.zeros(t * h), s.zeros(h)];
      ops.rmsnormBackward(d, pdx, pdw, s.put(r), px, pw, prstd, t, h, F32);
      const fdx = finiteDiff(x, (xx) => (s.set(px, xx), loss()));
      s.set(px, x);
      const fdw = finiteDiff(w, (ww) => (s.set(pw, ww), loss()));
      checkClose("rmsnorm dx vs FD", s.get(pdx, t * h), fdx, FD_TOL);
      checkClose("rmsnorm dw vs FD", s.get(pdw, h), fdw, FD_TOL);
    }),
});

// ---------------------------------------------------------------------------------------------
// RoPE

function invFreq(hd: number, theta = 10000): Float32Array {
  return Float32Array.from({ length: hd / 2 }, (_, i) => 1 / theta ** ((2 * i) / hd));
}

Deno.test(`${TEST_BACKEND}: rope forward, inverse, and backward`, () => {
  const [t, heads, hd] = [20, 3, 16];
  // Positions of a rank's slice far into a sequence, not starting at 0, plus a few small ones.
  const pos = Array.from({ length: t }, (_, i) => (i < 4 ? i : 1000 + 7 * i));
  const freq = invFreq(hd);
  for (const st of STORAGE) {
    withScope((s) => {
      const x = data(t * heads * hd, 30, st.dtype);
      const [px, ppos, pfreq] = [s.put(x, st.dtype), s.i32(pos), s.put(freq)];
      ops.rope(d, px, ppos, pfreq, t, heads, hd, false, st.dtype);
      const y = s.get(px, x.length, st.dtype);
      checkClose(`rope ${st.name}`, y, ropeRef(x, pos, freq, t, heads, hd), st.tol);
      // The backward is the inverse rotation; on fp32 it undoes the forward.
      ops.rope(d, px, ppos, pfreq, t, heads, hd, true, st.dtype);
      const back = s.get(px, x.length, st.dtype);
      checkClose(
        `rope inverse ${st.name}`,
        back,
        ropeRef(y, pos, freq, t, heads, hd, true),
        st.tol,
      );
      if (st.dtype === F32) checkClose("rope round trip f32", back, x, 1e-5);
    });
  }
  if (!CPU) return;
  withScope((s) => {
    const x = randn(t * heads * hd, 31), r = randn(t * heads * hd, 32);
    const [ppos, pfreq, px, pr] = [s.i32(pos), s.put(freq), s.zeros(x.length), s.put(r)];
    ops.rope(d, pr, ppos, pfreq, t, heads, hd, true, F32); // dx = inverse rotation of dout
    const fd = finiteDiff(x, (xx) => {
      s.set(px, xx);
      ops.rope(d, px, ppos, pfreq, t, heads, hd, false, F32);
      return dot64(s.get(px, xx.length), r);
    });
    checkClose("rope backward vs FD", s.get(pr, x.length), fd, FD_TOL);
  });
});

// ---------------------------------------------------------------------------------------------
// Attention

const HD = 16;
const SCALE = 1 / Math.sqrt(HD);

function shape(
  tq: number,
  tk: number,
  nh: number,
  nkv: number,
  qPos0: number,
  kPos0: number,
  dtype: DType,
): ops.AttentionShape & AttentionRefShape {
  return { tq, tk, nh, nkv, hd: HD, qPos0, kPos0, scale: SCALE, dtype };
}

/** Runs the forward op on host arrays; returns out (storage type) and lse. */
function attentionForward(
  s: DeviceScope,
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  a: ops.AttentionShape,
) {
  const nq = a.tq * a.nh * a.hd;
  // Outputs start as NaN: the op must write every element (zeros for queries that see no key).
  const pout = s.put(new Float32Array(nq).fill(NaN), a.dtype);
  const plse = s.put(new Float32Array(a.nh * a.tq).fill(NaN));
  ops.attentionForward(d, pout, plse, s.put(q, a.dtype), s.put(k, a.dtype), s.put(v, a.dtype), a);
  return { out: s.get(pout, nq, a.dtype), lse: s.get(plse, a.nh * a.tq) };
}

function checkLse(name: string, got: Float32Array, want: Float64Array, tol: number) {
  const finite: number[] = [], wantFinite: number[] = [];
  for (let i = 0; i < want.length; i++) {
    if (want[i] === -Infinity) {
      assertEquals(got[i], -Infinity, `${name}: lse[${i}] of a query that sees no key`);
    } else {
      finite.push(got[i]);
      wantFinite.push(want[i]);
    }
  }
  if (finite.length) checkClose(name, finite, wantFinite, tol);
}

Deno.test(`${TEST_BACKEND}: attention forward, MHA/GQA/MQA, block pairs at offsets`, () => {
  const blocks = [
    { what: "diagonal", tq: 16, tk: 16, qPos0: 0, kPos0: 0 },
    { what: "diagonal of a later slice", tq: 24, tk: 24, qPos0: 48, kPos0: 48 },
    { what: "fully visible, Tq != Tk", tq: 16, tk: 24, qPos0: 40, kPos0: 0 },
    { what: "partly visible, some queries see nothing", tq: 16, tk: 20, qPos0: 16, kPos0: 24 },
  ];
  for (const [nh, nkv] of [[4, 4], [4, 2], [6, 1]]) {
    for (const b of blocks) {
      for (const st of STORAGE) {
        withScope((s) => {
          const a = shape(b.tq, b.tk, nh, nkv, b.qPos0, b.kPos0, st.dtype);
          const q = data(b.tq * nh * HD, 40, st.dtype), k = data(b.tk * nkv * HD, 41, st.dtype);
          const v = data(b.tk * nkv * HD, 42, st.dtype);
          const got = attentionForward(s, q, k, v, a);
          const ref = attentionRef(q, k, v, a);
          const name = `attention forward ${st.name}`;
          checkClose(`${name} out`, got.out, ref.out, st.tol);
          checkLse(`${name} lse`, got.lse, ref.lse, 1e-5); // lse is computed and stored in fp32
          for (let h = 0; h < nh; h++) {
            for (let i = 0; i < b.tq; i++) {
              if (ref.lse[h * b.tq + i] !== -Infinity) continue;
              for (let c = 0; c < HD; c++) {
                assertEquals(
                  got.out[(i * nh + h) * HD + c],
                  0,
                  `${b.what}: out of a query seeing nothing`,
                );
              }
            }
          }
        });
      }
    }
  }
});

/**
 * DistAttn's use of the kernels: queries and keys of one sequence cut into blocks (uneven, Tq != Tk).
 * Forward: each query block merges the partial results of the key blocks it sees (fp32 out, lse).
 * Backward: every block pair runs with the merged out and lse; dq accumulates over key blocks and dk,
 * dv over query blocks. Both must equal full causal attention over the whole sequence.
 */
Deno.test(`${TEST_BACKEND}: attention blocks merged by lse and split backward equal full attention`, () => {
  const T = 40, qCuts = [0, 12, 40], kCuts = [0, 10, 26, 40];
  for (const [nh, nkv] of [[4, 4], [4, 2]]) {
    for (const st of STORAGE) {
      withScope((s) => {
        const dt = st.dtype;
        const q = data(T * nh * HD, 50, dt),
          k = data(T * nkv * HD, 51, dt),
          v = data(T * nkv * HD, 52, dt);
        const dout = data(T * nh * HD, 53, dt);
        const [pq, pk, pv, pdo] = [s.put(q, dt), s.put(k, dt), s.put(v, dt), s.put(dout, dt)];
        const qRow = nh * HD, kRow = nkv * HD;
        const out = s.zeros(T * qRow), lse = s.alloc(4 * nh * T).ptr;
        const outT = s.zeros(T * qRow, dt); // merged out in the storage type, for the backward
        const dq = s.zeros(T * qRow), dk = s.zeros(T * kRow), dv = s.zeros(T * kRow);
        for (let qi = 0; qi + 1 < qCuts.length; qi++) {
          const [q0, tq] = [qCuts[qi], qCuts[qi + 1] - qCuts[qi]];
          const bOut = s.zeros(tq * qRow); // the running output starts zeroed, its lse at -inf
          const bLse = s.put(new Float32Array(nh * tq).fill(-Infinity));
          const part = s.zeros(tq * qRow, dt), partLse = s.zeros(nh * tq);
          // Key blocks in reverse order, as a rank receives remote blocks after its own.
          for (let ki = kCuts.length - 2; ki >= 0; ki--) {
            const [k0, tk] = [kCuts[ki], kCuts[ki + 1] - kCuts[ki]];
            const a = shape(tq, tk, nh, nkv, q0, k0, dt);
            ops.attentionForward(
              d,
              part,
              partLse,
              offset(pq, q0 * qRow, dt),
              offset(pk, k0 * kRow, dt),
              offset(pv, k0 * kRow, dt),
              a,
            );
            ops.attentionMerge(d, bOut, bLse, part, partLse, tq, nh, HD, dt);
          }
          d.copy(offset(out, q0 * qRow), bOut, 4 * tq * qRow);
          ops.convert(d, offset(outT, q0 * qRow, dt), dt, bOut, F32, tq * qRow);
          // lse is [nh, T]: copy head by head.
          for (let h = 0; h < nh; h++) {
            d.copy(offset(lse, h * T + q0), offset(bLse, h * tq), 4 * tq);
          }
        }
        const ref = attentionRef(q, k, v, shape(T, T, nh, nkv, 0, 0, dt));
        // The merge runs in fp32; for bf16 the partial outputs were rounded to bf16 first.
        checkClose(`attention merged out ${st.name}`, s.get(out, T * qRow), ref.out, st.tol);
        checkClose(`attention merged lse ${st.name}`, s.get(lse, nh * T), ref.lse, 1e-5);

        // Backward: a block-local lse slice [nh, tq] is needed per query block.
        const lseAll = s.get(lse, nh * T);
        for (let qi = 0; qi + 1 < qCuts.length; qi++) {
          const [q0, tq] = [qCuts[qi], qCuts[qi + 1] - qCuts[qi]];
          const bLse = s.put(
            Float32Array.from(
              { length: nh * tq },
              (_, i) => lseAll[Math.floor(i / tq) * T + q0 + (i % tq)],
            ),
          );
          for (let ki = 0; ki + 1 < kCuts.length; ki++) {
            const [k0, tk] = [kCuts[ki], kCuts[ki + 1] - kCuts[ki]];
            const a = shape(tq, tk, nh, nkv, q0, k0, dt);
            ops.attentionBackward(
              d,
              offset(dq, q0 * qRow),
              offset(dk, k0 * kRow),
              offset(dv, k0 * kRow),
              offset(pdo, q0 * qRow, dt),
              offset(pq, q0 * qRow, dt),
              offset(pk, k0 * kRow, dt),
              offset(pv, k0 * kRow, dt),
              offset(outT, q0 * qRow, dt),
              bLse,
              a,
            );
          }
        }
        const g = attentionBackwardRef(dout, q, k, v, shape(T, T, nh, nkv, 0, 0, dt));
        const name = `attention split backward ${st.name}`;
        checkClose(`${name} dq`, s.get(dq, T * qRow), g.dq, st.tol);
        checkClose(`${name} dk`, s.get(dk, T * kRow), g.dk, st.tol);
        checkClose(`${name} dv`, s.get(dv, T * kRow), g.dv, st.tol);
      });
    }
  }
});

Deno.test(`${TEST_BACKEND}: attention backward of one block against the float64 formulas`, () => {
  // Includes queries that see no key (their rows contribute nothing).
  for (
    const b of [{ tq: 12, tk: 16, qPos0: 10, kPos0: 0 }, { tq: 16, tk: 12, qPos0: 4, kPos0: 8 }]
  ) {
    for (const st of STORAGE) {
      withScope((s) => {
        const dt = st.dtype;
        const a = shape(b.tq, b.tk, 4, 2, b.qPos0, b.kPos0, dt);
        const nq = b.tq * 4 * HD, nk = b.tk * 2 * HD;
        const q = data(nq, 60, dt),
          k = data(nk, 61, dt),
          v = data(nk, 62, dt),
          dout = data(nq, 63, dt);
        const [pq, pk, pv] = [s.put(q, dt), s.put(k, dt), s.put(v, dt)];
        const pout = s.zeros(nq, dt), plse = s.zeros(4 * b.tq);
        ops.attentionForward(d, pout, plse, pq, pk, pv, a);
        const dq0 = randn(nq, 64);
        const [dq, dk, dv] = [s.put(dq0), s.zeros(nk), s.zeros(nk)];
        ops.attentionBackward(d, dq, dk, dv, s.put(dout, dt), pq, pk, pv, pout, plse, a);
        const g = attentionBackwardRef(dout, q, k, v, a);
        const name = `attention backward ${st.name}`;
        checkClose(`${name} dq (+=)`, s.get(dq, nq), addArrays(dq0, g.dq), st.tol);
        checkClose(`${name} dk`, s.get(dk, nk), g.dk, st.tol);
        checkClose(`${name} dv`, s.get(dv, nk), g.dv, st.tol);
      });
    }
  }
});

Deno.test({
  name: `${TEST_BACKEND}: attention backward against finite differences (MHA, GQA)`,
  ignore: !CPU,
  fn: () => {
    const cases = [
      { nh: 4, nkv: 4, tq: 8, tk: 12, qPos0: 6, kPos0: 0 },
      { nh: 4, nkv: 2, tq: 8, tk: 8, qPos0: 4, kPos0: 8 }, // queries 0..3 see nothing
    ];
    for (const c of cases) {
      withScope((s) => {
        const a = shape(c.tq, c.tk, c.nh, c.nkv, c.qPos0, c.kPos0, F32);
        const nq = c.tq * c.nh * HD, nk = c.tk * c.nkv * HD;
        const q = randn(nq, 70), k = randn(nk, 71), v = randn(nk, 72), r = randn(nq, 73);
        const [pq, pk, pv, pout, plse] = [
          s.put(q),
          s.put(k),
          s.put(v),
          s.zeros(nq),
          s.zeros(c.nh * c.tq),
        ];
        const loss = () => {
          ops.attentionForward(d, pout, plse, pq, pk, pv, a);
          return dot64(s.get(pout, nq), r);
        };
        loss();
        const [dq, dk, dv] = [s.zeros(nq), s.zeros(nk), s.zeros(nk)];
        ops.attentionBackward(d, dq, dk, dv, s.put(r), pq, pk, pv, pout, plse, a);
        const fq = finiteDiff(q, (x) => (s.set(pq, x), loss()));
        s.set(pq, q);
        const fk = finiteDiff(k, (x) => (s.set(pk, x), loss()));
        s.set(pk, k);
        const fv = finiteDiff(v, (x) => (s.set(pv, x), loss()));
        const name = `attention backward vs FD nkv=${c.nkv}`;
        checkClose(`${name} dq`, s.get(dq, nq), fq, FD_TOL);
        checkClose(`${name} dk`, s.get(dk, nk), fk, FD_TOL);
        checkClose(`${name} dv`, s.get(dv, nk), fv, FD_TOL);
      });
    }
  },
});

/**
 * Rows with lse = -inf on either side. The running output starts zeroed and a block's output is 0
 * where its lse is -inf (the forward writes that), so every backend must produce no NaN. The CPU
 * backend also guarantees that the side with lse = -inf is not read at all (NaN garbage there stays
 * out of the result); that stronger property is checked on the CPU only.
 */
Deno.test(`${TEST_BACKEND}: attention merge handles -inf on either side without NaN`, () => {
  for (const garbage of CPU ? [0, NaN] : [0]) {
    withScope((s) => {
      const [tq, nh] = [2, 2];
      const n = tq * nh * HD;
      const row = (i: number, h: number) => (i * nh + h) * HD;
      // lse [nh, tq]: (h0,i0) both -inf; (h0,i1) running -inf; (h1,i0) part -inf; (h1,i1) running
      // 1 and part 2.5 (unequal, so an error weighting one side differently from the other shows).
      const lse0 = [-Infinity, -Infinity, 0.5, 1.0], partLse = [-Infinity, 2.0, -Infinity, 2.5];
      const out0 = new Float32Array(n).fill(garbage), part = new Float32Array(n).fill(3);
      for (let c = 0; c < HD; c++) {
        out0[row(0, 1) + c] = 1; // running value of (i0, h1)
        out0[row(1, 1) + c] = 2; // running value of (i1, h1)
        part[row(0, 0) + c] = part[row(0, 1) + c] = garbage; // parts whose lse is -inf
      }
      const [pout, plse] = [s.put(out0), s.put(lse0)];
      ops.attentionMerge(d, pout, plse, s.put(part), s.put(partLse), tq, nh, HD, F32);
      const out = s.get(pout, n), lse = s.get(plse, nh * tq);
      assertEquals(lse[0], -Infinity);
      assert(Math.abs(lse[1] - 2.0) < 1e-6 && Math.abs(lse[2] - 0.5) < 1e-6, `lse ${lse}`);
      // logaddexp(1, 2.5), and the merged value (e^1 * 2 + e^2.5 * 3) / (e^1 + e^2.5), in float64.
      const merged = Math.log(Math.exp(1) + Math.exp(2.5));
      const value = (Math.exp(1) * 2 + Math.exp(2.5) * 3) / (Math.exp(1) + Math.exp(2.5));
      assert(Math.abs(lse[3] - merged) < 1e-6, `lse ${lse[3]} vs ${merged}`);
      for (let c = 0; c < HD; c++) {
        if (garbage === 0) assertEquals(out[row(0, 0) + c], 0); // both -inf: stays 0
        assertEquals(out[row(1, 0) + c], 3); // running -inf: takes the part
        assertEquals(out[row(0, 1) + c], 1); // part -inf: keeps the running value
        assert(Math.abs(out[row(1, 1) + c] - value) < 1e-6, `${out[row(1, 1) + c]} vs ${value}`);
      }
    });
  }
});

// ---------------------------------------------------------------------------------------------
// SwiGLU, add, convert

Deno.test(`${TEST_BACKEND}: swiglu forward and backward`, () => {
  const n = 777;
  for (const st of STORAGE) {
    withScope((s) => {
      const dt = st.dtype;
      const gate = data(n, 80, dt, 3), up = data(n, 81, dt), dout = data(n, 82, dt);
      const [pg, pu, pout] = [s.put(gate, dt), s.put(up, dt), s.zeros(n, dt)];
      ops.swigluForward(d, pout, pg, pu, n, dt);
      checkClose(`swiglu ${st.name}`, s.get(pout, n, dt), swigluRef(gate, up), st.tol);
      const [pdg, pdu] = [s.put(new Float32Array(n).fill(NaN), dt), s.zeros(n, dt)]; // overwritten
      ops.swigluBackward(d, pdg, pdu, s.put(dout, dt), pg, pu, n, dt);
      const g = swigluBackwardRef(dout, gate, up);
      checkClose(`swiglu dgate ${st.name}`, s.get(pdg, n, dt), g.dgate, st.tol);
      checkClose(`swiglu dup ${st.name}`, s.get(pdu, n, dt), g.dup, st.tol);
    });
  }
  if (!CPU) return;
  withScope((s) => {
    const m = 200;
    const gate = randn(m, 83, 3), up = randn(m, 84), r = randn(m, 85);
    const [pg, pu, pout, pdg, pdu] = [s.put(gate), s.put(up), s.zeros(m), s.zeros(m), s.zeros(m)];
    ops.swigluBackward(d, pdg, pdu, s.put(r), pg, pu, m, F32);
    const loss = () => (ops.swigluForward(d, pout, pg, pu, m, F32), dot64(s.get(pout, m), r));
    const fg = finiteDiff(gate, (x) => (s.set(pg, x), loss()));
    s.set(pg, gate);
    const fu = finiteDiff(up, (x) => (s.set(pu, x), loss()));
    checkClose("swiglu dgate vs FD", s.get(pdg, m), fg, FD_TOL);
    checkClose("swiglu dup vs FD", s.get(pdu, m), fu, FD_TOL);
  });
});

Deno.test(`${TEST_BACKEND}: add (in place too) and convert round exactly`, () => {
  withScope((s) => {
    const n = 1000;
    const a = randn(n, 90), b = randn(n, 91);
    const [pa, pb, pout] = [s.put(a), s.put(b), s.zeros(n)];
    ops.add(d, pout, pa, pb, n, F32);
    assertEquals(Array.from(s.get(pout, n)), Array.from(a, (x, i) => Math.fround(x + b[i])));
    ops.add(d, pa, pa, pb, n, F32); // out aliases a
    assertEquals(Array.from(s.get(pa, n)), Array.from(a, (x, i) => Math.fround(x + b[i])));
    const [ha, hb] = [bf16Round(a), bf16Round(b)];
    const [qa, qb, qout] = [s.put(ha, BF16), s.put(hb, BF16), s.zeros(n, BF16)];
    ops.add(d, qout, qa, qb, n, BF16);
    assertEquals(
      Array.from(s.get(qout, n, BF16)),
      Array.from(bf16Round(Array.from(ha, (x, i) => Math.fround(x + hb[i])))),
    );
    // f32 -> bf16 rounds to nearest even; bf16 -> f32 is exact; equal types copy.
    const p16 = s.zeros(n, BF16), p32 = s.zeros(n), p16b = s.zeros(n, BF16);
    ops.convert(d, p16, BF16, pb, F32, n);
    const bits = d.download(new Uint16Array(n), p16);
    assertEquals(Array.from(bits), Array.from(b, f32ToBf16Bits));
    ops.convert(d, p32, F32, p16, BF16, n);
    assertEquals(Array.from(s.get(p32, n)), Array.from(bits, bf16BitsToF32));
    ops.convert(d, p16b, BF16, p16, BF16, n);
    assertEquals(Array.from(d.download(new Uint16Array(n), p16b)), Array.from(bits));
  });
});

// ---------------------------------------------------------------------------------------------
// Cross entropy

Deno.test(`${TEST_BACKEND}: chunked cross entropy equals full log-softmax CE, and its backward`, () => {
  const [t, v] = [10, 250];
  const cuts = [0, 100, 200, 250]; // three chunks, the last one shorter
  const logits = randn(t * v, 100, 3);
  const labels = [5, -1, 99, 100, 249, 0, -100, 150, 200, 42];
  const valid = labels.filter((l) => l >= 0).length;
  const scale = 1 / valid;
  const chunkOf = (x: ArrayLike<number>, c: number) => {
    const [v0, vc] = [cuts[c], cuts[c + 1] - cuts[c]];
    return Float32Array.from(
      { length: t * vc },
      (_, i) => x[Math.floor(i / vc) * v + v0 + (i % vc)],
    );
  };
  withScope((s) => {
    const plabels = s.i32(labels);
    const pm = s.zeros(t), ps = s.zeros(t), pt = s.zeros(t), ploss = s.zeros(t), plse = s.zeros(t);
    const chunks = cuts.slice(0, -1).map((_, c) => s.put(chunkOf(logits, c)));
    const forward = (x?: Float32Array) => {
      s.set(pm, new Float32Array(t).fill(-Infinity));
      s.set(ps, new Float32Array(t));
      chunks.forEach((p, c) => {
        if (x) s.set(p, chunkOf(x, c));
        ops.ceChunkForward(d, pm, ps, pt, p, plabels, t, cuts[c + 1] - cuts[c], cuts[c]);
      });
      ops.ceFinalize(d, ploss, plse, pm, ps, pt, plabels, t);
      return s.get(ploss, t);
    };
    const loss = forward();
    const ref = crossEntropyRef(logits, labels, t, v);
    checkClose("cross entropy loss", loss, ref.loss, 1e-5);
    checkClose("cross entropy lse", s.get(plse, t), ref.lse, 1e-5);
    labels.forEach((l, i) => l < 0 && assertEquals(loss[i], 0, "ignored label: loss 0"));
    chunks.forEach((p, c) =>
      ops.ceChunkBackward(d, p, plse, plabels, t, cuts[c + 1] - cuts[c], cuts[c], scale)
    );
    const dl = new Float32Array(t * v);
    chunks.forEach((p, c) => {
      const [v0, vc] = [cuts[c], cuts[c + 1] - cuts[c]];
      const g = s.get(p, t * vc);
      for (let i = 0; i < t * vc; i++) dl[Math.floor(i / vc) * v + v0 + (i % vc)] = g[i];
    });
    checkClose(
      "cross entropy backward",
      dl,
      crossEntropyBackwardRef(logits, labels, t, v, scale),
      1e-5,
    );
    labels.forEach((l, i) => {
      if (l < 0) assert(dl.subarray(i * v, (i + 1) * v).every((x) => x === 0), "ignored row is 0");
    });
    if (!CPU) return;
    // Most entries of this gradient are small (softmax ~ 1/V times scale) while L ~ 1, so the fp32
    // roundoff term u |L| / eps dominates: a larger step (2^-5) keeps it ~1e-4; the softmax is
    // smooth enough that the truncation term stays smaller.
    const fd = finiteDiff(
      logits,
      (x) => scale * forward(x).reduce((acc, y) => acc + y, 0),
      2 ** -5,
    );
    checkClose("cross entropy backward vs FD", dl, fd, FD_TOL);
  });
});

// ---------------------------------------------------------------------------------------------
// Reductions and AdamW

Deno.test(`${TEST_BACKEND}: sum and sum_squares add into the accumulator`, () => {
  withScope((s) => {
    const n = 150001; // several blocks of the CPU reduction
    const x = randn(n, 110);
    const [px, psum, psq] = [s.put(x), s.put([1.5]), s.put([1.5])];
    ops.sum(d, psum, px, n);
    ops.sumSquares(d, psq, px, n);
    const sum = x.reduce((acc, y) => acc + y, 0), sq = dot64(x, x);
    checkClose("sum", s.get(psum, 1), [1.5 + sum], 1e-5);
    checkClose("sum_squares", s.get(psq, 1), [1.5 + sq], 1e-6);
  });
});

Deno.test(`${TEST_BACKEND}: adamw matches torch.optim.AdamW over 3 steps, with a bf16 copy`, () => {
  withScope((s) => {
    const n = 300;
    const hp = { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, gradScale: 0.5 };
    const p0 = randn(n, 120);
    const st = { param: Float64Array.from(p0), m: new Float64Array(n), v: new Float64Array(n) };
    const [pp, pm, pv, pcopy] = [s.put(p0), s.zeros(n), s.zeros(n), s.zeros(n, BF16)];
    for (let step = 1; step <= 3; step++) {
      const g = randn(n, 120 + step, step);
      const pg = s.put(g);
      // The first step without a copy (copy = null), the others with one.
      ops.adamw(d, pp, pg, pm, pv, n, { ...hp, step }, step === 1 ? null : pcopy, BF16);
      adamwRef(st, g, { ...hp, step });
      const param = s.get(pp, n);
      checkClose("adamw param", param, st.param, 1e-5);
      checkClose("adamw m", s.get(pm, n), st.m, 1e-5);
      checkClose("adamw v", s.get(pv, n), st.v, 1e-5);
      const copy = d.download(new Uint16Array(n), pcopy);
      const want = step === 1 ? new Array(n).fill(0) : Array.from(param, f32ToBf16Bits);
      assertEquals(Array.from(copy), want, `bf16 copy at step ${step}`);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Error paths

function expectInvalid(fn: () => void, ...parts: string[]): void {
  const e = assertThrows(fn, DistflashError);
  assertEquals(e.status, DfStatus.invalid, e.message);
  for (const p of parts) assert(e.message.includes(p), `"${e.message}" should mention ${p}`);
}

Deno.test(`${TEST_BACKEND}: bad arguments are DistflashErrors naming the argument`, () => {
  withScope((s) => {
    const [t, h] = [4, 8];
    const x = s.zeros(t * h), w = s.zeros(h), out = s.zeros(t * h), rstd = s.zeros(t);
    expectInvalid(
      () => ops.rmsnormForward(d, out, rstd, x, w, t, h, 1e-5, 7 as DType),
      "df_rmsnorm_forward",
      "'dtype'",
    );
    const a = shape(4, 4, 4, 3, 0, 0, F32);
    const q = s.zeros(4 * 4 * HD), kv = s.zeros(4 * 3 * HD), lse = s.zeros(16);
    expectInvalid(
      () => ops.attentionForward(d, q, lse, q, kv, kv, a),
      "df_attention_forward",
      "'nkv'",
    );
    const ids = s.i32([0, 3, 99, 2]);
    const table = s.zeros(50 * h);
    expectInvalid(
      () => ops.embeddingForward(d, out, table, ids, 4, 50, h, F32),
      "df_embedding_forward",
      "ids[2]", // the first bad index
    );
    const ga = {
      transA: false,
      transB: false,
      m: 4,
      n: 4,
      k: 8,
      a: x,
      b: x,
      c: out,
      abType: F32,
      cType: F32,
    };
    expectInvalid(() => ops.gemm(d, { ...ga, lda: 7, ldb: 4, ldc: 4 }), "df_gemm", "'lda'");
    expectInvalid(() => ops.gemm(d, { ...ga, lda: 8, ldb: 3, ldc: 4 }), "df_gemm", "'ldb'");
    expectInvalid(
      () => ops.gemm(d, { ...ga, lda: 8, ldb: 4, ldc: 4, cType: 2 as DType }),
      "df_gemm",
      "'c_dtype'",
    );
    expectInvalid(() => ops.rope(d, x, ids, w, t, 1, 7, false, F32), "df_rope", "'hd'");
    // A range that runs past the allocation.
    expectInvalid(() => ops.add(d, out, x, w, t * h, F32), "df_add", "'b'", "not inside a live");
  });
});

Deno.test({
  name: `${TEST_BACKEND}: observed errors (DISTFLASH_TEST_VERBOSE=1 prints them)`,
  ignore: Deno.env.get("DISTFLASH_TEST_VERBOSE") !== "1",
  fn: () => {
    for (const [name, e] of [...observed].sort()) {
      console.log(`${name.padEnd(48)} ${e.toExponential(2)}`);
    }
  },
});

Deno.test(`${TEST_BACKEND}: fillNormal draws N(mean, std); a slice is the same whoever draws it`, () => {
  withScope((s) => {
    // Moments of n = 2^20 draws. The sample mean of N(0, 1) has standard error 1/sqrt(n) ≈ 1e-3,
    // the sample variance sqrt(2/n) ≈ 1.4e-3, the fraction within one sigma (p = 0.6827)
    // sqrt(p(1-p)/n) ≈ 4.5e-4: the bounds are five standard errors.
    const n = 1 << 20, std = 0.02;
    const out = s.alloc(4 * n).ptr;
    fillNormal(d, out, n, 42n, 0, 3, std);
    const x = s.get(out, n);
    let sum = 0, sq = 0, within = 0;
    for (const v of x) {
      const z = (v - 3) / std;
      sum += z, sq += z * z, within += Math.abs(z) < 1 ? 1 : 0;
    }
    assertLess(Math.abs(sum / n), 5e-3, "mean");
    assertLess(Math.abs(sq / n - 1), 7e-3, "variance");
    assertLess(Math.abs(within / n - 0.6827), 2.3e-3, "mass within one sigma");
    // Elements [700, 1000) drawn on their own equal the same elements of the whole tensor.
    const tail = s.alloc(4 * 300).ptr;
    fillNormal(d, tail, 300, 42n, 700, 3, std);
    assertEquals(Array.from(s.get(tail, 300)), Array.from(x.subarray(700, 1000)));
    // Another seed gives other values; std 0 gives the mean exactly.
    fillNormal(d, tail, 300, 43n, 700, 3, std);
    assert(s.get(tail, 300).some((v, i) => v !== x[700 + i]), "the seed changes the draws");
    fillNormal(d, tail, 300, 43n, 0, 1, 0);
    assert(s.get(tail, 300).every((v) => v === 1), "std 0 gives the mean");
    if (!CPU) {
      // Both backends hash the same integers; only the fp32 log/cos/sqrt may differ by an ulp or so.
      const cpu = Device.open("cpu");
      const buf = cpu.alloc(4 * n);
      try {
        fillNormal(cpu, buf.ptr, n, 42n, 0, 3, std);
        const ref = cpu.download(new Float32Array(n), buf.ptr);
        let worst = 0;
        for (let i = 0; i < n; i++) worst = Math.max(worst, Math.abs(ref[i] - x[i]));
        assertLess(worst, 1e-4 * std, "CUDA and CPU draws agree"); // a wrong hash would differ by ~std
      } finally {
        buf.free();
        cpu.close();
      }
    }
  });
});

Deno.test(`${TEST_BACKEND}: copy2d moves a column block between row pitches`, () => {
  withScope((s) => {
    // A [5, 6] fp32 matrix; columns 2..4 out into a contiguous [5, 3] one, and back into zeros.
    const a = Float32Array.from({ length: 30 }, (_, i) => i + 1);
    const src = s.put(a), block = s.zeros(15), back = s.zeros(30);
    d.copy2d(block, 12, offset(src, 2), 24, 12, 5);
    const want = Array.from({ length: 15 }, (_, i) => a[Math.floor(i / 3) * 6 + 2 + (i % 3)]);
    assertEquals(Array.from(s.get(block, 15)), want);
    d.copy2d(offset(back, 2), 24, block, 12, 12, 5);
    const got = s.get(back, 30);
    for (let i = 0; i < 30; i++) assertEquals(got[i], i % 6 >= 2 && i % 6 < 5 ? a[i] : 0, `${i}`);
    expectInvalid(() => d.copy2d(block, 8, src, 24, 12, 5), "df_memcpy_2d", "pitch");
    expectInvalid(() => d.copy2d(back, 12, offset(src, 2), 24, 12, 6), "df_memcpy_2d", "src");
  });
});
