/**
 * One Llama decoder layer, forward and hand-written backward (the forward in reverse, as in
 * llm.c). The model shell (llama.ts) owns the buffers and the order of layers; this file owns what
 * one layer computes. Activations are B*T token rows, row-major [tokens, width].
 *
 * Backward recomputes the layer's cheap parts (norms, projections, RoPE, MLP) from its saved input
 * and attention output, but never attention itself at the default "attention" checkpoint boundary.
 */
import type { Device, DevicePtr } from "../runtime/device.ts";
import * as op from "../runtime/ops.ts";
import { DType } from "../runtime/ops.ts";
import type { Tensor } from "../runtime/tensor.ts";
import type { LlamaConfig } from "./config.ts";
import type { Attention, AttentionTensors, SequenceDocuments } from "./attention.ts";

/** Layer l's weights (or their fp32 gradients), resolved once per layer. */
export interface LayerWeights {
  ln1: DevicePtr;
  q: DevicePtr;
  k: DevicePtr;
  v: DevicePtr;
  o: DevicePtr;
  ln2: DevicePtr;
  gate: DevicePtr;
  up: DevicePtr;
  down: DevicePtr;
}

/** The Hugging Face name (after `model.layers.N.`) of each layer weight. */
export const LAYER_PARAM_NAMES: Readonly<Record<keyof LayerWeights, string>> = {
  ln1: "input_layernorm.weight",
  q: "self_attn.q_proj.weight",
  k: "self_attn.k_proj.weight",
  v: "self_attn.v_proj.weight",
  o: "self_attn.o_proj.weight",
  ln2: "post_attention_layernorm.weight",
  gate: "mlp.gate_proj.weight",
  up: "mlp.up_proj.weight",
  down: "mlp.down_proj.weight",
};

/** What a layer keeps for backward: its input x, attention output o [T, qDim] and lse [B*nh, S]. */
export interface LayerSaved {
  x: Tensor;
  o: Tensor;
  lse: Tensor;
  /** The layer's output (the next layer's input). */
  y: Tensor;
}

/** The per-layer intermediates, recomputed in backward (one shared set). */
export interface LayerScratch {
  ln1: Tensor;
  rstd1: Tensor;
  q: Tensor;
  k: Tensor;
  v: Tensor;
  xMid: Tensor;
  ln2: Tensor;
  rstd2: Tensor;
  /** MLP intermediates of one token tile: [mlpTile, intermediate]. */
  gate: Tensor;
  up: Tensor;
  h: Tensor;
  tmp: Tensor;
}

/** Backward's buffers. dres holds d(layer output) on entry and d(layer input) on exit. */
export interface LayerGradScratch {
  dres: Tensor;
  dh: Tensor;
  dgate: Tensor;
  dup: Tensor;
  /** d(norm output) summed over the linears that read it, fp32 (may share dqF32's buffer). */
  dlnF32: Tensor;
  dln: Tensor;
  dO: Tensor;
  dqF32: Tensor;
  dkF32: Tensor;
  dvF32: Tensor;
  /** dq, dk, dv in the compute dtype (the fp32 buffers themselves in fp32; q, k, v's in bf16). */
  dq: Tensor;
  dk: Tensor;
  dv: Tensor;
}

export interface LayerShape {
  dtype: DType;
  batch: number;
  seqLen: number;
  mlpTile: number;
}

export class DecoderLayer {
  readonly tokens: number;
  readonly qDim: number;
  readonly kvDim: number;

  constructor(
    readonly device: Device,
    readonly cfg: LlamaConfig,
    readonly shape: LayerShape,
    readonly s: LayerScratch,
    readonly g: LayerGradScratch,
    /** Token positions [tokens] (int32) and the RoPE inverse frequencies. */
    readonly rope: { pos: Tensor; invFreq: Tensor },
    /** The documents of each sequence of the current micro-batch (null: plain causal). */
    readonly documents: () => readonly SequenceDocuments[] | null,
  ) {
    this.tokens = shape.batch * shape.seqLen;
    this.qDim = cfg.numHeads * cfg.headDim;
    this.kvDim = cfg.numKvHeads * cfg.headDim;
  }

  /** Everything up to attention: ln1, then q, k, v after RoPE. */
  preAttention(io: LayerSaved, w: LayerWeights): void {
    const d = this.device, c = this.cfg, s = this.s, dt = this.shape.dtype, T = this.tokens;
    const H = c.hiddenSize, pos = this.rope.pos.ptr, inv = this.rope.invFreq.ptr;
    op.rmsnormForward(d, s.ln1.ptr, s.rstd1.ptr, io.x.ptr, w.ln1, T, H, c.rmsNormEps, dt);
    op.linear(d, s.q.ptr, s.ln1.ptr, w.q, T, H, this.qDim, dt);
    op.linear(d, s.k.ptr, s.ln1.ptr, w.k, T, H, this.kvDim, dt);
    op.linear(d, s.v.ptr, s.ln1.ptr, w.v, T, H, this.kvDim, dt);
    op.rope(d, s.q.ptr, pos, inv, T, c.numHeads, c.headDim, false, dt);
    op.rope(d, s.k.ptr, pos, inv, T, c.numKvHeads, c.headDim, false, dt);
  }

  /** Attention of every sequence of the micro-batch: io.o and io.lse from q, k, v. */
  async attend(attention: Attention, io: LayerSaved): Promise<void> {
    for (let b = 0; b < this.shape.batch; b++) await attention.forward(this.#sequence(io, b));
  }

  /**
   * Everything after attention: O-proj, residual, ln2, and (unless `mlp` is false, as in
   * backward's recomputation) the MLP tile by tile with its residual into io.y.
   */
  postAttention(io: LayerSaved, w: LayerWeights, mlp = true): void {
    const d = this.device, c = this.cfg, s = this.s, dt = this.shape.dtype, T = this.tokens;
    const H = c.hiddenSize, I = c.intermediateSize;
    op.linear(d, s.tmp.ptr, io.o.ptr, w.o, T, this.qDim, H, dt);
    op.add(d, s.xMid.ptr, io.x.ptr, s.tmp.ptr, T * H, dt);
    op.rmsnormForward(d, s.ln2.ptr, s.rstd2.ptr, s.xMid.ptr, w.ln2, T, H, c.rmsNormEps, dt);
    if (!mlp) return;
    this.#tiles((t0, n) => {
      this.#mlpTileForward(w, s.ln2.rows(t0, n), n);
      op.linear(d, s.tmp.rows(t0, n).ptr, s.h.ptr, w.down, n, I, H, dt);
    });
    op.add(d, io.y.ptr, s.xMid.ptr, s.tmp.ptr, T * H, dt);
  }

  /**
   * Backward of the layer into the fp32 gradients `gw` (accumulated); g.dres holds d(io.y) on
   * entry and d(io.x) on exit. `recomputeAttention`: the classic layer checkpoint boundary.
   */
  async backward(
    attention: Attention,
    io: LayerSaved,
    w: LayerWeights,
    gw: LayerWeights,
    recomputeAttention: boolean,
  ): Promise<void> {
    const d = this.device, c = this.cfg, s = this.s, g = this.g, dt = this.shape.dtype;
    const T = this.tokens, H = c.hiddenSize, I = c.intermediateSize;
    const qDim = this.qDim, kvDim = this.kvDim, f32 = DType.f32;
    const pos = this.rope.pos.ptr, inv = this.rope.invFreq.ptr;

    // Recompute the layer's cheap parts from its saved input and attention output.
    this.preAttention(io, w);
    if (recomputeAttention) await this.attend(attention, io);
    this.postAttention(io, w, false);

    // MLP, tile by tile, each tile's intermediates recomputed from ln2.
    this.#tiles((t0, n) => {
      this.#mlpTileForward(w, s.ln2.rows(t0, n), n);
      op.linearBackward(d, g.dh.ptr, gw.down, g.dres.rows(t0, n).ptr, s.h.ptr, w.down, n, I, H, dt);
      op.swigluBackward(d, g.dgate.ptr, g.dup.ptr, g.dh.ptr, s.gate.ptr, s.up.ptr, n * I, dt);
      this.#sharedInputBackward(
        s.ln2,
        [[g.dgate, w.gate, gw.gate, I], [
          g.dup,
          w.up,
          gw.up,
          I,
        ]],
        t0,
        n,
      );
    });
    op.convert(d, g.dln.ptr, dt, g.dlnF32.ptr, f32, T * H);
    op.rmsnormBackward(d, g.dres.ptr, gw.ln2, g.dln.ptr, s.xMid.ptr, w.ln2, s.rstd2.ptr, T, H, dt);

    // Attention block: out = o_proj(attn(rope(q), rope(k), v)), added to the residual.
    op.linearBackward(d, g.dO.ptr, gw.o, g.dres.ptr, io.o.ptr, w.o, T, qDim, H, dt);
    for (const t of [g.dqF32, g.dkF32, g.dvF32]) d.memset(t.ptr, 0, t.bytes);
    const S = this.shape.seqLen;
    for (let b = 0; b < this.shape.batch; b++) {
      await attention.backward(this.#sequence(io, b), {
        dout: g.dO.rows(b * S, S).ptr,
        dq: g.dqF32.rows(b * S, S).ptr,
        dk: g.dkF32.rows(b * S, S).ptr,
        dv: g.dvF32.rows(b * S, S).ptr,
      });
    }
    // RoPE is a rotation: its backward rotates the gradient back (in fp32, before rounding).
    op.rope(d, g.dqF32.ptr, pos, inv, T, c.numHeads, c.headDim, true, f32);
    op.rope(d, g.dkF32.ptr, pos, inv, T, c.numKvHeads, c.headDim, true, f32);
    if (dt !== f32) {
      op.convert(d, g.dq.ptr, dt, g.dqF32.ptr, f32, T * qDim);
      op.convert(d, g.dk.ptr, dt, g.dkF32.ptr, f32, T * kvDim);
      op.convert(d, g.dv.ptr, dt, g.dvF32.ptr, f32, T * kvDim);
    }
    this.#sharedInputBackward(s.ln1, [
      [g.dq, w.q, gw.q, qDim],
      [g.dk, w.k, gw.k, kvDim],
      [g.dv, w.v, gw.v, kvDim],
    ]);
    op.convert(d, g.dln.ptr, dt, g.dlnF32.ptr, f32, T * H);
    op.rmsnormBackward(d, g.dres.ptr, gw.ln1, g.dln.ptr, io.x.ptr, w.ln1, s.rstd1.ptr, T, H, dt);
  }

  /** Calls fn(t0, n) for each MLP token tile. */
  #tiles(fn: (t0: number, n: number) => void): void {
    const T = this.tokens, tile = this.shape.mlpTile;
    for (let t0 = 0; t0 < T; t0 += tile) fn(t0, Math.min(tile, T - t0));
  }

  /** gate, up and h = silu(gate) * up of the `n` token rows `ln2`. */
  #mlpTileForward(w: LayerWeights, ln2: Tensor, n: number): void {
    const d = this.device, s = this.s, dt = this.shape.dtype;
    const H = this.cfg.hiddenSize, I = this.cfg.intermediateSize;
    op.linear(d, s.gate.ptr, ln2.ptr, w.gate, n, H, I, dt);
    op.linear(d, s.up.ptr, ln2.ptr, w.up, n, H, I, dt);
    op.swigluForward(d, s.h.ptr, s.gate.ptr, s.up.ptr, n * I, dt);
  }

  /** Layer l's attention tensors of sequence b of the micro-batch. */
  #sequence(io: LayerSaved, b: number): AttentionTensors {
    const S = this.shape.seqLen, nh = this.cfg.numHeads, s = this.s;
    return {
      q: s.q.rows(b * S, S).ptr,
      k: s.k.rows(b * S, S).ptr,
      v: s.v.rows(b * S, S).ptr,
      out: io.o.rows(b * S, S).ptr,
      lse: io.lse.rows(b * nh, nh).ptr,
      docs: this.documents()?.[b],
    };
  }

  /**
   * Backward of linears reading the same input x [T, H], for the `n` token rows from `row0` (each
   * dy holds exactly those rows): [dy, weight, its gradient, output features] each. Accumulates
   * weight gradients, and writes rows of g.dlnF32 = sum of dy_i W_i in fp32 (the caller converts
   * it to the compute dtype).
   */
  #sharedInputBackward(
    x: Tensor,
    parts: [Tensor, DevicePtr, DevicePtr, number][],
    row0 = 0,
    n = this.tokens,
  ): void {
    const d = this.device, dt = this.shape.dtype, H = this.cfg.hiddenSize, f32 = DType.f32;
    const dx = this.g.dlnF32.rows(row0, n).ptr, xRows = x.rows(row0, n).ptr;
    parts.forEach(([dy, w, gw, out], i) => {
      const beta = i === 0 ? 0 : 1;
      op.gemm(d, {
        transA: false,
        transB: false,
        m: n,
        n: H,
        k: out,
        a: dy.ptr,
        lda: out,
        b: w,
        ldb: H,
        beta,
        c: dx,
        ldc: H,
        abType: dt,
        cType: f32,
      });
      op.gemm(d, {
        transA: true,
        transB: false,
        m: out,
        n: H,
        k: n,
        a: dy.ptr,
        lda: out,
        b: xRows,
        ldb: H,
        beta: 1,
        c: gw,
        ldc: H,
        abType: dt,
        cType: f32,
      });
    });
  }
}
