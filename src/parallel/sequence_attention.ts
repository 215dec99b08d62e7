/**
 * The sequence-parallel attention a run uses, built in one place for `train` and `plan`: the zigzag
 * ring or the contiguous DistAttn, optionally run in head groups (HeadGroupedAttention). Each is
 * reserved in its own memory plan and allocated after the run's memory check.
 */
import type { Device, DevicePtr } from "../runtime/device.ts";
import type { MemoryPlan, Slot } from "../runtime/memory.ts";
import { DType, DTYPE_BYTES } from "../runtime/ops.ts";
import type {
  Attention,
  AttentionGeometry,
  AttentionGrads,
  AttentionTensors,
} from "../model/attention.ts";
import type { Communicator } from "../comm/comm.ts";
import { DistAttention } from "./distattn.ts";
import { ZigzagAttention } from "./zigzag.ts";

/** An attention with buffers of its own: reserved in `plan`, allocated by allocate(). */
export interface SequenceAttention extends Attention {
  readonly plan: MemoryPlan;
  allocate(): void;
  free(): void;
}

export interface SequenceAttentionOptions {
  layout: "zigzag" | "contiguous";
  /** Contiguous layout only: the load-balanced schedule, and transfers overlapped with compute. */
  balanced: boolean;
  overlap: boolean;
  /** Heads run in this many groups, one after the other (1: all at once). */
  headGroups: number;
}

/** The unallocated attention of a rank holding `sliceLen` tokens of each sequence. */
export function buildSequenceAttention(
  device: Device,
  geometry: AttentionGeometry,
  sliceLen: number,
  dtype: DType,
  comm: Communicator,
  o: SequenceAttentionOptions,
): SequenceAttention {
  checkHeadGroups(geometry, o.headGroups);
  const G = o.headGroups;
  const group: AttentionGeometry = {
    numHeads: geometry.numHeads / G,
    numKvHeads: geometry.numKvHeads / G,
    headDim: geometry.headDim,
  };
  const inner = o.layout === "zigzag"
    ? new ZigzagAttention(device, group, sliceLen, dtype, comm, 0n, false)
    : new DistAttention(
      device,
      group,
      sliceLen,
      dtype,
      comm,
      { balanced: o.balanced, overlap: o.overlap },
      0n,
      false,
    );
  return G === 1 ? inner : new HeadGroupedAttention(device, geometry, sliceLen, dtype, G, inner);
}

/** Throws unless `groups` splits the query and the key/value heads evenly. */
export function checkHeadGroups(geometry: AttentionGeometry, groups: number): void {
  if (!Number.isInteger(groups) || groups < 1 || geometry.numKvHeads % groups !== 0) {
    throw new Error(
      `--attention-head-groups ${groups} must divide the model's ${geometry.numKvHeads} key/value ` +
        `heads (and so its ${geometry.numHeads} query heads)`,
    );
  }
}

/**
 * Attention in head groups: `inner` is built for numHeads/G query and numKvHeads/G key/value heads
 * and runs G times, on contiguous copies of one group's heads, so its per-token buffers (the ring's
 * K/V slots and fp32 accumulators, DistAttn's partials) are G times smaller. Heads do not interact
 * in attention and group g's query heads use exactly group g's key/value heads, so the result is
 * the same; the price is strided copies of q, k, v and out (and dout, dq, dk, dv in backward). The
 * LSE of group g is its rows of the [heads, tokens] LSE, in the inner attention's own layout.
 */
export class HeadGroupedAttention implements SequenceAttention {
  readonly plan: MemoryPlan;
  readonly #q: Slot;
  readonly #k: Slot;
  readonly #v: Slot;
  readonly #out: Slot;
  readonly #dout: Slot;
  readonly #dq: Slot;
  readonly #dk: Slot;
  readonly #dv: Slot;

  constructor(
    readonly device: Device,
    readonly geometry: AttentionGeometry,
    /** Tokens of each sequence on this rank. */
    readonly tokens: number,
    readonly dtype: DType,
    readonly groups: number,
    readonly inner: SequenceAttention,
  ) {
    checkHeadGroups(geometry, groups);
    this.plan = inner.plan; // the group buffers are allocated together with the inner ones
    const kind = "attention head groups", T = tokens, f32 = DType.f32;
    const qw = (geometry.numHeads / groups) * geometry.headDim,
      kvw = (geometry.numKvHeads / groups) * geometry.headDim;
    this.#q = this.plan.reserve(kind, "q", T * qw, dtype);
    this.#k = this.plan.reserve(kind, "k", T * kvw, dtype);
    this.#v = this.plan.reserve(kind, "v", T * kvw, dtype);
    this.#out = this.plan.reserve(kind, "out", T * qw, dtype);
    this.#dout = this.plan.reserve(kind, "dout", T * qw, dtype);
    this.#dq = this.plan.reserve(kind, "dq", T * qw, f32);
    this.#dk = this.plan.reserve(kind, "dk", T * kvw, f32);
    this.#dv = this.plan.reserve(kind, "dv", T * kvw, f32);
  }

  allocate(): void {
    this.inner.allocate();
  }

  free(): void {
    this.inner.free();
  }

  /** Copies group g of a [tokens, heads, head_dim] tensor in (`out` false) or out of a slot. */
  #move(full: DevicePtr, slot: Slot, heads: number, g: number, bytes: number, out: boolean) {
    const row = heads * this.geometry.headDim * bytes, width = row / this.groups;
    const at = full + BigInt(g * width);
    if (out) this.device.copy2d(at, row, slot.ptr, width, width, this.tokens);
    else this.device.copy2d(slot.ptr, width, at, row, width, this.tokens);
  }

  /**
   * The inner attention's tensors for group g: the slots, g's rows of the caller's LSE, and the
   * sequence's documents (the same for every head).
   */
  #group({ lse, docs }: AttentionTensors, g: number): AttentionTensors {
    return {
      docs,
      q: this.#q.ptr,
      k: this.#k.ptr,
      v: this.#v.ptr,
      out: this.#out.ptr,
      // The LSE is [heads, tokens] fp32 as the caller sees it: the group's heads are its rows.
      lse: lse + BigInt(g * (this.geometry.numHeads / this.groups) * this.tokens * 4),
    };
  }

  async forward(t: AttentionTensors) {
    const { q, k, v, out } = t;
    const nh = this.geometry.numHeads, nkv = this.geometry.numKvHeads, b = DTYPE_BYTES[this.dtype];
    for (let g = 0; g < this.groups; g++) {
      this.#move(q, this.#q, nh, g, b, false);
      this.#move(k, this.#k, nkv, g, b, false);
      this.#move(v, this.#v, nkv, g, b, false);
      // The inner attention orders its transfers after these copies and returns with the compute
      // stream waiting for them, so the next group may overwrite the slots.
      await this.inner.forward(this.#group(t, g));
      this.#move(out, this.#out, nh, g, b, true);
    }
  }

  async backward(t: AttentionTensors, { dout, dq, dk, dv }: AttentionGrads) {
    const { q, k, v, out } = t;
    const nh = this.geometry.numHeads, nkv = this.geometry.numKvHeads, b = DTYPE_BYTES[this.dtype];
    const inputs: [DevicePtr, Slot, number][] = [
      [q, this.#q, nh],
      [k, this.#k, nkv],
      [v, this.#v, nkv],
      [out, this.#out, nh],
      [dout, this.#dout, nh],
    ];
    for (let g = 0; g < this.groups; g++) {
      for (const [full, slot, heads] of inputs) this.#move(full, slot, heads, g, b, false);
      // dq, dk, dv accumulate: the group's current values go in and come back with the additions.
      this.#move(dq, this.#dq, nh, g, 4, false);
      this.#move(dk, this.#dk, nkv, g, 4, false);
      this.#move(dv, this.#dv, nkv, g, 4, false);
      const grads = { dout: this.#dout.ptr, dq: this.#dq.ptr, dk: this.#dk.ptr, dv: this.#dv.ptr };
      await this.inner.backward(this.#group(t, g), grads);
      this.#move(dq, this.#dq, nh, g, 4, true);
      this.#move(dk, this.#dk, nkv, g, 4, true);
      this.#move(dv, this.#dv, nkv, g, 4, true);
    }
  }
}
