/**
 * DistAttn: exact causal attention over a sequence split into P contiguous slices, one per rank of
 * a sequence-parallel group, driven by the schedule of src/parallel/schedule.ts.
 *
 * Forward: each rank merges the partial results of its queries against every earlier slice by
 * log-sum-exp in fp32. A helper rank (balanced schedule) computes a busy rank's queries against
 * its own keys and sends the partial output and LSE back. Partial outputs are normalised (divided
 * by their own softmax sum) before they travel, so storing them in the activation dtype rounds
 * each once, as the final output is rounded once: the merged error is a weighted mean of the
 * partial errors and does not grow with P (no fp16 overflow risk as in the reference code).
 *
 * Backward mirrors it with the final O and LSE: dQ partials travel back to the query owner and
 * dK/dV partials to the key owner, all in fp32.
 *
 * Overlap: inputs of step s+1 are exchanged on the communication stream while step s computes on
 * the compute stream; events order the two, double buffers keep them apart. With the CPU host
 * transport the exchange completes before returning, so the same code simply runs in sequence.
 */
import type { Device, DevicePtr, Stream } from "../runtime/device.ts";
import { MemoryPlan, type Slot } from "../runtime/memory.ts";
import * as op from "../runtime/ops.ts";
import { attentionBackward, attentionForward } from "../model/document_attention.ts";
import { axpyF32 } from "../runtime/ops_basic.ts";
import { DType, DTYPE_BYTES } from "../runtime/ops.ts";
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
import {
  backwardSchedule,
  forwardSchedule,
  type Step,
  type Task,
  type Transfer,
} from "./schedule.ts";

export interface DistAttnOptions {
  /** The paper's load-balanced schedule (default) or the plain ring-like one. */
  balanced: boolean;
  /** Exchange the next step's inputs while this step computes (default on). */
  overlap: boolean;
}

/** This rank's own attention inputs (dout, out and lse only in backward). */
interface MyInputs {
  q: DevicePtr;
  k: DevicePtr;
  v: DevicePtr;
  dout?: DevicePtr;
  out?: DevicePtr;
  lse?: DevicePtr;
}

/** Buffers for one step's received inputs (two sets: double buffering). */
interface InputSlot {
  q: Slot;
  dout: Slot;
  out: Slot;
  lse: Slot;
  k: Slot;
  v: Slot;
}

export class DistAttention implements Attention {
  readonly plan = new MemoryPlan();
  readonly rank: number;
  readonly P: number;
  readonly shape: op.AttentionShape;
  readonly #fwd: Step[];
  readonly #bwd: Step[];
  readonly #slots: InputSlot[];
  // Partial results computed here and received from helpers.
  readonly #partOut: Slot;
  readonly #partLse: Slot;
  readonly #recvOut: Slot;
  readonly #recvLse: Slot;
  readonly #outAcc: Slot;
  readonly #lseAcc: Slot;
  readonly #dqPart: Slot;
  readonly #dkPart: Slot;
  readonly #dvPart: Slot;
  readonly #recvDq: Slot;
  readonly #recvDk: Slot;
  readonly #recvDv: Slot;
  readonly #streams: CommStreams;
  readonly #qElems: number;
  readonly #kvElems: number;
  readonly #lseElems: number;

  constructor(
    readonly device: Device,
    readonly geometry: AttentionGeometry,
    /** Tokens of this rank's slice. */
    readonly sliceLen: number,
    readonly dtype: DType,
    readonly comm: Communicator,
    readonly opts: DistAttnOptions = { balanced: true, overlap: true },
    readonly computeStream: Stream = 0n,
    /** false: only reserve the buffers in `plan` (memory planning); call allocate() later. */
    allocateNow = true,
  ) {
    this.rank = comm.rank;
    this.#streams = new CommStreams(device, computeStream);
    this.P = comm.size;
    this.shape = {
      tq: sliceLen,
      tk: sliceLen,
      nh: geometry.numHeads,
      nkv: geometry.numKvHeads,
      hd: geometry.headDim,
      qPos0: 0,
      kPos0: 0,
      scale: 1 / Math.sqrt(geometry.headDim),
      dtype,
    };
    this.#fwd = forwardSchedule(this.P, { balanced: opts.balanced });
    this.#bwd = backwardSchedule(this.P, { balanced: opts.balanced });
    const T = sliceLen,
      f32 = DType.f32,
      p = this.plan,
      kind = "attention and communication buffers";
    this.#qElems = T * geometry.numHeads * geometry.headDim;
    this.#kvElems = T * geometry.numKvHeads * geometry.headDim;
    this.#lseElems = geometry.numHeads * T;
    // Only what this rank's part of the schedules moves is allocated (a one-element placeholder
    // otherwise, so a wrong use is a range error, not silent corruption): with P = 2 no queries
    // or partial outputs travel, rank 0 only receives dK/dV partials and rank 1 only sends them.
    // What this rank sends and receives over both schedules.
    const transfers = [...this.#fwd, ...this.#bwd].flatMap((st) => [...st.fetch, ...st.results]);
    const sends = new Set(transfers.filter((t) => t.from === this.rank).map((t) => t.payload));
    const recvs = new Set(transfers.filter((t) => t.to === this.rank).map((t) => t.payload));
    const ifSent = (payload: string, elems: number) => (sends.has(payload as never) ? elems : 1);
    const n = (payload: string, elems: number) => (recvs.has(payload as never) ? elems : 1);
    const [qN, kvN, lseN] = [this.#qElems, this.#kvElems, this.#lseElems];
    this.#slots = [0, 1].map((i) => ({
      q: p.reserve(kind, `q${i}`, n("q", qN), dtype),
      dout: p.reserve(kind, `dout${i}`, n("q", qN), dtype),
      out: p.reserve(kind, `out${i}`, n("q", qN), dtype),
      lse: p.reserve(kind, `lse${i}`, n("q", lseN), f32),
      k: p.reserve(kind, `k${i}`, n("kv", kvN), dtype),
      v: p.reserve(kind, `v${i}`, n("kv", kvN), dtype),
    }));
    this.#partOut = p.reserve(kind, "partOut", qN, dtype);
    this.#partLse = p.reserve(kind, "partLse", lseN, f32);
    this.#recvOut = p.reserve(kind, "recvOut", n("out", qN), dtype);
    this.#recvLse = p.reserve(kind, "recvLse", n("out", lseN), f32);
    this.#outAcc = p.reserve(kind, "outAcc", qN, f32);
    this.#lseAcc = p.reserve(kind, "lseAcc", lseN, f32);
    this.#dqPart = p.reserve(kind, "dqPart", ifSent("dq", qN), f32);
    this.#dkPart = p.reserve(kind, "dkPart", ifSent("dkv", kvN), f32);
    this.#dvPart = p.reserve(kind, "dvPart", ifSent("dkv", kvN), f32);
    this.#recvDq = p.reserve(kind, "recvDq", n("dq", qN), f32);
    this.#recvDk = p.reserve(kind, "recvDk", n("dkv", kvN), f32);
    this.#recvDv = p.reserve(kind, "recvDv", n("dkv", kvN), f32);
    if (allocateNow) this.allocate();
  }

  /** Allocates the buffers, the communication stream and the events. */
  allocate(): void {
    const device = this.device;
    this.plan.allocate(device);
    this.#streams.allocate();
  }

  free(): void {
    this.plan.free();
    this.#streams.free();
  }

  /**
   * The shape of the block pair (query block q, key block kv) with the sequence's documents, or
   * null when no query of q sees a key of kv: the task is skipped, and so are the transfers that
   * feed it and carry its result (every rank knows the boundaries, so sender and receiver agree).
   */
  #blockShape(q: number, kv: number, docs?: SequenceDocuments): op.AttentionShape | null {
    const shape = { ...this.shape, qPos0: q * this.sliceLen, kPos0: kv * this.sliceLen };
    return blockPair(shape, docs);
  }

  /**
   * A step's input (`fetch`) or result transfers that serve a task with work: an input feeds its
   * receiver's task, a result comes from its sender's.
   */
  #live(step: Step, which: "fetch" | "results", docs?: SequenceDocuments): Transfer[] {
    const transfers = step[which];
    if (!docs) return transfers;
    const fetch = which === "fetch";
    return transfers.filter((t) => {
      const task: Task | undefined = step.tasks.find((x) => x.worker === (fetch ? t.to : t.from));
      return task !== undefined && this.#blockShape(task.q, task.kv, docs) !== null;
    });
  }

  #bytes(elems: number, dtype: DType = this.dtype): number {
    return elems * DTYPE_BYTES[dtype];
  }

  /** Exchanges step s's input transfers on the communication stream, into the slot of its parity. */
  #fetch(transfers: Transfer[], s: number, mine: MyInputs, backward: boolean): Promise<void> {
    return this.comm.exchange(
      this.#fetchOps(transfers, this.#slots[s % 2], mine, backward),
      this.#streams.comm,
    );
  }

  /** The P2P ops of this rank for a step's input transfers, received into `slot`. */
  #fetchOps(transfers: Transfer[], slot: InputSlot, mine: MyInputs, backward: boolean): P2P[] {
    const ops: P2P[] = [];
    const qb = this.#bytes(this.#qElems), kvb = this.#bytes(this.#kvElems), lb = this.#lseElems * 4;
    for (const t of transfers) {
      const send = t.from === this.rank, recv = t.to === this.rank;
      if (!send && !recv) continue;
      const kind = send ? "send" : "recv", peer = send ? t.to : t.from;
      if (t.payload === "kv") {
        ops.push({ kind, peer, ptr: send ? mine.k : slot.k.ptr, bytes: kvb });
        ops.push({ kind, peer, ptr: send ? mine.v : slot.v.ptr, bytes: kvb });
      } else if (t.payload === "q") {
        ops.push({ kind, peer, ptr: send ? mine.q : slot.q.ptr, bytes: qb });
        if (backward) {
          ops.push({ kind, peer, ptr: send ? mine.dout! : slot.dout.ptr, bytes: qb });
          ops.push({ kind, peer, ptr: send ? mine.out! : slot.out.ptr, bytes: qb });
          ops.push({ kind, peer, ptr: send ? mine.lse! : slot.lse.ptr, bytes: lb });
        }
      }
    }
    return ops;
  }

  async forward({ q, k, v, out, lse, docs }: AttentionTensors) {
    const d = this.device, r = this.rank, s0 = this.computeStream, steps = this.#fwd;
    d.memset(this.#outAcc.ptr, 0, this.#outAcc.bytes, s0);
    d.upload(this.#lseAcc.ptr, new Float32Array(this.#lseElems).fill(-Infinity), s0);
    const mine = { q, k, v };
    const fetch = (s: number) => this.#fetch(this.#live(steps[s], "fetch", docs), s, mine, false);
    // The first sends read what the caller has just computed on the compute stream.
    this.#streams.commWaitsCompute();
    await fetch(0);
    for (let s = 0; s < steps.length; s++) {
      const slot = this.#slots[s % 2];
      this.#streams.computeWaitsComm();
      // Prefetch the next step's inputs while this one computes (its slot was last read at s-1,
      // whose compute the comm stream has already waited for).
      if (this.opts.overlap && s + 1 < steps.length) await fetch(s + 1);
      const task = steps[s].tasks.find((t) => t.worker === r);
      const shape = task ? this.#blockShape(task.q, task.kv, docs) : null;
      if (task && shape) {
        const qp = task.q === r ? q : slot.q.ptr;
        const kp = task.kv === r ? k : slot.k.ptr, vp = task.kv === r ? v : slot.v.ptr;
        attentionForward(
          d,
          this.#partOut.ptr,
          this.#partLse.ptr,
          qp,
          kp,
          vp,
          shape,
          s0,
        );
        if (task.q === r) {
          op.attentionMerge(
            d,
            this.#outAcc.ptr,
            this.#lseAcc.ptr,
            this.#partOut.ptr,
            this.#partLse.ptr,
            this.sliceLen,
            this.geometry.numHeads,
            this.geometry.headDim,
            this.dtype,
            s0,
          );
        }
      }
      // Partial results back to their owners.
      const ops: P2P[] = [];
      let receives = false;
      for (const t of this.#live(steps[s], "results", docs)) {
        if (t.from === r) {
          ops.push({
            kind: "send",
            peer: t.to,
            ptr: this.#partOut.ptr,
            bytes: this.#bytes(this.#qElems),
          });
          ops.push({ kind: "send", peer: t.to, ptr: this.#partLse.ptr, bytes: this.#lseElems * 4 });
        } else if (t.to === r) {
          receives = true;
          ops.push({
            kind: "recv",
            peer: t.from,
            ptr: this.#recvOut.ptr,
            bytes: this.#bytes(this.#qElems),
          });
          ops.push({
            kind: "recv",
            peer: t.from,
            ptr: this.#recvLse.ptr,
            bytes: this.#lseElems * 4,
          });
        }
      }
      this.#streams.commWaitsCompute();
      await this.comm.exchange(ops, this.#streams.comm);
      if (receives) {
        this.#streams.computeWaitsComm();
        op.attentionMerge(
          d,
          this.#outAcc.ptr,
          this.#lseAcc.ptr,
          this.#recvOut.ptr,
          this.#recvLse.ptr,
          this.sliceLen,
          this.geometry.numHeads,
          this.geometry.headDim,
          this.dtype,
          s0,
        );
        this.#streams.commWaitsCompute(); // the receive buffers are reused next step
      }
      if (!this.opts.overlap && s + 1 < steps.length) await fetch(s + 1);
    }
    op.convert(d, out, this.dtype, this.#outAcc.ptr, DType.f32, this.#qElems, s0);
    d.copy(lse, this.#lseAcc.ptr, this.#lseElems * 4, s0);
    this.#streams.computeWaitsComm(); // the caller may reuse q, k, v once this returns
  }

  async backward(
    { q, k, v, out, lse, docs }: AttentionTensors,
    { dout, dq, dk, dv }: AttentionGrads,
  ) {
    const d = this.device, r = this.rank, s0 = this.computeStream, steps = this.#bwd;
    const mine = { q, k, v, dout, out, lse };
    const fetch = (s: number) => this.#fetch(this.#live(steps[s], "fetch", docs), s, mine, true);
    // The first sends read what the caller has just computed on the compute stream.
    this.#streams.commWaitsCompute();
    await fetch(0);
    for (let s = 0; s < steps.length; s++) {
      const slot = this.#slots[s % 2];
      this.#streams.computeWaitsComm();
      if (this.opts.overlap && s + 1 < steps.length) await fetch(s + 1);
      const task = steps[s].tasks.find((t) => t.worker === r);
      const shape = task ? this.#blockShape(task.q, task.kv, docs) : null;
      const ops: P2P[] = [];
      if (task && shape) {
        const ownQ = task.q === r, ownKv = task.kv === r;
        const qp = ownQ ? q : slot.q.ptr, dop = ownQ ? dout : slot.dout.ptr;
        const op_ = ownQ ? out : slot.out.ptr, lp = ownQ ? lse : slot.lse.ptr;
        const kp = ownKv ? k : slot.k.ptr, vp = ownKv ? v : slot.v.ptr;
        // Gradients go straight into this rank's accumulators when it owns the block, else into
        // zeroed partial buffers that travel to the owner.
        const dqp = ownQ ? dq : this.#dqPart.ptr;
        const dkp = ownKv ? dk : this.#dkPart.ptr, dvp = ownKv ? dv : this.#dvPart.ptr;
        if (!ownQ) d.memset(this.#dqPart.ptr, 0, this.#dqPart.bytes, s0);
        if (!ownKv) {
          d.memset(this.#dkPart.ptr, 0, this.#dkPart.bytes, s0);
          d.memset(this.#dvPart.ptr, 0, this.#dvPart.bytes, s0);
        }
        attentionBackward(
          d,
          dqp,
          dkp,
          dvp,
          dop,
          qp,
          kp,
          vp,
          op_,
          lp,
          shape,
          s0,
        );
      }
      let recvDq = false, recvDkv = false;
      for (const t of this.#live(steps[s], "results", docs)) {
        const send = t.from === r, recv = t.to === r;
        if (!send && !recv) continue;
        const kind = send ? "send" : "recv", peer = send ? t.to : t.from;
        if (t.payload === "dq") {
          ops.push({
            kind,
            peer,
            ptr: send ? this.#dqPart.ptr : this.#recvDq.ptr,
            bytes: this.#qElems * 4,
          });
          recvDq ||= recv;
        } else if (t.payload === "dkv") {
          ops.push({
            kind,
            peer,
            ptr: send ? this.#dkPart.ptr : this.#recvDk.ptr,
            bytes: this.#kvElems * 4,
          });
          ops.push({
            kind,
            peer,
            ptr: send ? this.#dvPart.ptr : this.#recvDv.ptr,
            bytes: this.#kvElems * 4,
          });
          recvDkv ||= recv;
        }
      }
      this.#streams.commWaitsCompute();
      await this.comm.exchange(ops, this.#streams.comm);
      if (recvDq || recvDkv) {
        this.#streams.computeWaitsComm();
        if (recvDq) axpyF32(d, dq, this.#recvDq.ptr, 1, this.#qElems, s0);
        if (recvDkv) {
          axpyF32(d, dk, this.#recvDk.ptr, 1, this.#kvElems, s0);
          axpyF32(d, dv, this.#recvDv.ptr, 1, this.#kvElems, s0);
        }
        this.#streams.commWaitsCompute();
      }
      if (!this.opts.overlap && s + 1 < steps.length) await fetch(s + 1);
    }
    this.#streams.computeWaitsComm(); // the caller may overwrite q, k, v, dout once this returns
  }
}
