/**
 * Zigzag sequence parallelism equals single-rank attention: P in-process ranks each holding chunks
 * r and 2P-1-r; forward (O, LSE) and backward (dQ, dK, dV), MHA and GQA, fp32 (1e-5, as DistAttn).
 */
import { assertLess } from "./assert.ts";
import { attentionErrors, randn, singleRankAttention, testDevice } from "./_util.ts";
import { ZigzagAttention, zigzagChunks } from "../src/dist/zigzag.ts";
import { LocalGroup } from "../src/dist/local_comm.ts";
import { presetConfig } from "../src/model/config.ts";
import { DType } from "../src/runtime/ops.ts";
import type { Device } from "../src/runtime/device.ts";

function upload(d: Device, data: Float32Array) {
  const buf = d.alloc(data.length * 4);
  d.upload(buf.ptr, data);
  return buf;
}

async function check(P: number, nkv: number) {
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
  const got = {
    o: new Float32Array(q.length),
    lse: new Float32Array(nh * T),
    dq: new Float32Array(q.length),
    dk: new Float32Array(k.length),
    dv: new Float32Array(v.length),
  };
  const group = new LocalGroup(d, P);
  const ranks = group.members().map((comm) => {
    const r = comm.rank;
    const attn = new ZigzagAttention(d, cfg, 2 * h, DType.f32, comm);
    const mine = [take(q, rq, r), take(k, rkv, r), take(v, rkv, r), take(dout, rq, r)].map((x) =>
      upload(d, x)
    );
    const o = d.alloc(2 * h * rq * 4), lse = d.alloc(nh * 2 * h * 4);
    const grads = [d.alloc(2 * h * rq * 4), d.alloc(2 * h * rkv * 4), d.alloc(2 * h * rkv * 4)];
    for (const g of grads) d.memset(g.ptr, 0, g.bytes);
    return { r, attn, mine, o, lse, grads };
  });
  await Promise.all(
    ranks.map((x) =>
      x.attn.forward(x.o.ptr, x.lse.ptr, x.mine[0].ptr, x.mine[1].ptr, x.mine[2].ptr)
    ),
  );
  await Promise.all(
    ranks.map((x) =>
      x.attn.backward(
        x.grads[0].ptr,
        x.grads[1].ptr,
        x.grads[2].ptr,
        x.mine[3].ptr,
        x.mine[0].ptr,
        x.mine[1].ptr,
        x.mine[2].ptr,
        x.o.ptr,
        x.lse.ptr,
      )
    ),
  );
  for (const x of ranks) {
    put(got.o, d.download(new Float32Array(2 * h * rq), x.o.ptr), rq, x.r);
    put(got.dq, d.download(new Float32Array(2 * h * rq), x.grads[0].ptr), rq, x.r);
    put(got.dk, d.download(new Float32Array(2 * h * rkv), x.grads[1].ptr), rkv, x.r);
    put(got.dv, d.download(new Float32Array(2 * h * rkv), x.grads[2].ptr), rkv, x.r);
    const lse = d.download(new Float32Array(nh * 2 * h), x.lse.ptr); // [chunk][head][h]
    zigzagChunks(x.r, P).forEach((c, i) => {
      for (let hh = 0; hh < nh; hh++) {
        got.lse.set(lse.subarray((i * nh + hh) * h, (i * nh + hh + 1) * h), hh * T + c * h);
      }
    });
    x.attn.free();
    for (const b of [...x.mine, x.o, x.lse, ...x.grads]) b.free();
  }
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
