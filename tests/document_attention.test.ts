/**
 * Document-masked block pairs split into causal pieces (src/model/document_attention.ts): the
 * pieces against a brute-force enumeration of visible (query, key) pairs, and the split forward and
 * backward against the general document kernels (df_attention_forward_docs / _backward_docs, whose
 * own reference is a float64 loop in tests/attention_docs.test.ts) on the backend under test, for
 * random layouts: documents shorter than a kernel tile, one spanning the whole pair, BOS only at the
 * first position, queries whose document has no key in the key block, key blocks before, across and
 * after the query block; Mistral's sliding window with and without documents (on CUDA in bf16 the
 * window-cut pieces run the Hopper kernels' window on sm_90a). Backward adds into nonzero gradients.
 *
 * Tolerances: fp32 storage 1e-5 (both sides sum the same visible terms in fp32; the orders differ),
 * bf16 storage 1e-2 (on CUDA the pieces run the bf16 tensor-core kernels, the reference the fp32-math
 * kernels: a few bf16 roundings at 2^-9 each), lse 1e-5 (fp32 in both).
 */
import fc from "fast-check";
import { assert, assertEquals, assertLess } from "./assert.ts";
import { randn, relError, rng, TEST_BACKEND, testDevice, withDeviceScope } from "./_util.ts";
import type * as ops from "../src/runtime/ops.ts";
import { DType } from "../src/runtime/ops.ts";
import {
  attentionBackward,
  attentionForward,
  documentPieces,
  windowCuts,
} from "../src/model/document_attention.ts";
import { sees } from "../src/model/documents.ts";

const d = testDevice();

/** Random document starts over [0, L): mean length `mean`, the first at 0. */
function randomStarts(L: number, mean: number, seed: number): number[] {
  const r = rng(seed), starts = [0];
  for (let p = 1; p < L; p++) if (r() < 1 / mean) starts.push(p);
  return starts;
}

Deno.test("document pieces: every query once, and exactly its visible keys (brute force)", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 40 }), // sequence length
      fc.array(fc.integer({ min: 1, max: 39 }), { maxLength: 8 }), // extra document starts
      fc.nat(39),
      fc.integer({ min: 1, max: 40 }),
      fc.nat(39),
      fc.integer({ min: 1, max: 40 }),
      fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 45 })), // sliding window (0: none)
      (L, extra, qa, qn, ka, kn, window) => {
        const starts = [0, ...new Set(extra.filter((s) => s < L))].sort((a, b) => a - b);
        const q0 = Math.min(qa, L - 1), q1 = Math.min(q0 + qn, L);
        const k0 = Math.min(ka, L - 1), k1 = Math.min(k0 + kn, L);
        const pieces = documentPieces(starts, q0, q1, k0, k1, window);
        const owner = new Map<number, (typeof pieces)[number]>();
        for (const p of pieces) {
          assert(p.q0 < p.q1 && p.k0 <= p.k1, JSON.stringify(p));
          for (let x = p.q0; x < p.q1; x++) {
            assert(!owner.has(x), `query ${x} in two pieces`);
            owner.set(x, p);
          }
        }
        for (let x = q0; x < q1; x++) {
          const p = owner.get(x);
          assert(p, `query ${x} in no piece`);
          for (let s = k0; s < k1; s++) {
            // The piece's rule (s in its keys and s <= x, and x - s < window where the window cuts
            // the piece: it runs as a windowed pair then) is the document-and-window rule.
            const inWindow = !windowCuts(p, window) || x - s < window;
            const pieceSees = s >= p.k0 && s < p.k1 && s <= x && inWindow;
            assertEquals(pieceSees, sees(starts, x, s, window), `q ${x} k ${s} window ${window}`);
          }
        }
      },
    ),
    { numRuns: 400 },
  );
});

interface Case {
  what: string;
  L: number;
  starts: number[];
  q0: number;
  tq: number;
  k0: number;
  tk: number;
  /** Mistral's sliding window (absent: none). */
  window?: number;
}

const CASES: Case[] = [
  // A whole window's diagonal pair, documents shorter than a 64-query tile and longer.
  {
    what: "diagonal, short documents",
    L: 192,
    starts: randomStarts(192, 20, 1),
    q0: 0,
    tq: 192,
    k0: 0,
    tk: 192,
  },
  {
    what: "diagonal, long documents",
    L: 256,
    starts: [0, 70, 200],
    q0: 0,
    tq: 256,
    k0: 0,
    tk: 256,
  },
  // Off-diagonal pairs as DistAttn and the zigzag ring make them (keys before the queries).
  {
    what: "keys before the queries",
    L: 256,
    starts: [0, 40, 100, 170],
    q0: 128,
    tq: 128,
    k0: 0,
    tk: 128,
  },
  // A document begins inside the query block: its queries see no key of the earlier key block.
  { what: "queries without keys", L: 256, starts: [0, 150], q0: 128, tq: 128, k0: 0, tk: 128 },
  // One document over everything: the pair is a plain causal pair (the default kernels take it).
  { what: "one document (BOS only at 0)", L: 160, starts: [0], q0: 64, tq: 96, k0: 0, tk: 96 },
  // Tq != Tk and a key block that overlaps the query block.
  {
    what: "overlapping blocks",
    L: 200,
    starts: randomStarts(200, 30, 2),
    q0: 50,
    tq: 150,
    k0: 20,
    tk: 100,
  },
  // The sliding window: a windowed model without documents (the single start 0: each pair is one
  // windowed piece), on the diagonal and with keys before the queries (every row cut); with
  // documents, some pieces cut by the window and some not; a key block the window leaves out for
  // some documents' queries entirely.
  {
    what: "window, no documents, diagonal",
    L: 256,
    starts: [0],
    q0: 0,
    tq: 256,
    k0: 0,
    tk: 256,
    window: 70,
  },
  {
    what: "window, no documents, keys before",
    L: 320,
    starts: [0],
    q0: 192,
    tq: 128,
    k0: 64,
    tk: 128,
    window: 150,
  },
  {
    what: "window and documents",
    L: 256,
    starts: [0, 30, 150],
    q0: 0,
    tq: 256,
    k0: 0,
    tk: 256,
    window: 64,
  },
  {
    what: "window and documents, keys far before",
    L: 384,
    starts: [0, 200, 260],
    q0: 256,
    tq: 128,
    k0: 0,
    tk: 160,
    window: 120,
  },
];

for (const dtype of [DType.f32, DType.bf16]) {
  const name = dtype === DType.f32 ? "f32" : "bf16", tol = dtype === DType.f32 ? 1e-5 : 1e-2;
  for (const c of CASES) {
    Deno.test(`${TEST_BACKEND}: document pieces equal the document kernels (${name}, ${c.what})`, () => {
      const nh = 4, nkv = 2, hd = 64;
      const a: ops.AttentionShape = {
        tq: c.tq,
        tk: c.tk,
        nh,
        nkv,
        hd,
        qPos0: c.q0,
        kPos0: c.k0,
        scale: 1 / Math.sqrt(hd),
        dtype,
      };
      withDeviceScope(d, (s) => {
        const nq = c.tq * nh * hd, nk = c.tk * nkv * hd;
        const q = s.put(randn(nq, 1), dtype), k = s.put(randn(nk, 2), dtype);
        const v = s.put(randn(nk, 3), dtype), dout = s.put(randn(nq, 4), dtype);
        const docs = { ...s.docs(c.starts), host: c.starts, window: c.window };
        const run = (split: boolean) => {
          const general = { starts: docs.starts, count: docs.count, window: c.window };
          const shape = { ...a, docs: split ? docs : general };
          const out = s.zeros(nq, dtype), lse = s.zeros(nh * c.tq);
          // Nonzero gradients: backward adds.
          const dq = s.put(randn(nq, 5)), dk = s.put(randn(nk, 6)), dv = s.put(randn(nk, 7));
          attentionForward(d, out, lse, q, k, v, shape);
          attentionBackward(d, dq, dk, dv, dout, q, k, v, out, lse, shape);
          return {
            out: s.get(out, nq, dtype),
            lse: s.get(lse, nh * c.tq),
            dq: s.get(dq, nq),
            dk: s.get(dk, nk),
            dv: s.get(dv, nk),
          };
        };
        const got = run(true), want = run(false);
        // Rows that see no key: out 0 and lse -inf on both sides, exactly.
        for (let i = 0; i < want.lse.length; i++) {
          if (want.lse[i] === -Infinity) assertEquals(got.lse[i], -Infinity, `lse ${i}`);
        }
        const finite = (x: Float32Array) => x.map((v) => (Number.isFinite(v) ? v : 0));
        assertLess(relError(got.out, want.out), tol, "out");
        assertLess(relError(finite(got.lse), finite(want.lse)), 1e-5, "lse");
        for (const g of ["dq", "dk", "dv"] as const) {
          assertLess(relError(got[g], want[g]), tol, g);
        }
      });
    });
  }
}
