/**
 * Document-masked attention of one block pair through the causal kernels.
 *
 * Inside a block pair the documents cut the queries and the keys into runs that belong to one
 * document each, and a query sees only keys of its own document (src/model/documents.ts owns the
 * rule). So the pair is a handful of independent causal block pairs, one per document that has
 * queries in the block: its queries against its own keys, positions kept global (the causal kernels
 * mask by global position, leaving leading queries that see no key at out 0, lse -inf as the
 * merge expects). Each piece runs the native bf16 tensor-core kernels (or the fp32 ones), which
 * take any shape, instead of the general document kernels (fp32 math on CUDA cores, 14 TFLOP/s on
 * an H100): the work follows the sum of squared document lengths at the causal kernels' rate.
 * A piece whose document has queries in the block but no visible key in it is written directly
 * (out 0, lse -inf).
 *
 * A sliding window (Mistral) trims each piece's keys to those its first query can still see
 * (p - s < W) and, where the window still cuts the piece (its last query and first key are W or more
 * apart), runs the piece as a windowed causal pair: the _docs entry without documents and with the
 * window, which the Hopper bf16 kernels take on sm_90a (the general kernels run it elsewhere, and
 * in fp32). So a window costs nothing on the pairs it does not reach and runs the ones it cuts at
 * the tensor-core rate on an H100.
 *
 * cuDNN is kept out of the pieces: it builds an execution plan per shape, and random document
 * lengths make every piece a new shape. A block pair holding one document (the whole window is one
 * document) is exactly a causal block pair and takes the default kernels, cuDNN included.
 *
 * The kernels write lse as [nh, rows] of the piece; the pair's lse is [nh, tq], so each piece's lse
 * goes through a small per-stream scratch and a strided copy (df_memcpy_2d). The scratch (nh x tq
 * fp32, twice) lives outside the memory plan, in the library workspace allowance like cuBLASLt's.
 */
import type { Device, DeviceBuffer, DevicePtr, Stream } from "../runtime/device.ts";
import * as op from "../runtime/ops.ts";
import { DTYPE_BYTES } from "../runtime/ops.ts";
import { withNativeAttention } from "../runtime/attention_kernel.ts";
import { type DocStarts, documentIndexOf, firstKeyOf } from "./documents.ts";

/**
 * One document's part of a block pair, in global positions: its queries [q0, q1) and the keys
 * [k0, k1) they can see (k0 === k1: none of them sees a key of this block).
 */
export interface DocumentPiece {
  q0: number;
  q1: number;
  k0: number;
  k1: number;
}

/** Above this many pieces a block pair runs the general document kernels (launches would dominate). */
export const MAX_DOCUMENT_PIECES = 1024;

/**
 * The pieces of the block pair (queries [q0, q1), keys [k0, k1)) under `starts` and the sliding
 * window (absent or 0: none): one per document with queries in the block, in position order,
 * covering every query exactly once. A piece's keys are those of its document in the key block that
 * some of its queries can see: up to its last query, and from its first query's window on.
 */
export function documentPieces(
  starts: DocStarts,
  q0: number,
  q1: number,
  k0: number,
  k1: number,
  window?: number,
): DocumentPiece[] {
  const pieces: DocumentPiece[] = [];
  for (let c = documentIndexOf(starts, q0); c < starts.length && starts[c] < q1; c++) {
    const docStart = starts[c], docEnd = c + 1 < starts.length ? starts[c + 1] : Infinity;
    const qa = Math.max(docStart, q0), qb = Math.min(docEnd, q1);
    if (qb <= qa) continue;
    // Keys of this document in the key block, up to the last of its queries here, from the first
    // key its first query sees.
    const ka = Math.max(firstKeyOf(starts, qa, window), k0), kb = Math.min(docEnd, k1, qb);
    pieces.push(ka < kb ? { q0: qa, q1: qb, k0: ka, k1: kb } : { q0: qa, q1: qb, k0: ka, k1: ka });
  }
  return pieces;
}

interface Scratch {
  lse: DeviceBuffer;
  negInf: DeviceBuffer;
  floats: number;
}
const scratchByDevice = new WeakMap<Device, Map<Stream, Scratch>>();

/** Per (device, stream) lse scratch of at least `floats` floats, and as many -inf. */
function scratchFor(d: Device, s: Stream, floats: number): Scratch {
  let byStream = scratchByDevice.get(d);
  if (!byStream) scratchByDevice.set(d, byStream = new Map());
  let sc = byStream.get(s);
  if (!sc || sc.floats < floats) {
    if (sc) {
      d.syncStream(s); // earlier work on the stream may still read the old buffers
      sc.lse.free();
      sc.negInf.free();
    }
    const bytes = floats * 4;
    sc = { lse: d.alloc(bytes), negInf: d.alloc(bytes), floats };
    d.upload(sc.negInf.ptr, new Float32Array(floats).fill(-Infinity));
    byStream.set(s, sc);
  }
  return sc;
}

/**
 * Whether the sliding window masks some (query, key) pair of the piece that causality and the
 * document leave visible: its last query and first key are `window` or more apart.
 */
export function windowCuts(p: DocumentPiece, window: number | undefined): boolean {
  return !!window && window > 0 && p.k1 > p.k0 && p.q1 - 1 - p.k0 >= window;
}

/**
 * The pieces of `a` when it is a document-masked (or windowed) pair worth splitting, else null (no
 * host starts, or too many pieces).
 */
function splitOf(a: op.AttentionShape): DocumentPiece[] | null {
  const host = a.docs?.host;
  if (!host) return null;
  const end = a.qPos0 + a.tq;
  const pieces = documentPieces(host, a.qPos0, end, a.kPos0, a.kPos0 + a.tk, a.docs?.window);
  return pieces.length > MAX_DOCUMENT_PIECES ? null : pieces;
}

/** Whether the pieces are the whole pair as one block pair (a single document; the window may cut it). */
function wholePair(pieces: DocumentPiece[], a: op.AttentionShape): boolean {
  const p = pieces[0];
  return pieces.length === 1 && p.q0 === a.qPos0 && p.q1 === a.qPos0 + a.tq &&
    p.k0 === a.kPos0 && p.k1 === a.kPos0 + a.tk;
}

/** A piece as its own block pair: causal, or windowed causal (no documents) where the window cuts it. */
function pieceShape(a: op.AttentionShape, p: DocumentPiece): op.AttentionShape {
  const window = a.docs?.window;
  const docs = windowCuts(p, window) ? { starts: 0n, count: 0, window } : undefined;
  return { ...a, tq: p.q1 - p.q0, tk: p.k1 - p.k0, qPos0: p.q0, kPos0: p.k0, docs };
}

/** Byte strides of one token's row: q/out in the compute dtype, k/v, and their fp32 gradients. */
function rowBytes(a: op.AttentionShape) {
  const es = DTYPE_BYTES[a.dtype];
  return { q: a.nh * a.hd * es, kv: a.nkv * a.hd * es, dq: a.nh * a.hd * 4, dkv: a.nkv * a.hd * 4 };
}

/**
 * Forward of one block pair: `op.attentionForward`, with a document-masked pair split into causal
 * pieces (see the module comment). Same contract: out [tq,nh,hd], lse [nh,tq].
 */
export function attentionForward(
  d: Device,
  out: DevicePtr,
  lse: DevicePtr,
  q: DevicePtr,
  k: DevicePtr,
  v: DevicePtr,
  a: op.AttentionShape,
  s: Stream = 0n,
): void {
  const pieces = splitOf(a);
  if (!pieces) return op.attentionForward(d, out, lse, q, k, v, a, s);
  if (wholePair(pieces, a)) {
    return op.attentionForward(d, out, lse, q, k, v, pieceShape(a, pieces[0]), s);
  }
  const row = rowBytes(a), B = BigInt;
  const sc = scratchFor(d, s, a.nh * a.tq);
  withNativeAttention(d, () => {
    for (const p of pieces) {
      const rows = p.q1 - p.q0, rq = p.q0 - a.qPos0, rk = p.k0 - a.kPos0;
      const outP = out + B(rq * row.q), lseP = lse + B(rq * 4);
      if (p.k1 > p.k0) {
        const kOff = B(rk * row.kv);
        op.attentionForward(
          d,
          outP,
          sc.lse.ptr,
          q + B(rq * row.q),
          k + kOff,
          v + kOff,
          pieceShape(a, p),
          s,
        );
        d.copy2d(lseP, a.tq * 4, sc.lse.ptr, rows * 4, rows * 4, a.nh, s);
      } else {
        d.memset(outP, 0, rows * row.q, s);
        d.copy2d(lseP, a.tq * 4, sc.negInf.ptr, rows * 4, rows * 4, a.nh, s);
      }
    }
  });
}

/**
 * Backward of one block pair: `op.attentionBackward`, with a document-masked pair split into causal
 * pieces. Same contract: adds into fp32 dq [tq,nh,hd], dk and dv [tk,nkv,hd].
 */
export function attentionBackward(
  d: Device,
  dq: DevicePtr,
  dk: DevicePtr,
  dv: DevicePtr,
  dout: DevicePtr,
  q: DevicePtr,
  k: DevicePtr,
  v: DevicePtr,
  out: DevicePtr,
  lse: DevicePtr,
  a: op.AttentionShape,
  s: Stream = 0n,
): void {
  const pieces = splitOf(a);
  if (!pieces) return op.attentionBackward(d, dq, dk, dv, dout, q, k, v, out, lse, a, s);
  if (wholePair(pieces, a)) {
    return op.attentionBackward(
      d,
      dq,
      dk,
      dv,
      dout,
      q,
      k,
      v,
      out,
      lse,
      pieceShape(a, pieces[0]),
      s,
    );
  }
  const row = rowBytes(a), B = BigInt;
  const sc = scratchFor(d, s, a.nh * a.tq);
  withNativeAttention(d, () => {
    for (const p of pieces) {
      if (p.k1 <= p.k0) continue; // no visible pair: nothing to add
      const rows = p.q1 - p.q0, rq = p.q0 - a.qPos0, rk = p.k0 - a.kPos0;
      d.copy2d(sc.lse.ptr, rows * 4, lse + B(rq * 4), a.tq * 4, rows * 4, a.nh, s);
      const qOff = B(rq * row.q), kOff = B(rk * row.kv), dkOff = B(rk * row.dkv);
      op.attentionBackward(
        d,
        dq + B(rq * row.dq),
        dk + dkOff,
        dv + dkOff,
        dout + qOff,
        q + qOff,
        k + kOff,
        v + kOff,
        out + qOff,
        sc.lse.ptr,
        pieceShape(a, p),
        s,
      );
    }
  });
}
