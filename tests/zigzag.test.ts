/**
 * Zigzag sequence parallelism equals single-rank attention: P in-process ranks each holding chunks
 * r and 2P-1-r; forward (O, LSE) and backward (dQ, dK, dV), MHA and GQA, fp32 (1e-5, as DistAttn);
 * also run in head groups (HeadGroupedAttention, --attention-head-groups).
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
import { ZigzagAttention, zigzagChunks } from "../src/parallel/zigzag.ts";
import { HeadGroupedAttention } from "../src/parallel/sequence_attention.ts";
import { LocalGroup } from "../src/comm/local_comm.ts";
import { presetConfig } from "../src/model/presets.ts";
import { DType } from "../src/runtime/ops.ts";

async function check(P: number, nkv: number, groups = 1) {
  const d = testDevice();
  const nh = 4, hd = 16, h = 5, T = 2 * P * h;
  const cfg = { ...presetConfig("debug-tiny"), numHeads: nh, numKvHeads: nkv, headDim: hd };
  const rq = nh * hd, rkv = nkv * hd;
  const q = randn(T * rq, 11 + P), k = randn(T * rkv, 12 + P), v = randn(T * rkv, 13 + P);
  const dout = randn(T * rq, 14 + P);
  const want = singleRankAttention(d, { q, k, v, dout }, nh, nkv, hd);
  // A rank's rows: chunk r then chunk 2P-1-r.
  const take = (x: Float32Array, row: number, r: number) => {
    const [a, b] = zigzagChunks(r, P);
    const out = new Float32Array(2 * h * row);
    out.set(x.subarray(a * h * row, (a + 1) * h * row), 0);
    out.set(x.subarray(b * h * row, (b + 1) * h * row), h * row);
    return out;
  };
  const put = (dst: Float32Array, part: Float32Array, row: number, r: number) => {
    const [a, b] = zigzagChunks(r, P);
    dst.set(part.subarray(0, h * row), a * h * row);
    dst.set(part.subarray(h * row), b * h * row);
  };
  const got = emptyAttentionResult(q.length, k.length, nh * T);
  const group = new LocalGroup(d, P);
  const results = await runSequenceParallel(
    d,
    group.members().map((comm) => {
      const r = comm.rank;
      const groupCfg = { ...cfg, numHeads: nh / groups, numKvHeads: nkv / groups };
      const attn = groups === 1
        ? new ZigzagAttention(d, cfg, 2 * h, DType.f32, comm)
        : new HeadGroupedAttention(
          d,
          cfg,
          2 * h,
          DType.f32,
          groups,
          new ZigzagAttention(d, groupCfg, 2 * h, DType.f32, comm, 0n, false),
        );
      if (groups > 1) attn.allocate();
      return {
        attn,
        q: take(q, rq, r),
        k: take(k, rkv, r),
        v: take(v, rkv, r),
        dout: take(dout, rq, r),
        lseLen: nh * 2 * h,
      };
    }),
  );
  results.forEach((x, r) => {
    put(got.o, x.o, rq, r);
    put(got.dq, x.dq, rq, r);
    put(got.dk, x.dk, rkv, r);
    put(got.dv, x.dv, rkv, r);
    // LSE per rank is [group][chunk][head of the group][h].
    const gh = nh / groups;
    for (let g = 0; g < groups; g++) {
      zigzagChunks(r, P).forEach((c, i) => {
        for (let hh = 0; hh < gh; hh++) {
          const at = g * gh * 2 * h + (i * gh + hh) * h;
          got.lse.set(x.lse.subarray(at, at + h), (g * gh + hh) * T + c * h);
        }
      });
    }
  });
  return attentionErrors(got, want);
}

for (const P of [1, 2, 3, 4]) {
  for (const nkv of [4, 2]) {
    Deno.test(`zigzag P=${P} ${nkv === 4 ? "MHA" : "GQA"}: equals single-rank attention`, async () => {
      const errors = await check(P, nkv);
      for (const [key, err] of Object.entries(errors)) assertLess(err, 1e-5, `P=${P} ${key}`);
    });
  }
}

for (const [P, nkv, groups] of [[2, 4, 2], [2, 4, 4], [3, 2, 2]]) {
  Deno.test(`zigzag P=${P} ${nkv === 4 ? "MHA" : "GQA"} in ${groups} head groups: equals single-rank attention`, async () => {
    const errors = await check(P, nkv, groups);
    for (const [key, err] of Object.entries(errors)) assertLess(err, 1e-5, `P=${P} ${key}`);
  });
}
