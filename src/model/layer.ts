/**
 * One decoder layer (Llama's, with the family options of config.ts: Qwen2's q/k/v biases, Qwen3's
 * per-head q/k RMSNorm), forward and hand-written backward (the forward in reverse, as in
 * llm.c). The model shell (decoder.ts) owns the buffers and the order of layers; this file owns what
 * one layer computes. Activations are B*T token rows, row-major [tokens, width].
 *
 * Backward recomputes the layer's cheap parts (norms, projections, RoPE, MLP) from its saved input
 * and attention output, but never attention itself at the default "attention" checkpoint boundary.
 *
 * Everything but attention runs in token tiles (`LayerShape.tile` rows at a time): the norms, the
 * projections, RoPE, the residual adds and the MLP are row-wise, so only what attention reads or
 * writes for the whole sequence exists for every token: q, k, v, the attention output and its
 * LSE, their gradients (dO and the fp32 dq, dk, dv that attention's backward accumulates), and
 * the residual stream (the layer's input and output, and backward's d(residual), which crosses
 * attention's backward). Every other intermediate is one tile's.
 */
import type { Device, DevicePtr } from "../runtime/device.ts";
import * as op from "../runtime/ops.ts";
import { DType } from "../runtime/ops.ts";
import type { Tensor } from "../runtime/tensor.ts";
import type { LayerParamKey, ModelConfig } from "./config.ts";
import type { Attention, AttentionTensors, SequenceDocuments } from "./attention.ts";

/**
 * Layer l's weights (or their fp32 gradients), resolved once per layer. The optional ones exist
 * when the config's options ask for them (config.ts, LAYER_PARAMS).
 */
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
  qBias?: DevicePtr;
  kBias?: DevicePtr;
  vBias?: DevicePtr;
  qNorm?: DevicePtr;
  kNorm?: DevicePtr;
}

// Every slot of the parameter table is a field of LayerWeights.
const _slots: Record<LayerParamKey, keyof LayerWeights> = {
  ln1: "ln1",
  q: "q",
  qBias: "qBias",
  k: "k",
  kBias: "kBias",
  v: "v",
  vBias: "vBias",
  qNorm: "qNorm",
  kNorm: "kNorm",
  o: "o",
  ln2: "ln2",
  gate: "gate",
  up: "up",
  down: "down",
};

/** What a layer keeps for backward: its input x, attention output o [T, qDim] and lse [B*nh, S]. */
export interface LayerSaved {
  x: Tensor;
  o: Tensor;
  lse: Tensor;
  /** The layer's output (the next layer's input). */
  y: Tensor;
}

/**
 * The per-layer intermediates, recomputed in backward (one shared set): q, k, v of every token
 * [tokens, qDim or kvDim] (attention reads them whole); the rest of one token tile, [tile, width].
 */
export interface LayerScratch {
  ln1: Tensor;
  rstd1: Tensor;
  q: Tensor;
  k: Tensor;
  v: Tensor;
  xMid: Tensor;
  ln2: Tensor;
  rstd2: Tensor;
  /** MLP intermediates of one token tile: [tile, intermediate]. */
  gate: Tensor;
  up: Tensor;
  h: Tensor;
  tmp: Tensor;
  /** Ones [tile] in the compute dtype: the bias add and its backward (q/k/v biases only). */
  ones?: Tensor;
  /**
   * q/k norms only: one tile's q and k before the norm ([tile, qDim], [tile, kvDim]), their
   * per-head rstd ([tile * heads], fp32), the norm output when recomputed in backward, and the
   * gradient before the norm.
   */
  qk?: {
    qRaw: Tensor;
    kRaw: Tensor;
    rstdQ: Tensor;
    rstdK: Tensor;
    qOut: Tensor;
    kOut: Tensor;
    dqRaw: Tensor;
    dkRaw: Tensor;
  };
}

/**
 * Backward's buffers. dres [tokens, hidden] holds d(layer output) on entry and d(layer input) on
 * exit; dO and the fp32 dq, dk, dv are of every token; dh, dgate, dup, dlnF32 and dln of one tile.
 */
export interface LayerGradScratch {
  dres: Tensor;
  dh: Tensor;
  dgate: Tensor;
  dup: Tensor;
  /**
   * d(norm output) of one tile summed over the linears that read it, fp32 [tile, hidden]. It may
   * be the first rows of dqF32's buffer (bf16 with qDim >= hidden): the MLP's backward writes it
   * before attention's backward zeroes dqF32, the QKV projections' after tile 0's dq has been
   * rounded out of those rows.
   */
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
  /** Token rows per tile of everything but attention (the `mlpTile` model option). */
  tile: number;
}

export class DecoderLayer {
  readonly tokens: number;
  readonly qDim: number;
  readonly kvDim: number;

  constructor(
    readonly device: Device,
    readonly cfg: ModelConfig,
    readonly shape: LayerShape,
    readonly s: LayerScratch,
    readonly g: LayerGradScratch,
    /** Token positions [tokens] (int32) and the RoPE inverse frequencies. */
    readonly rope: { pos: Tensor; invFreq: Tensor },
    /**
     * The documents of each sequence of the current micro-batch as layer `layer` attends over them
     * (with the layer's sliding window, if any; null: plain causal).
     */
    readonly documents: (layer: number) => readonly SequenceDocuments[] | null,
  ) {
    this.tokens = shape.batch * shape.seqLen;
    this.qDim = cfg.numHeads * cfg.headDim;
    this.kvDim = cfg.numKvHeads * cfg.headDim;
  }

  /** Everything up to attention, tile by tile: ln1, then q, k, v (of every token) after RoPE. */
  preAttention(io: LayerSaved, w: LayerWeights): void {
    const d = this.device, c = this.cfg, s = this.s, dt = this.shape.dtype;
    const inv = this.rope.invFreq.ptr;
    this.#tiles((t0, n) => {
      this.#norm1Tile(io, w, t0, n);
      const pos = this.rope.pos.rows(t0, n).ptr;
      const [q, k, v] = [s.q, s.k, s.v].map((t) => t.rows(t0, n).ptr);
      this.#projectQk(w, n, q, k);
      op.linear(d, v, s.ln1.ptr, w.v, n, c.hiddenSize, this.kvDim, dt);
      if (c.qkvBias) this.#addBias(v, w.vBias!, n, this.kvDim);
      op.rope(d, q, pos, inv, n, c.numHeads, c.headDim, false, dt);
      op.rope(d, k, pos, inv, n, c.numKvHeads, c.headDim, false, dt);
    });
  }

  /**
   * The tile's q and k from s.ln1 (n rows), before RoPE: the projections, their biases (Qwen2)
   * and the per-head q/k norms (Qwen3; s.qk keeps the raw q, k and their rstd), written to q, k.
   */
  #projectQk(w: LayerWeights, n: number, q: DevicePtr, k: DevicePtr): void {
    const d = this.device, c = this.cfg, s = this.s, dt = this.shape.dtype, H = c.hiddenSize;
    const qk = s.qk;
    const [qa, ka] = qk ? [qk.qRaw.ptr, qk.kRaw.ptr] : [q, k];
    op.linear(d, qa, s.ln1.ptr, w.q, n, H, this.qDim, dt);
    op.linear(d, ka, s.ln1.ptr, w.k, n, H, this.kvDim, dt);
    if (c.qkvBias) {
      this.#addBias(qa, w.qBias!, n, this.qDim);
      this.#addBias(ka, w.kBias!, n, this.kvDim);
    }
    if (qk) {
      const hd = c.headDim, eps = c.rmsNormEps;
      op.rmsnormForward(d, q, qk.rstdQ.ptr, qa, w.qNorm!, n * c.numHeads, hd, eps, dt);
      op.rmsnormForward(d, k, qk.rstdK.ptr, ka, w.kNorm!, n * c.numKvHeads, hd, eps, dt);
    }
  }

  /** y[n, out] += ones[n] x bias[out]: the bias of a linear, as a rank-1 GEMM. */
  #addBias(y: DevicePtr, bias: DevicePtr, n: number, out: number): void {
    const dt = this.shape.dtype;
    op.gemm(this.device, {
      transA: false,
      transB: false,
      m: n,
      n: out,
      k: 1,
      a: this.s.ones!.ptr,
      lda: 1,
      b: bias,
      ldb: out,
      beta: 1,
      c: y,
      ldc: out,
      abType: dt,
      cType: dt,
    });
  }

  /** gbias[out] += sum over the n rows of dy[n, out] (fp32 accumulator), as a GEMM with ones. */
  #biasBackward(gbias: DevicePtr, dy: DevicePtr, n: number, out: number): void {
    op.gemm(this.device, {
      transA: true,
      transB: false,
      m: out,
      n: 1,
      k: n,
      a: dy,
      lda: out,
      b: this.s.ones!.ptr,
      ldb: 1,
      beta: 1,
      c: gbias,
      ldc: 1,
      abType: this.shape.dtype,
      cType: DType.f32,
    });
  }

  /** Attention of every sequence of the micro-batch in layer `layer`: io.o and io.lse from q, k, v. */
  async attend(attention: Attention, io: LayerSaved, layer: number): Promise<void> {
    for (let b = 0; b < this.shape.batch; b++) {
      await attention.forward(this.#sequence(io, b, layer));
    }
  }

  /** Everything after attention, tile by tile: O-proj, residual, ln2, the MLP and its residual. */
  postAttention(io: LayerSaved, w: LayerWeights): void {
    const d = this.device, c = this.cfg, s = this.s, dt = this.shape.dtype;
    const H = c.hiddenSize, I = c.intermediateSize;
    this.#tiles((t0, n) => {
      this.#preMlpTile(io, w, t0, n);
      op.linear(d, s.tmp.ptr, s.h.ptr, w.down, n, I, H, dt);
      op.add(d, io.y.rows(t0, n).ptr, s.xMid.ptr, s.tmp.ptr, n * H, dt);
    });
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
    layer: number,
  ): Promise<void> {
    const d = this.device, c = this.cfg, s = this.s, g = this.g, dt = this.shape.dtype;
    const H = c.hiddenSize, I = c.intermediateSize;
    const qDim = this.qDim, kvDim = this.kvDim, f32 = DType.f32;
    const inv = this.rope.invFreq.ptr;

    // Recompute q, k, v (and, at the layer boundary, attention) from the saved input.
    this.preAttention(io, w);
    if (recomputeAttention) await this.attend(attention, io, layer);

    // After attention, tile by tile: recompute the tile's O-proj, residual, ln2 and MLP from the
    // saved input and attention output, then backward through the MLP, ln2 (into dres, which
    // becomes d(xMid)) and the O-proj (into dO).
    this.#tiles((t0, n) => {
      this.#preMlpTile(io, w, t0, n);
      const dres = g.dres.rows(t0, n).ptr;
      op.linearBackward(d, g.dh.ptr, gw.down, dres, s.h.ptr, w.down, n, I, H, dt);
      op.swigluBackward(d, g.dgate.ptr, g.dup.ptr, g.dh.ptr, s.gate.ptr, s.up.ptr, n * I, dt);
      this.#sharedInputBackward(s.ln2, [[g.dgate, w.gate, gw.gate, I], [g.dup, w.up, gw.up, I]], n);
      op.convert(d, g.dln.ptr, dt, g.dlnF32.ptr, f32, n * H);
      op.rmsnormBackward(d, dres, gw.ln2, g.dln.ptr, s.xMid.ptr, w.ln2, s.rstd2.ptr, n, H, dt);
      const o = io.o.rows(t0, n).ptr, dO = g.dO.rows(t0, n).ptr;
      op.linearBackward(d, dO, gw.o, dres, o, w.o, n, qDim, H, dt);
    });

    // Attention: out = attn(rope(q), rope(k), v), of every token.
    for (const t of [g.dqF32, g.dkF32, g.dvF32]) d.memset(t.ptr, 0, t.bytes);
    const S = this.shape.seqLen;
    for (let b = 0; b < this.shape.batch; b++) {
      await attention.backward(this.#sequence(io, b, layer), {
        dout: g.dO.rows(b * S, S).ptr,
        dq: g.dqF32.rows(b * S, S).ptr,
        dk: g.dkF32.rows(b * S, S).ptr,
        dv: g.dvF32.rows(b * S, S).ptr,
      });
    }

    // Before attention, tile by tile: RoPE, the QKV projections (ln1 recomputed) and ln1.
    this.#tiles((t0, n) => {
      const pos = this.rope.pos.rows(t0, n).ptr;
      const [dqF32, dkF32, dvF32] = [g.dqF32, g.dkF32, g.dvF32].map((t) => t.rows(t0, n));
      // RoPE is a rotation: its backward rotates the gradient back (in fp32, before rounding).
      op.rope(d, dqF32.ptr, pos, inv, n, c.numHeads, c.headDim, true, f32);
      op.rope(d, dkF32.ptr, pos, inv, n, c.numKvHeads, c.headDim, true, f32);
      const [dq, dk, dv] = [g.dq, g.dk, g.dv].map((t) => t.rows(t0, n));
      if (dt !== f32) {
        op.convert(d, dq.ptr, dt, dqF32.ptr, f32, n * qDim);
        op.convert(d, dk.ptr, dt, dkF32.ptr, f32, n * kvDim);
        op.convert(d, dv.ptr, dt, dvF32.ptr, f32, n * kvDim);
      }
      this.#norm1Tile(io, w, t0, n);
      let [dqIn, dkIn] = [dq, dk];
      const qk = s.qk;
      if (qk) {
        // Recompute the tile's raw q, k and their rstd (qOut, kOut: the norms' outputs, unused),
        // then the per-head norms' backward: d(raw q), d(raw k) and the norm weights' gradients.
        this.#projectQk(w, n, qk.qOut.ptr, qk.kOut.ptr);
        const hd = c.headDim;
        d.memset(qk.dqRaw.ptr, 0, qk.dqRaw.rows(0, n).bytes);
        d.memset(qk.dkRaw.ptr, 0, qk.dkRaw.rows(0, n).bytes);
        const [rq, rk] = [n * c.numHeads, n * c.numKvHeads];
        op.rmsnormBackward(
          d,
          qk.dqRaw.ptr,
          gw.qNorm!,
          dq.ptr,
          qk.qRaw.ptr,
          w.qNorm!,
          qk.rstdQ.ptr,
          rq,
          hd,
          dt,
        );
        op.rmsnormBackward(
          d,
          qk.dkRaw.ptr,
          gw.kNorm!,
          dk.ptr,
          qk.kRaw.ptr,
          w.kNorm!,
          qk.rstdK.ptr,
          rk,
          hd,
          dt,
        );
        [dqIn, dkIn] = [qk.dqRaw.rows(0, n), qk.dkRaw.rows(0, n)];
      }
      if (c.qkvBias) {
        this.#biasBackward(gw.qBias!, dqIn.ptr, n, qDim);
        this.#biasBackward(gw.kBias!, dkIn.ptr, n, kvDim);
        this.#biasBackward(gw.vBias!, dv.ptr, n, kvDim);
      }
      this.#sharedInputBackward(s.ln1, [
        [dqIn, w.q, gw.q, qDim],
        [dkIn, w.k, gw.k, kvDim],
        [dv, w.v, gw.v, kvDim],
      ], n);
      op.convert(d, g.dln.ptr, dt, g.dlnF32.ptr, f32, n * H);
      const dres = g.dres.rows(t0, n).ptr, x = io.x.rows(t0, n).ptr;
      op.rmsnormBackward(d, dres, gw.ln1, g.dln.ptr, x, w.ln1, s.rstd1.ptr, n, H, dt);
    });
  }

  /** Calls fn(t0, n) for each token tile. */
  #tiles(fn: (t0: number, n: number) => void): void {
    const T = this.tokens, tile = this.shape.tile;
    for (let t0 = 0; t0 < T; t0 += tile) fn(t0, Math.min(tile, T - t0));
  }

  /** s.ln1 and s.rstd1 of the `n` token rows from t0 of the layer input. */
  #norm1Tile(io: LayerSaved, w: LayerWeights, t0: number, n: number): void {
    const c = this.cfg, s = this.s, x = io.x.rows(t0, n).ptr;
    op.rmsnormForward(
      this.device,
      s.ln1.ptr,
      s.rstd1.ptr,
      x,
      w.ln1,
      n,
      c.hiddenSize,
      c.rmsNormEps,
      this.shape.dtype,
    );
  }

  /**
   * The `n` token rows from t0 after attention up to the MLP's down projection: s.xMid = x +
   * o_proj(o), s.ln2 and s.rstd2, then gate, up and h = silu(gate) * up.
   */
  #preMlpTile(io: LayerSaved, w: LayerWeights, t0: number, n: number): void {
    const d = this.device, c = this.cfg, s = this.s, dt = this.shape.dtype;
    const H = c.hiddenSize, I = c.intermediateSize;
    op.linear(d, s.tmp.ptr, io.o.rows(t0, n).ptr, w.o, n, this.qDim, H, dt);
    op.add(d, s.xMid.ptr, io.x.rows(t0, n).ptr, s.tmp.ptr, n * H, dt);
    op.rmsnormForward(d, s.ln2.ptr, s.rstd2.ptr, s.xMid.ptr, w.ln2, n, H, c.rmsNormEps, dt);
    op.linear(d, s.gate.ptr, s.ln2.ptr, w.gate, n, H, I, dt);
    op.linear(d, s.up.ptr, s.ln2.ptr, w.up, n, H, I, dt);
    op.swigluForward(d, s.h.ptr, s.gate.ptr, s.up.ptr, n * I, dt);
  }

  /** Layer `layer`'s attention tensors of sequence b of the micro-batch. */
  #sequence(io: LayerSaved, b: number, layer: number): AttentionTensors {
    const S = this.shape.seqLen, nh = this.cfg.numHeads, s = this.s;
    return {
      q: s.q.rows(b * S, S).ptr,
      k: s.k.rows(b * S, S).ptr,
      v: s.v.rows(b * S, S).ptr,
      out: io.o.rows(b * S, S).ptr,
      lse: io.lse.rows(b * nh, nh).ptr,
      docs: this.documents(layer)?.[b],
    };
  }

  /**
   * Backward of linears reading the same input: the tile's `n` rows of it, x [n, H], and each dy
   * [n, out] ([dy, weight, its gradient, output features] each). Accumulates weight gradients,
   * and writes g.dlnF32's first n rows = sum of dy_i W_i in fp32 (the caller converts it to the
   * compute dtype).
   */
  #sharedInputBackward(
    x: Tensor,
    parts: [Tensor, DevicePtr, DevicePtr, number][],
    n: number,
  ): void {
    const d = this.device, dt = this.shape.dtype, H = this.cfg.hiddenSize, f32 = DType.f32;
    const dx = this.g.dlnF32.ptr, xRows = x.ptr;
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
