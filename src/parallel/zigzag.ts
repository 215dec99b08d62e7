/**
 * Zigzag sequence parallelism: the sequence is cut into 2P chunks and rank r holds chunks r and
 * 2P-1-r (an early and a late one), so every rank has the same causal work at every step, for
 * any P, P = 2 included (where the contiguous layout of the paper leaves rank 0 a third of rank
 * 1's work). K/V travel around a ring; partial outputs merge by log-sum-exp in fp32; in backward
 * each step's dK/dV partials go straight back to the owner of the keys. With documents, a rank's
 * K/V stop where no rank further along the ring sees its keys, and zero partials are not sent.
 *
 * The rank's tokens are laid out [chunk r; chunk 2P-1-r] (h = S/2 rows each); its LSE buffer
 * holds [chunk][head][h] (only this class reads it).
 */
import type { Device, DevicePtr, Stream } from "../runtime/device.ts";
import { MemoryPlan, type Slot } from "../runtime/memory.ts";
import * as op from "../runtime/ops.ts";
import { attentionBackward, attentionForward } from "../model/document_attention.ts";
import { DType, DTYPE_BYTES } from "../runtime/ops.ts";
import { axpyF32 } from "../runtime/ops_basic.ts";
import {
  type Attention,
  type AttentionGeometry,
  type AttentionGrads,
  type AttentionTensors,
  blockPair,
  type SequenceDocuments,
} from "../model/attention.ts";
import type { Communicator, P2P } from "../comm/comm.ts";
import { CommStreams } from "../comm/streams.ts";
import { zigzagChunks } from "./layout.ts";

// The chunk rule is the layout's (src/parallel/layout.ts owns it); re-exported for this class's readers.
export { zigzagChunks };

export class ZigzagAttention implements Attention {
  readonly plan = new MemoryPlan();
  readonly rank: number;
  readonly P: number;
  /** Tokens per chunk (half the rank's slice). */
  readonly h: number;
  readonly #kv: { k: Slot; v: Slot }[]; // two received K/V sets (double buffer)
  readonly #partOut: Slot;
  readonly #partLse: Slot;
  readonly #outAcc: Slot;
  readonly #lseAcc: Slot;
  readonly #dkPart: Slot;
  readonly #dvPart: Slot;
  readonly #recvDk: Slot;
  readonly #recvDv: Slot;
  readonly #rowQ: number; // elements per row of q (nh * hd)
  readonly #rowKv: number;
  readonly #streams: CommStreams;

  constructor(
    readonly device: Device,
    readonly geometry: AttentionGeometry,
    /** Tokens of this rank (two chunks). */
    readonly sliceLen: number,
    readonly dtype: DType,
    readonly comm: Communicator,
    readonly computeStream: Stream = 0n,
    allocateNow = true,
  ) {
    if (sliceLen % 2 !== 0) throw new Error(`zigzag needs an even slice, got ${sliceLen} tokens`);
    this.rank = comm.rank;
    this.#streams = new CommStreams(device, computeStream);
    this.P = comm.size;
    this.h = sliceLen / 2;
    this.#rowQ = geometry.numHeads * geometry.headDim;
    this.#rowKv = geometry.numKvHeads * geometry.headDim;
    const p = this.plan, f32 = DType.f32, kind = "attention and communication buffers";
    const S = sliceLen, ring = this.P > 1;
    this.#kv = [0, 1].map((i) => ({
      k: p.reserve(kind, `k${i}`, ring ? S * this.#rowKv : 1, dtype),
      v: p.reserve(kind, `v${i}`, ring ? S * this.#rowKv : 1, dtype),
    }));
    this.#partOut = p.reserve(kind, "partOut", this.h * this.#rowQ, dtype);
    this.#partLse = p.reserve(kind, "partLse", geometry.numHeads * this.h, f32);
    this.#outAcc = p.reserve(kind, "outAcc", S * this.#rowQ, f32);
    this.#lseAcc = p.reserve(kind, "lseAcc", geometry.numHeads * S, f32);
    this.#dkPart = p.reserve(kind, "dkPart", ring ? S * this.#rowKv : 1, f32);
    this.#dvPart = p.reserve(kind, "dvPart", ring ? S * this.#rowKv : 1, f32);
    this.#recvDk = p.reserve(kind, "recvDk", ring ? S * this.#rowKv : 1, f32);
    this.#recvDv = p.reserve(kind, "recvDv", ring ? S * this.#rowKv : 1, f32);
    if (allocateNow) this.allocate();
  }

  /** Allocates the buffers, the communication stream and the events. */
  allocate(): void {
    this.plan.allocate(this.device);
    this.#streams.allocate();
  }

  free(): void {
    this.plan.free();
    this.#streams.free();
  }

  /**
   * Shape of the sub-block (query chunk qc of rank qRank, key chunk kc of rank kRank), or null when
   * no query of it sees a key of it (causally masked, or, with documents, no shared document).
   */
  #pair(
    qc: number,
    kc: number,
    docs: SequenceDocuments | undefined,
    kRank: number,
    qRank = this.rank,
  ): op.AttentionShape | null {
    const cq = zigzagChunks(qRank, this.P)[qc], ck = zigzagChunks(kRank, this.P)[kc];
    return blockPair({
      tq: this.h,
      tk: this.h,
      nh: this.geometry.numHeads,
      nkv: this.geometry.numKvHeads,
      hd: this.geometry.headDim,
      qPos0: cq * this.h,
      kPos0: ck * this.h,
      scale: 1 / Math.sqrt(this.geometry.headDim),
      dtype: this.dtype,
    }, docs);
  }

  /** Whether any query of rank qRank sees any key of rank kRank (else no dK/dV partial travels). */
  #ranksSee(qRank: number, kRank: number, docs: SequenceDocuments | undefined): boolean {
    for (let qc = 0; qc < 2; qc++) {
      for (let kc = 0; kc < 2; kc++) if (this.#pair(qc, kc, docs, kRank, qRank)) return true;
    }
    return false;
  }

  /**
   * Whether the K/V of rank src, now at the rank `hop` places along its chain (src, src+1, ..,
   * src+P-1), must go one place further: some rank still ahead of it on the chain (hops hop+1 ..
   * P-1) sees src's keys. The answer only shrinks as hop grows, so the block travels a prefix of
   * the chain that reaches every rank that needs it (all ranks before one that needs it relay),
   * and the sender (at hop) and the receiver (at hop+1) answer the same from the boundaries that
   * every rank knows. Causal attention: every rank sees every other, the whole ring.
   */
  #relays(src: number, hop: number, docs: SequenceDocuments | undefined): boolean {
    for (let ahead = hop + 1; ahead < this.P; ahead++) {
      if (this.#ranksSee((src + ahead) % this.P, src, docs)) return true;
    }
    return false;
  }

  /**
   * The ring step's K/V exchange: pass what was used at step t (the block of rank r - t, null when
   * it never reached this rank) on to r+1 and receive the block of rank r-1-t into the other slot,
   * each only where the chain goes on. Returns whether the slot is being filled.
   */
  async #passOn(
    t: number,
    cur: { k: DevicePtr; v: DevicePtr } | null,
    docs: SequenceDocuments | undefined,
  ): Promise<boolean> {
    const P = this.P, r = this.rank, bytes = this.sliceLen * this.#rowKv * DTYPE_BYTES[this.dtype];
    const send = this.#relays((r - t + P) % P, t, docs);
    const receive = this.#relays((r - 1 - t + P) % P, t, docs);
    const slot = this.#kv[(t + 1) % 2], ops: P2P[] = [];
    if (send) {
      if (!cur) throw new Error(`zigzag rank ${r}: step ${t} relays a K/V block it never received`);
      ops.push({ kind: "send", peer: (r + 1) % P, ptr: cur.k, bytes });
      ops.push({ kind: "send", peer: (r + 1) % P, ptr: cur.v, bytes });
    }
    if (receive) {
      ops.push({ kind: "recv", peer: (r - 1 + P) % P, ptr: slot.k.ptr, bytes });
      ops.push({ kind: "recv", peer: (r - 1 + P) % P, ptr: slot.v.ptr, bytes });
    }
    if (ops.length > 0) {
      this.#streams.commWaitsCompute(); // the receiving slot was last read at step t-1
      await this.comm.exchange(ops, this.#streams.comm);
    }
    return receive;
  }

  /** The K/V to use at step t+1: the slot filled at step t, or null (no query here needs it). */
  #arrived(t: number, received: boolean): { k: DevicePtr; v: DevicePtr } | null {
    if (!received) return null;
    this.#streams.computeWaitsComm(); // the next K/V has arrived
    const slot = this.#kv[(t + 1) % 2];
    return { k: slot.k.ptr, v: slot.v.ptr };
  }

  /** The K/V of a visible block pair at step t: throws rather than read a slot never filled. */
  #held(cur: { k: DevicePtr; v: DevicePtr } | null, src: number): { k: DevicePtr; v: DevicePtr } {
    if (!cur) throw new Error(`zigzag rank ${this.rank}: the K/V of rank ${src} never arrived`);
    return cur;
  }

  #rows(ptr: DevicePtr, row0: number, rowElems: number, dtype: DType): DevicePtr {
    return ptr + BigInt(row0 * rowElems * DTYPE_BYTES[dtype]);
  }

  async forward({ q, k, v, out, lse, docs }: AttentionTensors) {
    const d = this.device, s0 = this.computeStream, P = this.P, r = this.rank, h = this.h;
    const nh = this.geometry.numHeads;
    d.memset(this.#outAcc.ptr, 0, this.#outAcc.bytes, s0);
    d.upload(this.#lseAcc.ptr, new Float32Array(nh * this.sliceLen).fill(-Infinity), s0);
    let cur: { k: DevicePtr; v: DevicePtr } | null = { k, v };
    for (let t = 0; t < P; t++) {
      const src = (r - t + P) % P;
      const received = t + 1 < P && await this.#passOn(t, cur, docs);
      for (let qc = 0; qc < 2; qc++) {
        for (let kc = 0; kc < 2; kc++) {
          const shape = this.#pair(qc, kc, docs, src);
          if (!shape) continue;
          const { k: kCur, v: vCur } = this.#held(cur, src);
          attentionForward(
            d,
            this.#partOut.ptr,
            this.#partLse.ptr,
            this.#rows(q, qc * h, this.#rowQ, this.dtype),
            this.#rows(kCur, kc * h, this.#rowKv, this.dtype),
            this.#rows(vCur, kc * h, this.#rowKv, this.dtype),
            shape,
            s0,
          );
          op.attentionMerge(
            d,
            this.#rows(this.#outAcc.ptr, qc * h, this.#rowQ, DType.f32),
            this.#lseAcc.at(qc * nh * h),
            this.#partOut.ptr,
            this.#partLse.ptr,
            h,
            nh,
            this.geometry.headDim,
            this.dtype,
            s0,
          );
        }
      }
      cur = this.#arrived(t, received);
    }
    this.#streams.computeWaitsComm(); // a last send without a receive may still read k, v
    op.convert(d, out, this.dtype, this.#outAcc.ptr, DType.f32, this.sliceLen * this.#rowQ, s0);
    d.copy(lse, this.#lseAcc.ptr, this.#lseAcc.bytes, s0);
  }

  async backward(
    { q, k, v, out, lse, docs }: AttentionTensors,
    { dout, dq, dk, dv }: AttentionGrads,
  ) {
    const d = this.device, s0 = this.computeStream, P = this.P, r = this.rank, h = this.h;
    const nh = this.geometry.numHeads, kvBytes = this.sliceLen * this.#rowKv * 4;
    let cur: { k: DevicePtr; v: DevicePtr } | null = { k, v };
    for (let t = 0; t < P; t++) {
      const src = (r - t + P) % P;
      const received = t + 1 < P && await this.#passOn(t, cur, docs);
      // dK/dV of our own keys go straight into the accumulators; others' into partials. With
      // documents, partials that would be zero (our queries see none of src's keys) are neither
      // computed nor sent, and the rank t places ahead skips them likewise (every rank knows the
      // boundaries, so both sides agree).
      const own = t === 0, from = (r + t) % P;
      const send = !own && this.#ranksSee(r, src, docs);
      const receive = !own && this.#ranksSee(from, r, docs);
      const dkT = own ? dk : this.#dkPart.ptr, dvT = own ? dv : this.#dvPart.ptr;
      if (send) {
        d.memset(this.#dkPart.ptr, 0, kvBytes, s0);
        d.memset(this.#dvPart.ptr, 0, kvBytes, s0);
      }
      for (let qc = 0; qc < 2; qc++) {
        for (let kc = 0; kc < 2; kc++) {
          const shape = this.#pair(qc, kc, docs, src);
          if (!shape) continue;
          const { k: kCur, v: vCur } = this.#held(cur, src);
          attentionBackward(
            d,
            this.#rows(dq, qc * h, this.#rowQ, DType.f32),
            this.#rows(dkT, kc * h, this.#rowKv, DType.f32),
            this.#rows(dvT, kc * h, this.#rowKv, DType.f32),
            this.#rows(dout, qc * h, this.#rowQ, this.dtype),
            this.#rows(q, qc * h, this.#rowQ, this.dtype),
            this.#rows(kCur, kc * h, this.#rowKv, this.dtype),
            this.#rows(vCur, kc * h, this.#rowKv, this.dtype),
            this.#rows(out, qc * h, this.#rowQ, this.dtype),
            lse + BigInt(qc * nh * h * 4),
            shape,
            s0,
          );
        }
      }
      if (send || receive) {
        // Partials for src's keys go back to src; ours come from the rank t places ahead.
        const ops: P2P[] = [];
        if (send) {
          ops.push({ kind: "send", peer: src, ptr: this.#dkPart.ptr, bytes: kvBytes });
          ops.push({ kind: "send", peer: src, ptr: this.#dvPart.ptr, bytes: kvBytes });
        }
        if (receive) {
          ops.push({ kind: "recv", peer: from, ptr: this.#recvDk.ptr, bytes: kvBytes });
          ops.push({ kind: "recv", peer: from, ptr: this.#recvDv.ptr, bytes: kvBytes });
        }
        this.#streams.commWaitsCompute();
        await this.comm.exchange(ops, this.#streams.comm);
        this.#streams.computeWaitsComm();
        if (receive) {
          axpyF32(d, dk, this.#recvDk.ptr, 1, this.sliceLen * this.#rowKv, s0);
          axpyF32(d, dv, this.#recvDv.ptr, 1, this.sliceLen * this.#rowKv, s0);
        }
      }
      cur = this.#arrived(t, received);
    }
    this.#streams.computeWaitsComm(); // the caller may overwrite q, k, v, dout once this returns
  }
}
