/**
 * The LM head and the cross-entropy loss, tiled: logits exist for one (token tile, vocabulary
 * chunk) at a time in an fp32 buffer, so their memory does not grow with the sequence or the
 * vocabulary. The loss is an online log-sum-exp over the vocabulary chunks.
 */
import type { Device } from "../runtime/device.ts";
import * as op from "../runtime/ops.ts";
import { DType } from "../runtime/ops.ts";
import type { Tensor } from "../runtime/tensor.ts";

/** The head's buffers (the model shell reserves them). */
export interface HeadBuffers {
  /** The final norm's output [tokens, hidden], compute dtype. */
  xf: Tensor;
  /** int32 labels [tokens]; negative: ignored. */
  labels: Tensor;
  /** fp32 [tile, vocabChunk] logits of one tile; dlogits its compute-dtype copy (bf16 mode). */
  logits: Tensor;
  dlogits: Tensor;
  /** Per-token running max, sum and target logit of the online log-sum-exp, fp32 [tokens]. */
  ceM: Tensor;
  ceS: Tensor;
  ceTarget: Tensor;
  /** Per-token losses and log-sum-exps, fp32 [tokens]. */
  ceLoss: Tensor;
  ceLse: Tensor;
  /** d(final norm output), fp32 [tokens, hidden]. */
  dxfF32: Tensor;
  /** One fp32 for reductions. */
  scalar: Tensor;
}

export class LmHead {
  constructor(
    readonly device: Device,
    readonly b: HeadBuffers,
    readonly tokens: number,
    readonly hidden: number,
    readonly vocab: number,
    readonly vocabChunk: number,
    readonly tile: number,
    readonly dtype: DType,
  ) {}

  /** Calls fn(t0, n, v0, vc) for every (token tile, vocabulary chunk). */
  tiles(fn: (t0: number, n: number, v0: number, vc: number) => void): void {
    const T = this.tokens, V = this.vocab, C = this.vocabChunk, tile = this.tile;
    for (let v0 = 0; v0 < V; v0 += C) {
      for (let t0 = 0; t0 < T; t0 += tile) fn(t0, Math.min(tile, T - t0), v0, Math.min(C, V - v0));
    }
  }

  /** Logits of tokens [t0, t0+n) against vocabulary rows [v0, v0+vc) of `w` [V, H]. */
  logitsTile(w: Tensor, t0: number, n: number, v0: number, vc: number): void {
    const H = this.hidden, x = this.b.xf.rows(t0, n).ptr, wRows = w.rows(v0, vc).ptr;
    const c = this.b.logits.ptr, dt = this.dtype, f32 = DType.f32;
    op.gemm(this.device, {
      transA: false,
      transB: true,
      m: n,
      n: vc,
      k: H,
      a: x,
      lda: H,
      b: wRows,
      ldb: H,
      c,
      ldc: vc,
      abType: dt,
      cType: f32,
    });
  }

  /** Sum of the per-token losses (ignored labels count 0); per-token values stay in ceLoss, ceLse. */
  lossSum(w: Tensor): number {
    const d = this.device, T = this.tokens, b = this.b;
    d.upload(b.ceM.ptr, new Float32Array(T).fill(-Infinity));
    d.memset(b.ceS.ptr, 0, T * 4);
    d.memset(b.ceTarget.ptr, 0, T * 4);
    this.tiles((t0, n, v0, vc) => {
      this.logitsTile(w, t0, n, v0, vc);
      const [m, s, target] = [b.ceM, b.ceS, b.ceTarget].map((t) => t.rows(t0, n).ptr);
      op.ceChunkForward(d, m, s, target, b.logits.ptr, b.labels.rows(t0, n).ptr, n, vc, v0);
    });
    op.ceFinalize(
      d,
      b.ceLoss.ptr,
      b.ceLse.ptr,
      b.ceM.ptr,
      b.ceS.ptr,
      b.ceTarget.ptr,
      b.labels.ptr,
      T,
    );
    d.memset(b.scalar.ptr, 0, 4);
    op.sum(d, b.scalar.ptr, b.ceLoss.ptr, T);
    return d.download(new Float32Array(1), b.scalar.ptr)[0];
  }

  /**
   * Backward of lossScale * (sum of token losses), tile by tile: dlogits = scale (softmax -
   * onehot); dxfF32 = dlogits W (zeroed first); dW += dlogits^T xf into `gw` [V, H] fp32.
   */
  backward(w: Tensor, gw: Tensor, lossScale: number): void {
    const d = this.device, b = this.b, H = this.hidden, dt = this.dtype, f32 = DType.f32;
    d.memset(b.dxfF32.ptr, 0, this.tokens * H * 4);
    this.tiles((t0, n, v0, vc) => {
      this.logitsTile(w, t0, n, v0, vc);
      op.ceChunkBackward(
        d,
        b.logits.ptr,
        b.ceLse.rows(t0, n).ptr,
        b.labels.rows(t0, n).ptr,
        n,
        vc,
        v0,
        lossScale,
      );
      if (dt !== f32) op.convert(d, b.dlogits.ptr, dt, b.logits.ptr, f32, n * vc);
      const dy = b.dlogits.ptr, wRows = w.rows(v0, vc).ptr, gRows = gw.rows(v0, vc).ptr;
      const dx = b.dxfF32.rows(t0, n).ptr, x = b.xf.rows(t0, n).ptr;
      op.gemm(d, {
        transA: false,
        transB: false,
        m: n,
        n: H,
        k: vc,
        a: dy,
        lda: vc,
        b: wRows,
        ldb: H,
        beta: 1,
        c: dx,
        ldc: H,
        abType: dt,
        cType: f32,
      });
      op.gemm(d, {
        transA: true,
        transB: false,
        m: vc,
        n: H,
        k: n,
        a: dy,
        lda: vc,
        b: x,
        ldb: H,
        beta: 1,
        c: gRows,
        ldc: H,
        abType: dt,
        cType: f32,
      });
    });
  }

  /** Full-vocabulary logits [tokens, V] in fp32 (for tests and evaluation). */
  fullLogits(w: Tensor): Float32Array {
    const T = this.tokens, V = this.vocab;
    const out = new Float32Array(T * V);
    const tile = new Float32Array(this.tile * this.vocabChunk);
    this.tiles((t0, n, v0, vc) => {
      this.logitsTile(w, t0, n, v0, vc);
      this.device.download(tile.subarray(0, n * vc), this.b.logits.ptr);
      for (let t = 0; t < n; t++) out.set(tile.subarray(t * vc, (t + 1) * vc), (t0 + t) * V + v0);
    });
    return out;
  }
}
