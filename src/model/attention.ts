/**
 * The attention seam between the model and the sequence-parallel algorithms: the model calls an
 * `Attention` per sequence of its micro-batch; LocalAttention runs the whole sequence on this
 * device, src/parallel's DistAttn and zigzag ring split it over ranks. Both sides import this file and
 * not each other.
 */
import type { Device, DevicePtr } from "../runtime/device.ts";
import * as op from "../runtime/ops.ts";
import type { DType } from "../runtime/ops.ts";
import type { LlamaConfig } from "./config.ts";

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

/** Plain causal attention of a whole sequence on this device. */
export class LocalAttention implements Attention {
  readonly shape: op.AttentionShape;
  constructor(readonly device: Device, cfg: LlamaConfig, seqLen: number, dtype: DType) {
    this.shape = {
      tq: seqLen,
      tk: seqLen,
      nh: cfg.numHeads,
      nkv: cfg.numKvHeads,
      hd: cfg.headDim,
      qPos0: 0,
      kPos0: 0,
      scale: 1 / Math.sqrt(cfg.headDim),
      dtype,
    };
  }
  forward({ q, k, v, out, lse }: AttentionTensors): void {
    op.attentionForward(this.device, out, lse, q, k, v, this.shape);
  }
  backward({ q, k, v, out, lse }: AttentionTensors, { dout, dq, dk, dv }: AttentionGrads): void {
    op.attentionBackward(this.device, dq, dk, dv, dout, q, k, v, out, lse, this.shape);
  }
}
