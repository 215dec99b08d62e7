/**
 * The attention seam between the model and the sequence-parallel algorithms: the model calls an
 * `Attention` per sequence of its micro-batch; LocalAttention runs the whole sequence on this
 * device, src/dist's DistAttn and zigzag ring split it over ranks. Both sides import this file and
 * not each other.
 */
import type { Device, DevicePtr } from "../runtime/device.ts";
import * as op from "../runtime/ops.ts";
import type { DType } from "../runtime/ops.ts";
import type { LlamaConfig } from "./config.ts";

/** Attention over one sequence's (or one rank's slice of a sequence's) tokens. */
export interface Attention {
  /** out [T,nh,hd], lse [nh,T] from q [T,nh,hd], k and v [T,nkv,hd]; `seq` indexes the batch. */
  forward(
    out: DevicePtr,
    lse: DevicePtr,
    q: DevicePtr,
    k: DevicePtr,
    v: DevicePtr,
  ): void | Promise<void>;
  /** dq, dk, dv (fp32, accumulated) from dout and the saved out and lse. */
  backward(
    dq: DevicePtr,
    dk: DevicePtr,
    dv: DevicePtr,
    dout: DevicePtr,
    q: DevicePtr,
    k: DevicePtr,
    v: DevicePtr,
    out: DevicePtr,
    lse: DevicePtr,
  ): void | Promise<void>;
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
  forward(out: DevicePtr, lse: DevicePtr, q: DevicePtr, k: DevicePtr, v: DevicePtr): void {
    op.attentionForward(this.device, out, lse, q, k, v, this.shape);
  }
  backward(
    dq: DevicePtr,
    dk: DevicePtr,
    dv: DevicePtr,
    dout: DevicePtr,
    q: DevicePtr,
    k: DevicePtr,
    v: DevicePtr,
    out: DevicePtr,
    lse: DevicePtr,
  ): void {
    op.attentionBackward(this.device, dq, dk, dv, dout, q, k, v, out, lse, this.shape);
  }
}
