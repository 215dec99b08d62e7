/**
 * Document-masked attention (df_attention_forward_docs / df_attention_backward_docs) on the backend
 * under test, against a float64 reference written here that loops over (query, key) pairs and
 * applies the rule directly: key s is visible to query p iff s <= p and no document starts in
 * (s, p]. Also: one document is today's causal result bit for bit, and every document of a packed
 * sequence gets exactly what causal attention over that document alone gives. With Mistral's sliding
 * window W (the `window` argument), the reference adds p - s < W (transformers' sliding_window_overlay:
 * kv_idx > q_idx - sliding_window), alone and with documents.
 *
 * Tolerances as in tests/ops.test.ts (||got - ref|| / ||ref||): fp32 storage 1e-5 (a few hundred
 * fp32 terms per output, unit roundoff 6e-8), bf16 storage 1e-2 (inputs already bf16-rounded, a few
 * bf16 roundings of the output at 2^-9 each), lse 1e-5 (computed and stored in fp32).
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
import type { DevicePtr } from "../src/runtime/device.ts";
import * as ops from "../src/runtime/ops.ts";
import { DType } from "../src/runtime/ops.ts";
import { bf16BitsToF32, f32ToBf16Bits } from "../src/io/dtype.ts";
import { DfStatus, DistflashError } from "../ffi/unwrap.ts";

const d = testDevice();
const { f32: F32, bf16: BF16 } = DType;
const STORAGE = [
  { name: "f32", dtype: F32, tol: 1e-5 },
  { name: "bf16", dtype: BF16, tol: 1e-2 },
] as const;
const HD = 16;
const SCALE = 1 / Math.sqrt(HD);

// ---------------------------------------------------------------------------------------------
// Device scope and data

const withScope = (fn: (s: DeviceScope) => void) => withDeviceScope(d, fn);

function data(n: number, seed: number, dtype: DType): Float32Array {
  const x = randn(n, seed);
  return dtype === BF16 ? Float32Array.from(x, (v) => bf16BitsToF32(f32ToBf16Bits(v))) : x;
}

function checkClose(name: string, got: ArrayLike<number>, want: ArrayLike<number>, tol: number) {
  assertLess(relError(got, want), tol, `${TEST_BACKEND} ${name}: rel error`);
}

function assertBitEqual(name: string, got: Float32Array, want: Float32Array) {
  assertEquals(got.length, want.length, `${name}: length`);
  for (let i = 0; i < want.length; i++) {
    if (!Object.is(got[i], want[i])) {
      throw new Error(
        `${TEST_BACKEND} ${name}: element ${i} is ${got[i]}, causal gives ${want[i]}`,
      );
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Float64 reference: the rule applied per (query, key) pair

interface Pair {
  tq: number;
  tk: number;
  nh: number;
  nkv: number;
  qPos0: number;
  kPos0: number;
}

/** Key at global position s is visible to the query at p (window 0: no sliding window). */
function visible(starts: number[], p: number, s: number, window = 0): boolean {
  return s <= p && !starts.some((b) => s < b && b <= p) && (window === 0 || p - s < window);
}

/** Probabilities of query i, head h over its visible keys (null: it sees none). */
function probs(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  a: Pair,
  starts: number[],
  i: number,
  h: number,
  window = 0,
) {
  const g = Math.floor(h / (a.nh / a.nkv));
  const keys: number[] = [], scores: number[] = [];
  for (let j = 0; j < a.tk; j++) {
    if (!visible(starts, a.qPos0 + i, a.kPos0 + j, window)) continue;
    let dot = 0;
    for (let c = 0; c < HD; c++) dot += q[(i * a.nh + h) * HD + c] * k[(j * a.nkv + g) * HD + c];
    keys.push(j);
    scores.push(SCALE * dot);
  }
  if (!keys.length) return null;
  const mx = Math.max(...scores);
  const e = scores.map((x) => Math.exp(x - mx));
  const z = e.reduce((acc, x) => acc + x, 0);
  return { g, keys, p: e.map((x) => x / z), lse: mx + Math.log(z) };
}

/** out [tq, nh, HD], lse [nh, tq] and the gradients of sum(dout * out). */
function reference(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  dout: ArrayLike<number>,
  a: Pair,
  starts: number[],
  window = 0,
) {
  const out = new Float64Array(a.tq * a.nh * HD), lse = new Float64Array(a.nh * a.tq);
  const dq = new Float64Array(a.tq * a.nh * HD);
  const dk = new Float64Array(a.tk * a.nkv * HD), dv = new Float64Array(a.tk * a.nkv * HD);
  for (let i = 0; i < a.tq; i++) {
    for (let h = 0; h < a.nh; h++) {
      const pr = probs(q, k, a, starts, i, h, window);
      if (!pr) {
        lse[h * a.tq + i] = -Infinity;
        continue;
      }
      lse[h * a.tq + i] = pr.lse;
      const qo = (i * a.nh + h) * HD;
      const dp = pr.keys.map((j) => {
        let acc = 0;
        for (let c = 0; c < HD; c++) acc += dout[qo + c] * v[(j * a.nkv + pr.g) * HD + c];
        return acc;
      });
      const mean = pr.p.reduce((acc, p, n) => acc + p * dp[n], 0);
      pr.keys.forEach((j, n) => {
        const ko = (j * a.nkv + pr.g) * HD, ds = pr.p[n] * (dp[n] - mean);
        for (let c = 0; c < HD; c++) {
          out[qo + c] += pr.p[n] * v[ko + c];
          dq[qo + c] += SCALE * ds * k[ko + c];
          dk[ko + c] += SCALE * ds * q[qo + c];
          dv[ko + c] += pr.p[n] * dout[qo + c];
        }
      });
    }
  }
  return { out, lse, dq, dk, dv };
}

// ---------------------------------------------------------------------------------------------
// Running the ops

function shapeOf(a: Pair, dtype: DType, docs?: ops.AttentionDocuments): ops.AttentionShape {
  return { ...a, hd: HD, scale: SCALE, dtype, docs };
}

/** Forward then backward of one block pair (its own out, lse as the final ones). */
function run(
  s: DeviceScope,
  a: Pair,
  dtype: DType,
  docs: ops.AttentionDocuments | undefined,
  x: { q: Float32Array; k: Float32Array; v: Float32Array; dout: Float32Array },
) {
  const nq = a.tq * a.nh * HD, nk = a.tk * a.nkv * HD;
  const shape = shapeOf(a, dtype, docs);
  const [pq, pk, pv] = [s.put(x.q, dtype), s.put(x.k, dtype), s.put(x.v, dtype)];
  // NaN-filled outputs: the op must write every element (zeros where a query sees nothing).
  const pout = s.put(new Float32Array(nq).fill(NaN), dtype);
  const plse = s.put(new Float32Array(a.nh * a.tq).fill(NaN));
  ops.attentionForward(d, pout, plse, pq, pk, pv, shape);
  const [dq, dk, dv] = [s.zeros(nq), s.zeros(nk), s.zeros(nk)];
  ops.attentionBackward(d, dq, dk, dv, s.put(x.dout, dtype), pq, pk, pv, pout, plse, shape);
  return {
    out: s.get(pout, nq, dtype),
    lse: s.get(plse, a.nh * a.tq),
    dq: s.get(dq, nq),
    dk: s.get(dk, nk),
    dv: s.get(dv, nk),
  };
}

function inputs(a: Pair, dtype: DType, seed: number) {
  const nq = a.tq * a.nh * HD, nk = a.tk * a.nkv * HD;
  return {
    q: data(nq, seed, dtype),
    k: data(nk, seed + 1, dtype),
    v: data(nk, seed + 2, dtype),
    dout: data(nq, seed + 3, dtype),
  };
}

// A sequence of 48 tokens: one-token documents (3, 4), documents shorter than a kernel tile, one
// (5 .. 16) crossing the block boundary at 16, one (31 .. 43) crossing 32, and a last one.
const STARTS = [0, 3, 4, 5, 17, 30, 31, 44];

const PAIRS: { what: string; tq: number; tk: number; qPos0: number; kPos0: number }[] = [
  { what: "diagonal, whole sequence", tq: 48, tk: 48, qPos0: 0, kPos0: 0 },
  { what: "diagonal block", tq: 16, tk: 16, qPos0: 16, kPos0: 16 },
  {
    what: "off-diagonal, Tq != Tk, a document across the boundary",
    tq: 20,
    tk: 12,
    qPos0: 12,
    kPos0: 0,
  },
  { what: "off-diagonal, keys overlapping the queries", tq: 24, tk: 22, qPos0: 24, kPos0: 10 },
  { what: "some rows see no key", tq: 8, tk: 42, qPos0: 40, kPos0: 0 },
  { what: "no row sees a key", tq: 16, tk: 16, qPos0: 32, kPos0: 0 },
];

/**
 * One block pair through the _docs entries against the float64 reference: rows that see nothing
 * exactly (out 0, lse -inf), the rest within the storage's tolerance. Returns the largest relative
 * error seen (out, lse and the gradients).
 */
function checkAgainstFloat64(
  p: { what: string; tq: number; tk: number; qPos0: number; kPos0: number },
  nh: number,
  nkv: number,
  st: (typeof STORAGE)[number],
  starts: number[],
  window = 0,
): number {
  let worst = 0;
  withScope((s) => {
    const a: Pair = { tq: p.tq, tk: p.tk, nh, nkv, qPos0: p.qPos0, kPos0: p.kPos0 };
    const x = inputs(a, st.dtype, 11);
    const docs = { ...s.docs(starts), window };
    const got = run(s, a, st.dtype, docs, x);
    const ref = reference(x.q, x.k, x.v, x.dout, a, starts, window);
    const name = `${p.what} nh=${nh} nkv=${nkv} ${st.name} window=${window}`;
    let empty = 0;
    for (let h = 0; h < nh; h++) {
      for (let i = 0; i < a.tq; i++) {
        if (ref.lse[h * a.tq + i] !== -Infinity) continue;
        empty++;
        assertEquals(
          got.lse[h * a.tq + i],
          -Infinity,
          `${name}: lse of a row seeing nothing`,
        );
        for (let c = 0; c < HD; c++) {
          assertEquals(
            got.out[(i * nh + h) * HD + c],
            0,
            `${name}: out of a row seeing nothing`,
          );
        }
      }
    }
    if (empty === nh * a.tq) {
      // Nothing visible: every output and gradient is exactly zero.
      for (const g of [got.out, got.dq, got.dk, got.dv]) {
        assert(g.every((e) => e === 0), name);
      }
      return;
    }
    const finite = (l: ArrayLike<number>) => Array.from(l).filter((e) => e !== -Infinity);
    checkClose(`${name} lse`, finite(got.lse), finite(ref.lse), 1e-5);
    checkClose(`${name} out`, got.out, ref.out, st.tol);
    checkClose(`${name} dq`, got.dq, ref.dq, st.tol);
    checkClose(`${name} dk`, got.dk, ref.dk, st.tol);
    checkClose(`${name} dv`, got.dv, ref.dv, st.tol);
    const errors = [relError(got.out, ref.out), relError(got.dq, ref.dq)];
    errors.push(relError(got.dk, ref.dk), relError(got.dv, ref.dv));
    if (st.dtype === F32) worst = Math.max(worst, ...errors);
  });
  return worst;
}

Deno.test(`${TEST_BACKEND}: document attention forward and backward against float64, MHA/GQA/MQA`, () => {
  for (const [nh, nkv] of [[4, 4], [4, 2], [6, 1]]) {
    for (const p of PAIRS) {
      for (const st of STORAGE) checkAgainstFloat64(p, nh, nkv, st, STARTS);
    }
  }
});

/**
 * Mistral's sliding window through the same entries: a window of 1 (each query sees itself), one
 * shorter than a kernel tile, one near a block's length, one longer than the sequence (no effect),
 * each alone (the single start 0) and with the packed documents, on every block pair above.
 */
Deno.test(`${TEST_BACKEND}: sliding window (alone and with documents) against float64`, () => {
  let worst = 0;
  for (const window of [1, 5, 16, 100]) {
    for (const starts of [[0], STARTS]) {
      for (const [nh, nkv] of [[4, 4], [4, 2]]) {
        for (const p of PAIRS) {
          for (const st of STORAGE) {
            worst = Math.max(worst, checkAgainstFloat64(p, nh, nkv, st, starts, window));
          }
        }
      }
    }
  }
  console.log(
    `${TEST_BACKEND} windowed attention, f32: largest relative error ${worst.toExponential(2)}`,
  );
});

/**
 * DistAttn's use: the sequence cut into query and key blocks (uneven, Tq != Tk); each query block
 * merges the partial results of every key block by lse, and the backward of every block pair runs
 * with the merged out and lse. Both must equal document attention over the whole sequence.
 */
Deno.test(`${TEST_BACKEND}: document attention merged over blocks and split backward equal the whole`, () => {
  const T = 48, qCuts = [0, 12, 30, 48], kCuts = [0, 10, 26, 33, 48], nh = 4, nkv = 2;
  // Without a window, and with one (7) shorter than every block: windowed blocks merge the same way.
  for (const window of [0, 7]) {
    withScope((s) => {
      const whole: Pair = { tq: T, tk: T, nh, nkv, qPos0: 0, kPos0: 0 };
      const x = inputs(whole, F32, 21);
      const ref = reference(x.q, x.k, x.v, x.dout, whole, STARTS, window);
      const docs = { ...s.docs(STARTS), window };
      const row = nh * HD, kvRow = nkv * HD;
      const [pq, pk, pv, pdout] = [s.put(x.q), s.put(x.k), s.put(x.v), s.put(x.dout)];
      const blocks = (cuts: number[]) => cuts.slice(1).map((end, b) => [cuts[b], end]);
      const at = (ptr: DevicePtr, elements: number) => ptr + BigInt(elements * 4);
      const pair = (q0: number, q1: number, k0: number, k1: number) =>
        shapeOf({ tq: q1 - q0, tk: k1 - k0, nh, nkv, qPos0: q0, kPos0: k0 }, F32, docs);
      // lse of a block is [nh, tq]: the merge works per query block on its own buffers.
      const blockOut: DevicePtr[] = [], blockLse: DevicePtr[] = [];
      for (const [q0, q1] of blocks(qCuts)) {
        const tq = q1 - q0;
        const bOut = s.zeros(tq * row), bLse = s.put(new Float32Array(nh * tq).fill(-Infinity));
        const part = s.zeros(tq * row), partLse = s.zeros(nh * tq);
        for (const [k0, k1] of blocks(kCuts)) {
          const a = pair(q0, q1, k0, k1);
          ops.attentionForward(
            d,
            part,
            partLse,
            at(pq, q0 * row),
            at(pk, k0 * kvRow),
            at(pv, k0 * kvRow),
            a,
          );
          ops.attentionMerge(d, bOut, bLse, part, partLse, tq, nh, HD, F32);
        }
        blockOut.push(bOut);
        blockLse.push(bLse);
      }
      const gotOut = new Float32Array(T * row), gotLse = new Float32Array(nh * T);
      blocks(qCuts).forEach(([q0, q1], b) => {
        const tq = q1 - q0;
        gotOut.set(s.get(blockOut[b], tq * row), q0 * row);
        const l = s.get(blockLse[b], nh * tq);
        for (let h = 0; h < nh; h++) gotLse.set(l.subarray(h * tq, (h + 1) * tq), h * T + q0);
      });
      checkClose("merged out", gotOut, ref.out, 1e-5);
      checkClose("merged lse", gotLse, ref.lse, 1e-5);

      const [dq, dk, dv] = [s.zeros(T * row), s.zeros(T * kvRow), s.zeros(T * kvRow)];
      blocks(qCuts).forEach(([q0, q1], b) => {
        for (const [k0, k1] of blocks(kCuts)) {
          ops.attentionBackward(
            d,
            at(dq, q0 * row),
            at(dk, k0 * kvRow),
            at(dv, k0 * kvRow),
            at(pdout, q0 * row),
            at(pq, q0 * row),
            at(pk, k0 * kvRow),
            at(pv, k0 * kvRow),
            blockOut[b],
            blockLse[b],
            pair(q0, q1, k0, k1),
          );
        }
      });
      checkClose("split dq", s.get(dq, T * row), ref.dq, 1e-5);
      checkClose("split dk", s.get(dk, T * kvRow), ref.dk, 1e-5);
      checkClose("split dv", s.get(dv, T * kvRow), ref.dv, 1e-5);
    });
  }
});

Deno.test(`${TEST_BACKEND}: one document (and no documents) is causal attention bit for bit`, () => {
  // On CUDA, bf16 causal attention takes the tensor-core path and documents the fp32-math kernels:
  // equal only within tolerance there, so bit equality is asserted for fp32 (and bf16 on the CPU).
  const storages = TEST_BACKEND === "cpu" ? STORAGE : STORAGE.filter((st) => st.dtype === F32);
  for (const st of storages) {
    for (const p of PAIRS.slice(1, 4)) {
      withScope((s) => {
        const a: Pair = { tq: p.tq, tk: p.tk, nh: 4, nkv: 2, qPos0: p.qPos0, kPos0: p.kPos0 };
        const x = inputs(a, st.dtype, 31);
        const causal = run(s, a, st.dtype, undefined, x);
        for (
          const [what, docs] of [["[0]", s.docs([0])], ["none", { starts: 0n, count: 0 }]] as const
        ) {
          const got = run(s, a, st.dtype, docs, x);
          for (const key of ["out", "lse", "dq", "dk", "dv"] as const) {
            assertBitEqual(`${p.what} ${st.name} docs ${what} ${key}`, got[key], causal[key]);
          }
        }
      });
    }
  }
});

/**
 * The semantics, checked without any reference of ours: each document of the packed sequence gets
 * exactly what plain causal attention over that document alone (positions from 0) gives, forward
 * and backward.
 */
Deno.test(`${TEST_BACKEND}: each packed document equals causal attention on it alone`, () => {
  const T = 48, nh = 4, nkv = 2, row = nh * HD, kvRow = nkv * HD;
  withScope((s) => {
    const whole: Pair = { tq: T, tk: T, nh, nkv, qPos0: 0, kPos0: 0 };
    const x = inputs(whole, F32, 41);
    const packed = run(s, whole, F32, s.docs(STARTS), x);
    const ends = [...STARTS.slice(1), T];
    STARTS.forEach((b0, n) => {
      const b1 = ends[n], len = b1 - b0;
      const one: Pair = { tq: len, tk: len, nh, nkv, qPos0: 0, kPos0: 0 };
      const alone = run(s, one, F32, undefined, {
        q: x.q.slice(b0 * row, b1 * row),
        k: x.k.slice(b0 * kvRow, b1 * kvRow),
        v: x.v.slice(b0 * kvRow, b1 * kvRow),
        dout: x.dout.slice(b0 * row, b1 * row),
      });
      const name = `document [${b0}, ${b1})`;
      checkClose(`${name} out`, packed.out.slice(b0 * row, b1 * row), alone.out, 1e-6);
      const lse = new Float32Array(nh * len);
      for (let h = 0; h < nh; h++) lse.set(packed.lse.subarray(h * T + b0, h * T + b1), h * len);
      checkClose(`${name} lse`, lse, alone.lse, 1e-6);
      checkClose(`${name} dq`, packed.dq.slice(b0 * row, b1 * row), alone.dq, 1e-6);
      checkClose(`${name} dk`, packed.dk.slice(b0 * kvRow, b1 * kvRow), alone.dk, 1e-6);
      checkClose(`${name} dv`, packed.dv.slice(b0 * kvRow, b1 * kvRow), alone.dv, 1e-6);
    });
  });
});

Deno.test(`${TEST_BACKEND}: bad document starts (or window) are DistflashErrors naming the argument`, () => {
  withScope((s) => {
    const a = shapeOf({ tq: 4, tk: 4, nh: 2, nkv: 2, qPos0: 0, kPos0: 0 }, F32);
    const q = s.zeros(4 * 2 * HD), lse = s.zeros(8), out = s.zeros(4 * 2 * HD);
    const expectInvalid = (docs: ops.AttentionDocuments, ...parts: string[]) => {
      const e = assertThrows(
        () => ops.attentionForward(d, out, lse, q, q, q, { ...a, docs }),
        DistflashError,
      );
      assertEquals(e.status, DfStatus.invalid, e.message);
      for (const p of [...parts, "df_attention_forward_docs"]) {
        assert(e.message.includes(p), `"${e.message}" should mention ${p}`);
      }
    };
    expectInvalid({ starts: 0n, count: -1 }, "'n_docs'");
    expectInvalid({ starts: 0n, count: 0, window: -1 }, "'window'");
    expectInvalid({ starts: 0n, count: 2 }, "doc_starts");
    const starts = s.docs([0, 2]);
    expectInvalid({ starts: starts.starts, count: 3 }, "doc_starts"); // past its allocation
    if (TEST_BACKEND === "cpu") { // CUDA cannot read device memory to check the values
      expectInvalid(s.docs([1, 2]), "doc_starts[0]");
      expectInvalid(s.docs([0, 3, 3]), "ascend");
    }
  });
});
