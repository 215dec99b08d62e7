/**
 * The attention seam between the model and the sequence-parallel algorithms: the model calls an
 * `Attention` per sequence of its micro-batch; LocalAttention runs the whole sequence on this
 * device, src/parallel's DistAttn and zigzag ring split it over ranks. Both sides import this file and
 * not each other.
 */
import type { Device, DevicePtr } from "../runtime/device.ts";
import type * as op from "../runtime/ops.ts";
import type { DType } from "../runtime/ops.ts";
import { blockPairVisible, type DocStarts } from "./documents.ts";
import { attentionBackward, attentionForward } from "./document_attention.ts";

/**
 * The documents of one sequence (src/model/documents.ts has the rule): the global starts of the
 * whole sequence, on the host for deciding which block pairs to skip and on the device for the
 * kernels. Every rank of a sequence holds the same starts. A sliding window (Mistral) rides along:
 * a windowed model without documents has the single start 0 and the window.
 */
export interface SequenceDocuments {
  /** Global document starts of the whole sequence (ascending, the first 0). */
  starts: DocStarts;
  /** Sliding window (documents.ts has the rule): absent or 0, none. */
  window?: number;
  /** The same starts as the kernels read them (int64 device memory). */
  device: op.AttentionDocuments;
}

/**
 * What the attention needs of a model: query heads, key/value heads (grouped-query attention when
 * fewer) and the size of one head. Every family's config carries these three; the sequence-parallel
 * algorithms (src/parallel), the planner's attention sizing and the attention benchmark take only
 * this, never a family's whole config.
 */
export interface AttentionGeometry {
  readonly numHeads: number;
  readonly numKvHeads: number;
  readonly headDim: number;
}

/** The attention geometry of any config that carries one (a copy without the other fields). */
export function attentionGeometry(g: AttentionGeometry): AttentionGeometry {
  return { numHeads: g.numHeads, numKvHeads: g.numKvHeads, headDim: g.headDim };
}

/** The documents as a block pair's shape carries them: device starts, the host copy, the window. */
function withHostStarts(docs: SequenceDocuments): op.AttentionDocuments {
  return { ...docs.device, host: docs.starts, window: docs.window };
}

/**
 * The attention shape of the block pair (queries [qPos0, qPos0 + tq), keys [kPos0, kPos0 + tk)) with
 * the sequence's documents (and window), or null when no query of the block sees a key of it (skip
 * the pair).
 * Without documents it is the plain causal block pair (keys entirely after the queries: null).
 */
export function blockPair(
  shape: op.AttentionShape,
  docs: SequenceDocuments | undefined,
): op.AttentionShape | null {
  const { qPos0, kPos0, tq, tk } = shape;
  if (!docs) return kPos0 < qPos0 + tq ? shape : null;
  if (!blockPairVisible(docs.starts, qPos0, qPos0 + tq, kPos0, kPos0 + tk, docs.window)) {
    return null;
  }
  return { ...shape, docs: withHostStarts(docs) };
}

/**
 * The tensors of one sequence's attention (or of this rank's slice of it): q [T,nh,hd], k and v
 * [T,nkv,hd] in the compute dtype; out [T,nh,hd] and its log-sum-exp lse [nh,T] (fp32), which
 * forward writes and backward reads.
 */
export interface AttentionTensors {
  q: DevicePtr;
  k: DevicePtr;
  v: DevicePtr;
  out: DevicePtr;
  lse: DevicePtr;
  /** The sequence's documents; absent: plain causal attention over the whole sequence. */
  docs?: SequenceDocuments;
}

/** What backward reads and adds to: dout like out; dq, dk, dv in fp32, accumulated (+=). */
export interface AttentionGrads {
  dout: DevicePtr;
  dq: DevicePtr;
  dk: DevicePtr;
  dv: DevicePtr;
}

/** Attention over one sequence's (or one rank's slice of a sequence's) tokens. */
export interface Attention {
  /** out and lse from q, k and v. */
  forward(t: AttentionTensors): void | Promise<void>;
  /** dq, dk, dv from dout and the tensors forward saw (out and lse included). */
  backward(t: AttentionTensors, g: AttentionGrads): void | Promise<void>;
}

/** Causal (or document-masked) attention of a whole sequence on this device. */
export class LocalAttention implements Attention {
  readonly shape: op.AttentionShape;
  constructor(readonly device: Device, g: AttentionGeometry, seqLen: number, dtype: DType) {
    this.shape = {
      tq: seqLen,
      tk: seqLen,
      nh: g.numHeads,
      nkv: g.numKvHeads,
      hd: g.headDim,
      qPos0: 0,
      kPos0: 0,
      scale: 1 / Math.sqrt(g.headDim),
      dtype,
    };
  }
  forward({ q, k, v, out, lse, docs }: AttentionTensors): void {
    attentionForward(this.device, out, lse, q, k, v, this.#shape(docs));
  }
  backward(
    { q, k, v, out, lse, docs }: AttentionTensors,
    { dout, dq, dk, dv }: AttentionGrads,
  ): void {
    attentionBackward(this.device, dq, dk, dv, dout, q, k, v, out, lse, this.#shape(docs));
  }
  #shape(docs: SequenceDocuments | undefined): op.AttentionShape {
    return docs ? { ...this.shape, docs: withHostStarts(docs) } : this.shape;
  }
}
