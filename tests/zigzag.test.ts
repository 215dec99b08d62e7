/**
 * Zigzag sequence parallelism equals single-rank attention: P in-process ranks each holding chunks
 * r and 2P-1-r; forward (O, LSE) and backward (dQ, dK, dV), MHA and GQA, fp32 (1e-5, as DistAttn);
 * also run in head groups (HeadGroupedAttention, --attention-head-groups). With documents (the
 * reference masks by the same starts): the messages every rank sends are counted through the
 * in-process communicator and checked against a token-level count of who needs whose K/V, every
 * message sent is received, and ranks that disagree on a message fail within a timeout.
 */
import { assert, assertEquals, assertLess } from "./assert.ts";
import {
  attentionErrors,
  deviceDocuments,
  emptyAttentionResult,
  randn,
  runSequenceParallel,
  singleRankAttention,
  testDevice,
} from "./_util.ts";
import { ZigzagAttention, zigzagChunks } from "../src/parallel/zigzag.ts";
import { HeadGroupedAttention } from "../src/parallel/sequence_attention.ts";
import { LocalComm, LocalGroup } from "../src/comm/local_comm.ts";
import { presetConfig } from "../src/model/presets.ts";
import { DType } from "../src/runtime/ops.ts";
import type { P2P } from "../src/comm/comm.ts";
import type { Stream } from "../src/runtime/device.ts";
import { randomDocumentStarts } from "../src/parallel/document_work.ts";

const H = 5; // tokens per chunk

/**
 * Relative errors of P zigzag ranks against one rank. `starts`: document starts (both sides
 * masked by them); `comms`: the ranks' communicators (default an in-process group).
 */
async function check(
  P: number,
  nkv: number,
  groups = 1,
  o: { starts?: number[]; comms?: LocalComm[]; afterForward?: () => void } = {},
) {
  const d = testDevice();
  const nh = 4, hd = 16, h = H, T = 2 * P * h;
  const cfg = { ...presetConfig("debug-tiny"), numHeads: nh, numKvHeads: nkv, headDim: hd };
  const rq = nh * hd, rkv = nkv * hd;
  const q = randn(T * rq, 11 + P), k = randn(T * rkv, 12 + P), v = randn(T * rkv, 13 + P);
  const dout = randn(T * rq, 14 + P);
  const want = singleRankAttention(d, { q, k, v, dout }, nh, nkv, hd, o.starts);
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
  const docs = o.starts && deviceDocuments(d, o.starts);
  const comms = o.comms ?? new LocalGroup(d, P).members();
  const results = await runSequenceParallel(
    d,
    comms.map((comm) => {
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
    { docs, afterForward: o.afterForward },
  );
  docs?.free();
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

// ---------------------------------------------------------------------------------------------
// Documents: K/V travel only as far along the ring as some rank needs them.

/** One message of an exchange, as the rank that posted it saw it. */
interface Message {
  phase: "forward" | "backward";
  rank: number;
  peer: number;
  kind: "send" | "recv";
  bytes: number;
}

/** A rank of an in-process group that logs every message of its exchanges. */
class CountingComm extends LocalComm {
  constructor(
    group: LocalGroup,
    rank: number,
    readonly log: Message[],
    readonly phase: { now: Message["phase"] },
  ) {
    super(group, rank, [...Array(group.size).keys()]);
  }
  override exchange(ops: P2P[], stream?: Stream): Promise<void> {
    for (const { kind, peer, bytes } of ops) {
      this.log.push({ phase: this.phase.now, rank: this.rank, peer, kind, bytes });
    }
    return super.exchange(ops, stream);
  }
}

/**
 * Whether a query of rank q sees a key of rank s, token by token: the key is not later than the
 * query and no document starts after the key up to the query (written here, apart from the block
 * rule of src/model/documents.ts).
 */
function tokensSee(P: number, starts: number[], q: number, s: number): boolean {
  const doc = (p: number) => starts.filter((x) => x <= p).length;
  const tokens = (r: number) =>
    zigzagChunks(r, P).flatMap((c) => Array.from({ length: H }, (_, i) => c * H + i));
  return tokens(q).some((p) => tokens(s).some((x) => x <= p && doc(x) === doc(p)));
}

/**
 * Messages each rank should send: rank s's K/V must reach the furthest rank on its chain s+1, ..,
 * s+P-1 that sees its keys (`hops` places), so rank r relays it at ring step t (it holds the block
 * of r-t) iff hops(r-t) > t, as two messages (K and V), in forward and again in backward; backward
 * also sends two partials (dK, dV) at step t >= 1 iff r's queries see the keys of r-t.
 */
function expectedSends(P: number, starts: number[]) {
  const hops = (s: number) => {
    let far = 0;
    for (let j = 1; j < P; j++) if (tokensSee(P, starts, (s + j) % P, s)) far = j;
    return far;
  };
  const ranks = [...Array(P).keys()];
  const kv = ranks.map((r) => {
    let n = 0;
    for (let t = 0; t + 1 < P; t++) if (hops((r - t + P) % P) > t) n += 2;
    return n;
  });
  const partials = ranks.map((r) => {
    let n = 0;
    for (let t = 1; t < P; t++) if (tokensSee(P, starts, r, (r - t + P) % P)) n += 2;
    return n;
  });
  // Some rank relays a block it does not need itself on to one that does.
  const relaysThrough = ranks.some((s) => {
    for (let j = 1; j < hops(s); j++) if (!tokensSee(P, starts, (s + j) % P, s)) return true;
    return false;
  });
  return { kv, partials, relaysThrough };
}

/** Rejects when `work` has not settled after `seconds` (ranks that disagree on a message hang). */
async function within<T>(seconds: number, what: string, work: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${what}: no result after ${seconds} s (a receive nobody sends?)`)),
      seconds * 1000,
    );
  });
  try {
    return await Promise.race([work, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

const chunkStarts = (P: number) => Array.from({ length: 2 * P }, (_, c) => c * H);
const DOC_CASES: { name: string; P: number; starts?: number[]; groups?: number }[] = [
  ...[2, 3, 4].map((P) => ({ name: "causal", P })),
  // Every document inside one chunk (some chunks hold two): no rank needs another's keys.
  ...[2, 3, 4].map((P) => ({
    name: "documents inside chunks",
    P,
    starts: [...chunkStarts(P), 2, 13].sort((a, b) => a - b),
  })),
  // Chunks 0|1 (ranks 0, 1) and 1|2 (ranks 1, 2) share documents (one hop each), and so do chunks
  // 5|6 (ranks 2, 1): rank 2's K/V go 2 -> 3 -> 0 -> 1, relayed by two ranks that do not need them.
  { name: "documents across chunks", P: 4, starts: [0, 7, 12, 15, 20, 27, 33, 35] },
  { name: "documents across chunks", P: 4, starts: [0, 7, 12, 15, 20, 27, 33, 35], groups: 2 },
  { name: "random documents", P: 3, starts: randomDocumentStarts(6 * H, 4, 1) },
  { name: "random documents", P: 4, starts: randomDocumentStarts(8 * H, 6, 2) },
];

for (const { name, P, starts, groups = 1 } of DOC_CASES) {
  const title = `zigzag P=${P}${groups > 1 ? ` in ${groups} head groups` : ""} ${name}`;
  Deno.test(`${title}: equals one rank; K/V go only as far as a rank needs them`, async () => {
    const d = testDevice(), nkv = 2, log: Message[] = [];
    const phase: { now: Message["phase"] } = { now: "forward" };
    const group = new LocalGroup(d, P);
    const comms = [...Array(P).keys()].map((r) => new CountingComm(group, r, log, phase));
    const errors = await within(
      10,
      title,
      check(P, nkv, groups, { starts, comms, afterForward: () => (phase.now = "backward") }),
    );
    for (const [key, err] of Object.entries(errors)) assertLess(err, 1e-5, `${title} ${key}`);

    // Every message sent was received: the same bytes for every (from, to) pair and phase.
    for (const now of ["forward", "backward"]) {
      const total = (kind: string, from: number, to: number) =>
        log.filter((m) =>
          m.phase === now && m.kind === kind &&
          (kind === "send" ? m.rank === from && m.peer === to : m.rank === to && m.peer === from)
        ).reduce((n, m) => n + m.bytes, 0);
      for (let from = 0; from < P; from++) {
        for (let to = 0; to < P; to++) {
          assertEquals(total("recv", from, to), total("send", from, to), `${now} ${from}->${to}`);
        }
      }
    }
    // Sends per rank against the token-level count (each of the head groups runs its own ring).
    const want = expectedSends(P, starts ?? [0]);
    const sends = (now: string, r: number) =>
      log.filter((m) => m.phase === now && m.kind === "send" && m.rank === r).length;
    for (let r = 0; r < P; r++) {
      assertEquals(sends("forward", r), groups * want.kv[r], `forward K/V sent by rank ${r}`);
      assertEquals(
        sends("backward", r),
        groups * (want.kv[r] + want.partials[r]),
        `backward K/V and dK/dV sent by rank ${r}`,
      );
      const sentKv = log.filter((m) => m.phase === "forward" && m.kind === "send" && m.rank === r);
      const blockBytes = (2 * H * nkv * 16 * 4) / groups; // a rank's K (or V): 2h rows, fp32
      for (const m of sentKv) assertEquals(m.bytes, blockBytes);
      if (!starts) assertEquals(want.kv[r], 2 * (P - 1), "causal: every block travels the ring");
    }
    if (name === "documents inside chunks") {
      for (let r = 0; r < P; r++) assertLess(sends("forward", r), 2 * (P - 1));
    }
    if (name === "documents across chunks") assert(want.relaysThrough, "the case covers relaying");
  });
}
