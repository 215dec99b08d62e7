/**
 * DistAttn equals single-rank attention: P in-process ranks (LocalGroup) on the backend under
 * test, forward (O, LSE) and backward (dQ, dK, dV), MHA and GQA, balanced and not, overlapped and
 * not. fp32 throughout: the only differences are summation order and the log-sum-exp merge, so
 * 1e-5 relative error is the bound (the issue's), and it must not grow with P.
 */
import { assertLess } from "./assert.ts";
import {
  attentionErrors,
  emptyAttentionResult,
  randn,
  runSequenceParallel,
  singleRankAttention,
  testDevice,
} from "./_util.ts";
import { DistAttention } from "../src/parallel/distattn.ts";
import { LocalGroup } from "../src/comm/local_comm.ts";
import { presetConfig } from "../src/model/presets.ts";
import { DType } from "../src/runtime/ops.ts";

async function check(P: number, nkv: number, balanced: boolean, overlap: boolean) {
  const d = testDevice();
  const cfg = { ...presetConfig("debug-tiny"), numHeads: 4, numKvHeads: nkv, headDim: 16 };
  const S = 6, T = P * S, nh = 4, hd = 16;
  const q = randn(T * nh * hd, 1 + P),
    k = randn(T * nkv * hd, 2 + P),
    v = randn(T * nkv * hd, 3 + P);
  const dout = randn(T * nh * hd, 4 + P);
  const want = singleRankAttention(d, { q, k, v, dout }, nh, nkv, hd);
  // P ranks, each with its slice.
  const group = new LocalGroup(d, P);
  const qs = S * nh * hd, kvs = S * nkv * hd;
  const got = emptyAttentionResult(q.length, k.length, nh * T);
  const results = await runSequenceParallel(
    d,
    group.members().map((comm) => {
      const r = comm.rank;
      return {
        attn: new DistAttention(d, cfg, S, DType.f32, comm, { balanced, overlap }),
        q: q.slice(r * qs, (r + 1) * qs),
        k: k.slice(r * kvs, (r + 1) * kvs),
        v: v.slice(r * kvs, (r + 1) * kvs),
        dout: dout.slice(r * qs, (r + 1) * qs),
        lseLen: nh * S,
      };
    }),
  );
  results.forEach((x, r) => {
    got.o.set(x.o, r * qs);
    for (let h = 0; h < nh; h++) got.lse.set(x.lse.subarray(h * S, (h + 1) * S), h * T + r * S);
    got.dq.set(x.dq, r * qs);
    got.dk.set(x.dk, r * kvs);
    got.dv.set(x.dv, r * kvs);
  });
  return attentionErrors(got, want);
}

for (const P of [1, 2, 3, 4, 5, 8]) {
  for (const nkv of [4, 2]) {
    for (const [balanced, overlap] of [[true, true], [false, true], [true, false]]) {
      const name = `distattn P=${P} ${nkv === 4 ? "MHA" : "GQA"} ${
        balanced ? "balanced" : "unbalanced"
      }${overlap ? "" : " no-overlap"}`;
      Deno.test(`${name}: equals single-rank attention`, async () => {
        const errors = await check(P, nkv, balanced, overlap);
        for (const [key, err] of Object.entries(errors)) assertLess(err, 1e-5, `${name} ${key}`);
      });
    }
  }
}
