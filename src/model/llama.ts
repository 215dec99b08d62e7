/**
 * The Llama model on one device: parameters, memory plan, forward and a hand-written backward
 * (the forward in reverse, as in llm.c). Attention goes through an `Attention` object so the
 * sequence-parallel DistAttn can replace the local kernel without touching this file.
 *
 * Activations of a batch are B*T tokens laid out row-major [B*T, width]. What each layer saves
 * for backward: its residual input, its attention output O and the log-sum-exp. Backward
 * recomputes the rest of the layer (norms, projections, RoPE, MLP) but never the attention:
 * the rematerialisation-aware checkpoint of DistFlashAttention.
 */
import type { Device, DevicePtr } from "../runtime/device.ts";
import { MemoryPlan, type Slot } from "../runtime/memory.ts";
import * as op from "../runtime/ops.ts";
import { DType, DTYPE_BYTES } from "../runtime/ops.ts";
import { type LlamaConfig, ropeInvFreq } from "./config.ts";
import {
  type ParamEntry,
  ParamLayout,
  type ParamStore,
  ReplicatedParams,
  ShardedParams,
} from "./params.ts";
import type { Communicator } from "../runtime/communicator.ts";
import { CheckpointOffload } from "./host_state.ts";
import { type Attention, type AttentionTensors, LocalAttention } from "./attention.ts";

export { type ParamEntry, ParamLayout };

export interface ModelOptions {
  /** Storage type of weights used in compute and of activations. */
  dtype: DType;
  /** Sequences per micro-batch. */
  batch: number;
  /** Tokens per sequence on this device. */
  seqLen: number;
  /** Vocabulary rows per LM-head chunk (bounds the fp32 logits scratch). Default 4096. */
  vocabChunk?: number;
  /**
   * Where backward's recomputation starts. "attention" (default, DistFlashAttention's
   * rematerialisation-aware checkpointing): each layer keeps its attention output and LSE, so
   * backward recomputes the cheap parts but never attention nor its communication. "layer": the
   * classic checkpoint at the layer input; backward recomputes the attention forward too.
   */
  checkpointBoundary?: "attention" | "layer";
  /**
   * Tokens per tile of the MLP and the LM head (default 4096): their [tokens, intermediate] and
   * [tokens, vocabulary chunk] intermediates exist for one tile at a time, in forward and
   * backward, so their memory does not grow with the sequence.
   */
  mlpTile?: number;
  /**
   * Ranks that hold parameters together: gradients are all-reduced over them (or sharded). The
   * caller creates it (the model makes no communicators); with `offloadOptimizer` on one device,
   * a world of one (src/dist's SelfComm).
   */
  comm?: Communicator | null;
  /** ZeRO-3 over `comm`: shard parameters, gradients and AdamW state (FSDP full_shard). */
  fullShard?: boolean;
  /**
   * Keep the fp32 master weights and AdamW moments (of this rank's shard) in host memory and
   * update them there with the CPU backend's AdamW; the device keeps the gradients and the
   * compute-dtype weights. Implies sharding over `comm`, which it requires.
   */
  offloadOptimizer?: boolean;
  /**
   * Keep each layer's saved tensors (its input, and its attention output and LSE) in host memory:
   * copied out after the layer's forward and back before its backward. The device then holds two
   * layer inputs and one attention output whatever the depth.
   */
  offloadCheckpoints?: boolean;
}

/** The per-layer intermediates recomputed in backward (one shared set). */
interface LayerScratch {
  ln1: Slot;
  rstd1: Slot;
  q: Slot;
  k: Slot;
  v: Slot;
  xMid: Slot;
  ln2: Slot;
  rstd2: Slot;
  gate: Slot;
  up: Slot;
  h: Slot;
  tmp: Slot;
}

export class LlamaModel {
  readonly layout: ParamLayout;
  readonly plan = new MemoryPlan();
  readonly tokens: number;
  readonly vocabChunk: number;
  readonly mlpTile: number;
  attention: Attention;
  /**
   * Called as the forward and the backward reach each layer (where the host is issuing work: the
   * device runs at most a few layers behind). The trainer reports progress within long steps.
   */
  onLayer: ((phase: "forward" | "backward", layer: number) => void) | null = null;
  /** Sizes of the per-layer host copies when checkpoints are offloaded. */
  readonly #hostCheckpoints: { x: number; o?: number; lse?: number } | null;
  #host: CheckpointOffload | null = null;

  /** Parameters, gradients and AdamW state (replicated or sharded). */
  readonly params: ParamStore;
  // Saved per layer for backward.
  readonly xs: Slot[]; // residual stream input of layer l (l = numLayers: the final residual)
  readonly attnOut: Slot[];
  readonly attnLse: Slot[];
  readonly s: LayerScratch;
  // Backward scratch.
  readonly dres: Slot;
  readonly dh: Slot;
  readonly dgate: Slot;
  readonly dup: Slot;
  readonly dlnF32: Slot;
  readonly dln: Slot;
  readonly dO: Slot;
  readonly dqF32: Slot;
  readonly dkF32: Slot;
  readonly dvF32: Slot;
  readonly dq: Slot;
  readonly dk: Slot;
  readonly dv: Slot;
  // LM head and loss.
  readonly xf: Slot;
  readonly rstdF: Slot;
  readonly logits: Slot; // fp32 [tokens, vocabChunk]
  readonly dlogits: Slot; // dtype copy of the chunk's gradient (bf16 mode)
  readonly ceM: Slot;
  readonly ceS: Slot;
  readonly ceTarget: Slot;
  readonly ceLoss: Slot;
  readonly ceLse: Slot;
  readonly dxfF32: Slot;
  readonly scalar: Slot; // one fp32 for reductions
  // Inputs.
  readonly ids: Slot;
  readonly labels: Slot;
  readonly pos: Slot;
  readonly invFreq: Slot;

  constructor(
    readonly device: Device,
    readonly cfg: LlamaConfig,
    readonly opts: ModelOptions,
    attention?: Attention,
  ) {
    const { dtype, batch, seqLen } = opts;
    // Offloading shards over all ranks (the caller passes a world of one on a single device).
    if (opts.offloadOptimizer && !opts.comm) {
      throw new Error("offloadOptimizer needs a communicator (a world of one on a single device)");
    }
    const shardOver = opts.offloadOptimizer || opts.fullShard ? (opts.comm ?? null) : null;
    this.layout = new ParamLayout(cfg, 64 * (shardOver?.size ?? 1));
    this.tokens = batch * seqLen;
    this.vocabChunk = Math.min(opts.vocabChunk ?? 4096, cfg.vocabSize);
    this.mlpTile = Math.max(1, Math.min(opts.mlpTile ?? 4096, batch * seqLen));
    const T = this.tokens, H = cfg.hiddenSize, I = cfg.intermediateSize;
    const qDim = cfg.numHeads * cfg.headDim, kvDim = cfg.numKvHeads * cfg.headDim;
    const p = this.plan, f32 = DType.f32;
    this.params = shardOver
      ? new ShardedParams(device, this.layout, dtype, p, shardOver, opts.offloadOptimizer ?? false)
      : new ReplicatedParams(device, this.layout, dtype, p, opts.comm ?? null);

    const saved = "saved activations";
    this.xs = [];
    this.attnOut = [];
    this.attnLse = [];
    const offload = opts.offloadCheckpoints ?? false;
    // Offloaded: layer inputs alternate between two device buffers (layer l reads one and writes
    // the other); host memory keeps every layer's copy.
    const ring = offload
      ? [p.reserve(saved, "x even", T * H, dtype), p.reserve(saved, "x odd", T * H, dtype)]
      : [];
    for (let l = 0; l <= cfg.numLayers; l++) {
      this.xs.push(offload ? ring[l % 2] : p.reserve(saved, `x${l}`, T * H, dtype));
    }
    // Attention outputs are saved per layer at the attention boundary (offloaded: two slots, by
    // layer parity, like the inputs); with the classic layer boundary one buffer serves every
    // layer, as backward recomputes them.
    const saveAttention = (opts.checkpointBoundary ?? "attention") === "attention";
    const slots = saveAttention ? (offload ? 2 : cfg.numLayers) : 1;
    for (let l = 0; l < cfg.numLayers; l++) {
      if (l >= slots) {
        this.attnOut.push(this.attnOut[l % slots]);
        this.attnLse.push(this.attnLse[l % slots]);
        continue;
      }
      const kind = saveAttention ? saved : "layer scratch";
      this.attnOut.push(p.reserve(kind, `o${l}`, T * qDim, dtype));
      this.attnLse.push(p.reserve(kind, `lse${l}`, batch * cfg.numHeads * seqLen, f32));
    }
    this.#hostCheckpoints = !offload
      ? null
      : saveAttention
      ? { x: this.xs[0].bytes, o: this.attnOut[0].bytes, lse: this.attnLse[0].bytes }
      : { x: this.xs[0].bytes };

    const layer = "layer scratch";
    this.s = {
      ln1: p.reserve(layer, "ln1", T * H, dtype),
      rstd1: p.reserve(layer, "rstd1", T, f32),
      q: p.reserve(layer, "q", T * qDim, dtype),
      k: p.reserve(layer, "k", T * kvDim, dtype),
      v: p.reserve(layer, "v", T * kvDim, dtype),
      xMid: p.reserve(layer, "xMid", T * H, dtype),
      ln2: p.reserve(layer, "ln2", T * H, dtype),
      rstd2: p.reserve(layer, "rstd2", T, f32),
      gate: p.reserve(layer, "gate", this.mlpTile * I, dtype),
      up: p.reserve(layer, "up", this.mlpTile * I, dtype),
      h: p.reserve(layer, "h", this.mlpTile * I, dtype),
      tmp: p.reserve(layer, "tmp", T * H, dtype),
    };
    const back = "backward scratch";
    this.dres = p.reserve(back, "dres", T * H, dtype);
    this.dh = p.reserve(back, "dh", this.mlpTile * I, dtype);
    this.dgate = p.reserve(back, "dgate", this.mlpTile * I, dtype);
    this.dup = p.reserve(back, "dup", this.mlpTile * I, dtype);
    this.dln = p.reserve(back, "dln", T * H, dtype);
    this.dO = p.reserve(back, "dO", T * qDim, dtype);
    this.dqF32 = p.reserve(back, "dqF32", T * qDim, f32);
    // d(norm output) in fp32 is written by the MLP's backward before attention's backward zeroes
    // dqF32, and by the QKV projections' backward after dq has been rounded into q's buffer (bf16
    // only: in fp32 dq is dqF32 itself): the two share one buffer when it is large enough.
    this.dlnF32 = dtype !== f32 && qDim >= H ? this.dqF32 : p.reserve(back, "dlnF32", T * H, f32);
    this.dkF32 = p.reserve(back, "dkF32", T * kvDim, f32);
    this.dvF32 = p.reserve(back, "dvF32", T * kvDim, f32);
    // In bf16 the rounded dq, dk, dv take the place of q, k, v, which attention's backward was
    // the last to read (DistAttn makes the compute stream wait for its transfers before returning).
    this.dq = dtype === f32 ? this.dqF32 : this.s.q;
    this.dk = dtype === f32 ? this.dkF32 : this.s.k;
    this.dv = dtype === f32 ? this.dvF32 : this.s.v;

    const head = "LM head and loss";
    // The final norm's output lives from the end of the forward to the LM head's backward, while
    // no layer runs: it shares the first layer norm's scratch.
    this.xf = this.s.ln1;
    this.rstdF = p.reserve(head, "rstdF", T, f32);
    // Logits exist for one (token tile, vocabulary chunk) at a time.
    this.logits = p.reserve(head, "logits", this.mlpTile * this.vocabChunk, f32);
    this.dlogits = dtype === f32
      ? this.logits
      : p.reserve(head, "dlogits", this.mlpTile * this.vocabChunk, dtype);
    this.ceM = p.reserve(head, "ceM", T, f32);
    this.ceS = p.reserve(head, "ceS", T, f32);
    this.ceTarget = p.reserve(head, "ceTarget", T, f32);
    this.ceLoss = p.reserve(head, "ceLoss", T, f32);
    this.ceLse = p.reserve(head, "ceLse", T, f32);
    // d(final norm output) lives only from the LM head's backward to the final norm's, before any
    // layer's backward needs dqF32: the two share one buffer when it is large enough.
    this.dxfF32 = qDim >= H ? this.dqF32 : p.reserve(head, "dxfF32", T * H, f32);
    this.scalar = p.reserve(head, "scalar", 64, f32);

    const inputs = "inputs";
    this.ids = p.reserve(inputs, "ids", T, f32); // int32 ids share fp32's 4-byte size
    this.labels = p.reserve(inputs, "labels", T, f32);
    this.pos = p.reserve(inputs, "pos", T, f32);
    this.invFreq = p.reserve(inputs, "invFreq", cfg.headDim / 2, f32);

    this.attention = attention ?? new LocalAttention(device, cfg, seqLen, dtype);
  }

  /** Allocates every kind of the plan and uploads the RoPE frequencies. */
  allocate(): void {
    this.plan.allocate(this.device);
    this.params.initialize();
    const h = this.#hostCheckpoints;
    if (h) this.#host = new CheckpointOffload(this.device, this.cfg.numLayers, h);
    this.device.upload(
      this.invFreq.ptr,
      Float32Array.from(ropeInvFreq(this.cfg, { float32: true })),
    );
  }

  free(): void {
    this.plan.free();
    this.params.release();
    this.#host?.free();
    this.#host = null;
  }

  get dtype(): DType {
    return this.opts.dtype;
  }

  /** Host memory this model allocates outside the plan (offloaded optimizer and checkpoints). */
  get hostBytes(): number {
    const h = this.#hostCheckpoints;
    const checkpoints = h ? this.cfg.numLayers * (h.x + (h.o ?? 0) + (h.lse ?? 0)) : 0;
    return checkpoints + this.params.hostBytes;
  }

  /** Writes one parameter's fp32 values into the master weights. */
  setParam(name: string, values: Float32Array): void {
    this.params.setParam(name, values);
  }

  /** One parameter's fp32 master values (a collective when sharded: every rank calls). */
  getParam(name: string): Promise<Float32Array> {
    return this.params.getParam(name);
  }

  /** One parameter's gradient (replicated parameters only; for tests). */
  gradOf(name: string): Float32Array {
    if (!(this.params instanceof ReplicatedParams)) {
      throw new Error("gradOf needs replicated parameters");
    }
    return this.params.getGrad(name);
  }

  /** Refreshes the compute copy of the weights from the master (bf16 mode). */
  syncWeights(): void {
    this.params.syncWeights();
  }

  /** Uploads a micro-batch: ids and labels [batch * seqLen]; positions default to 0..T-1. */
  setBatch(ids: Int32Array, labels: Int32Array, positions?: Int32Array): void {
    const T = this.tokens;
    if (ids.length !== T || labels.length !== T) {
      throw new Error(
        `batch must hold ${T} ids and labels, got ${ids.length} and ${labels.length}`,
      );
    }
    const V = this.cfg.vocabSize;
    for (let i = 0; i < T; i++) {
      if (ids[i] < 0 || ids[i] >= V) {
        throw new Error(
          `token id ${ids[i]} at position ${i} is outside the vocabulary (0..${V - 1})`,
        );
      }
      if (labels[i] >= V) {
        throw new Error(
          `label ${labels[i]} at position ${i} is outside the vocabulary (0..${V - 1})`,
        );
      }
    }
    let pos = positions;
    if (!pos) {
      pos = new Int32Array(T);
      for (let i = 0; i < T; i++) pos[i] = i % this.opts.seqLen;
    }
    this.device.upload(this.ids.ptr, ids);
    this.device.upload(this.labels.ptr, labels);
    this.device.upload(this.pos.ptr, pos);
  }

  #w(e: ParamEntry): DevicePtr {
    return this.params.weight(e);
  }

  #g(e: ParamEntry): DevicePtr {
    return this.params.grad(e);
  }

  /** Everything of layer l up to and excluding attention: ln1, q, k, v (after RoPE). */
  #preAttention(l: number): void {
    const d = this.device, c = this.cfg, s = this.s, dt = this.dtype, T = this.tokens;
    const H = c.hiddenSize, qDim = c.numHeads * c.headDim, kvDim = c.numKvHeads * c.headDim;
    const L = this.layout;
    op.rmsnormForward(
      d,
      s.ln1.ptr,
      s.rstd1.ptr,
      this.xs[l].ptr,
      this.#w(L.layer(l, "input_layernorm.weight")),
      T,
      H,
      c.rmsNormEps,
      dt,
    );
    op.linear(
      d,
      s.q.ptr,
      s.ln1.ptr,
      this.#w(L.layer(l, "self_attn.q_proj.weight")),
      T,
      H,
      qDim,
      dt,
    );
    op.linear(
      d,
      s.k.ptr,
      s.ln1.ptr,
      this.#w(L.layer(l, "self_attn.k_proj.weight")),
      T,
      H,
      kvDim,
      dt,
    );
    op.linear(
      d,
      s.v.ptr,
      s.ln1.ptr,
      this.#w(L.layer(l, "self_attn.v_proj.weight")),
      T,
      H,
      kvDim,
      dt,
    );
    op.rope(d, s.q.ptr, this.pos.ptr, this.invFreq.ptr, T, c.numHeads, c.headDim, false, dt);
    op.rope(d, s.k.ptr, this.pos.ptr, this.invFreq.ptr, T, c.numKvHeads, c.headDim, false, dt);
  }

  /**
   * Everything of layer l after attention: O-proj, residual, ln2, and (unless `mlp` is false, as
   * in backward's recomputation) the MLP tile by tile with its residual into xs[l+1].
   */
  #postAttention(l: number, mlp = true): void {
    const d = this.device, c = this.cfg, s = this.s, dt = this.dtype, T = this.tokens;
    const H = c.hiddenSize, I = c.intermediateSize, qDim = c.numHeads * c.headDim;
    const L = this.layout, bytes = DTYPE_BYTES[dt];
    op.linear(
      d,
      s.tmp.ptr,
      this.attnOut[l].ptr,
      this.#w(L.layer(l, "self_attn.o_proj.weight")),
      T,
      qDim,
      H,
      dt,
    );
    op.add(d, s.xMid.ptr, this.xs[l].ptr, s.tmp.ptr, T * H, dt);
    op.rmsnormForward(
      d,
      s.ln2.ptr,
      s.rstd2.ptr,
      s.xMid.ptr,
      this.#w(L.layer(l, "post_attention_layernorm.weight")),
      T,
      H,
      c.rmsNormEps,
      dt,
    );
    if (!mlp) return;
    for (let t0 = 0; t0 < T; t0 += this.mlpTile) {
      const n = Math.min(this.mlpTile, T - t0), row = BigInt(t0 * H * bytes);
      this.#mlpTileForward(l, s.ln2.ptr + row, n);
      op.linear(
        d,
        s.tmp.ptr + row,
        s.h.ptr,
        this.#w(L.layer(l, "mlp.down_proj.weight")),
        n,
        I,
        H,
        dt,
      );
    }
    op.add(d, this.xs[l + 1].ptr, s.xMid.ptr, s.tmp.ptr, T * H, dt);
  }

  /** gate, up and h = silu(gate) * up of `n` tokens whose ln2 rows start at `ln2`. */
  #mlpTileForward(l: number, ln2: DevicePtr, n: number): void {
    const d = this.device, s = this.s, dt = this.dtype, L = this.layout;
    const H = this.cfg.hiddenSize, I = this.cfg.intermediateSize;
    op.linear(d, s.gate.ptr, ln2, this.#w(L.layer(l, "mlp.gate_proj.weight")), n, H, I, dt);
    op.linear(d, s.up.ptr, ln2, this.#w(L.layer(l, "mlp.up_proj.weight")), n, H, I, dt);
    op.swigluForward(d, s.h.ptr, s.gate.ptr, s.up.ptr, n * I, dt);
  }

  /** Attention of every sequence of the micro-batch. */
  async #attend(l: number): Promise<void> {
    for (let b = 0; b < this.opts.batch; b++) await this.attention.forward(this.#sequence(l, b));
  }

  /** Layer l's attention tensors of sequence b of the micro-batch. */
  #sequence(l: number, b: number): AttentionTensors {
    const c = this.cfg, S = this.opts.seqLen;
    const qStride = S * c.numHeads * c.headDim, kvStride = S * c.numKvHeads * c.headDim;
    return {
      q: this.s.q.at(b * qStride),
      k: this.s.k.at(b * kvStride),
      v: this.s.v.at(b * kvStride),
      out: this.attnOut[l].at(b * qStride),
      lse: this.attnLse[l].at(b * c.numHeads * S),
    };
  }

  /** Forward through the layers and the final norm: xs[] and xf filled. */
  async forward(): Promise<void> {
    const d = this.device, c = this.cfg, dt = this.dtype, T = this.tokens, H = c.hiddenSize;
    const emb = this.layout.get("model.embed_tokens.weight");
    await this.params.gather(0);
    await this.params.prefetch(1);
    op.embeddingForward(d, this.xs[0].ptr, this.#w(emb), this.ids.ptr, T, c.vocabSize, H, dt);
    for (let l = 0; l < c.numLayers; l++) {
      this.onLayer?.("forward", l);
      await this.params.gather(l + 1);
      await this.params.prefetch(l + 2); // the next layer, or the final norm and LM head
      this.#preAttention(l);
      this.#host?.beforeOverwrite(l % 2); // attention output slot: layer l-2's copy has left
      await this.#attend(l);
      this.#host?.beforeOverwrite((l + 1) % 2); // input slot of layer l+1: layer l-1's has left
      this.#postAttention(l);
      this.#host?.save(l, this.#savedSlots(l));
    }
    await this.params.gather(c.numLayers + 1);
    op.rmsnormForward(
      d,
      this.xf.ptr,
      this.rstdF.ptr,
      this.xs[c.numLayers].ptr,
      this.#w(this.layout.get("model.norm.weight")),
      T,
      H,
      c.rmsNormEps,
      dt,
    );
  }

  /** Logits of tokens [t0, t0+n) against vocabulary rows [v0, v0+vc), into the fp32 buffer. */
  #logitsTile(t0: number, n: number, v0: number, vc: number): void {
    const H = this.cfg.hiddenSize, head = this.layout.lmHead, bytes = DTYPE_BYTES[this.dtype];
    op.gemm(this.device, {
      transA: false,
      transB: true,
      m: n,
      n: vc,
      k: H,
      a: this.xf.ptr + BigInt(t0 * H * bytes),
      lda: H,
      b: this.#w(head) + BigInt(v0 * H * bytes),
      ldb: H,
      c: this.logits.ptr,
      ldc: vc,
      abType: this.dtype,
      cType: DType.f32,
    });
  }

  /** Calls fn(t0, n, v0, vc) for every (token tile, vocabulary chunk) of the LM head. */
  #headTiles(fn: (t0: number, n: number, v0: number, vc: number) => void): void {
    const T = this.tokens, V = this.cfg.vocabSize, C = this.vocabChunk, tile = this.mlpTile;
    for (let v0 = 0; v0 < V; v0 += C) {
      for (let t0 = 0; t0 < T; t0 += tile) fn(t0, Math.min(tile, T - t0), v0, Math.min(C, V - v0));
    }
  }

  /**
   * Cross-entropy of the current micro-batch, chunked over the vocabulary. Returns the sum of
   * per-token losses (ignored labels count 0); the per-token losses stay in ceLoss, their
   * log-sum-exp in ceLse.
   */
  lossSum(): number {
    const d = this.device, T = this.tokens;
    d.upload(this.ceM.ptr, new Float32Array(T).fill(-Infinity));
    d.memset(this.ceS.ptr, 0, T * 4);
    d.memset(this.ceTarget.ptr, 0, T * 4);
    this.#headTiles((t0, n, v0, vc) => {
      this.#logitsTile(t0, n, v0, vc);
      op.ceChunkForward(
        d,
        this.ceM.at(t0),
        this.ceS.at(t0),
        this.ceTarget.at(t0),
        this.logits.ptr,
        this.labels.at(t0),
        n,
        vc,
        v0,
      );
    });
    op.ceFinalize(
      d,
      this.ceLoss.ptr,
      this.ceLse.ptr,
      this.ceM.ptr,
      this.ceS.ptr,
      this.ceTarget.ptr,
      this.labels.ptr,
      T,
    );
    d.memset(this.scalar.ptr, 0, 4);
    op.sum(d, this.scalar.ptr, this.ceLoss.ptr, T);
    return d.download(new Float32Array(1), this.scalar.ptr)[0];
  }

  /**
   * Backward of (lossScale * sum of token losses) into the fp32 gradients (accumulated: zero them
   * at the start of an optimizer step). Needs forward() and lossSum() of the same micro-batch.
   */
  async backward(lossScale: number): Promise<void> {
    const d = this.device, c = this.cfg, dt = this.dtype, T = this.tokens, H = c.hiddenSize;
    const V = c.vocabSize, L = this.layout;
    // LM head, tile by chunk: dlogits = scale (softmax - onehot); dxf += dlogits W; dW += dlogits^T xf.
    this.params.beginGrads(0);
    this.params.beginGrads(c.numLayers + 1);
    d.memset(this.dxfF32.ptr, 0, T * H * 4);
    const head = L.lmHead;
    this.#headTiles((t0, n, v0, vc) => {
      this.#logitsTile(t0, n, v0, vc);
      op.ceChunkBackward(
        d,
        this.logits.ptr,
        this.ceLse.at(t0),
        this.labels.at(t0),
        n,
        vc,
        v0,
        lossScale,
      );
      if (this.dlogits !== this.logits) {
        op.convert(d, this.dlogits.ptr, dt, this.logits.ptr, DType.f32, n * vc);
      }
      op.gemm(d, {
        transA: false,
        transB: false,
        m: n,
        n: H,
        k: vc,
        a: this.dlogits.ptr,
        lda: vc,
        b: this.#w(head) + BigInt(v0 * H * DTYPE_BYTES[dt]),
        ldb: H,
        beta: 1,
        c: this.dxfF32.at(t0 * H),
        ldc: H,
        abType: dt,
        cType: DType.f32,
      });
      op.gemm(d, {
        transA: true,
        transB: false,
        m: vc,
        n: H,
        k: n,
        a: this.dlogits.ptr,
        lda: vc,
        b: this.xf.ptr + BigInt(t0 * H * DTYPE_BYTES[dt]),
        ldb: H,
        beta: 1,
        c: this.#g(head) + BigInt(v0 * H * 4),
        ldc: H,
        abType: dt,
        cType: DType.f32,
      });
    });
    // Final norm: dres = d(x_L).
    op.convert(d, this.dln.ptr, dt, this.dxfF32.ptr, DType.f32, T * H);
    d.memset(this.dres.ptr, 0, this.dres.bytes);
    const normF = L.get("model.norm.weight");
    op.rmsnormBackward(
      d,
      this.dres.ptr,
      this.#g(normF),
      this.dln.ptr,
      this.xs[c.numLayers].ptr,
      this.#w(normF),
      this.rstdF.ptr,
      T,
      H,
      dt,
    );

    await this.params.reduceGrads(c.numLayers + 1);
    for (let l = c.numLayers - 1; l >= 0; l--) {
      this.onLayer?.("backward", l);
      await this.params.gather(l + 1);
      if (l > 0) await this.params.prefetch(l);
      this.params.beginGrads(l + 1);
      if (this.#host) {
        // Layer l's tensors were loaded during layer l+1 (the top layer's never left the device);
        // layer l-1's come back while layer l computes (their slots held layer l+1's).
        this.#host.awaitLoaded();
        if (l > 0) this.#host.load(l - 1, this.#savedSlots(l - 1));
      }
      await this.#layerBackward(l);
      await this.params.reduceGrads(l + 1);
    }
    const emb = L.get("model.embed_tokens.weight");
    op.embeddingBackward(d, this.#g(emb), this.dres.ptr, this.ids.ptr, T, V, H, dt);
    await this.params.reduceGrads(0);
  }

  /** The device slots of layer l's saved tensors that --offload-checkpoints moves to the host. */
  #savedSlots(l: number): Partial<Record<"x" | "o" | "lse", DevicePtr>> {
    if (!this.#hostCheckpoints?.o) return { x: this.xs[l].ptr };
    return { x: this.xs[l].ptr, o: this.attnOut[l].ptr, lse: this.attnLse[l].ptr };
  }

  /** dres holds d(xs[l+1]) on entry and d(xs[l]) on exit. */
  async #layerBackward(l: number): Promise<void> {
    const d = this.device, c = this.cfg, s = this.s, dt = this.dtype, T = this.tokens;
    const H = c.hiddenSize, I = c.intermediateSize;
    const qDim = c.numHeads * c.headDim, kvDim = c.numKvHeads * c.headDim, L = this.layout;
    const P = (suffix: string) => L.layer(l, suffix);

    // Recompute the layer's cheap parts from its saved input and attention output (and, with the
    // classic layer boundary, the attention itself).
    this.#preAttention(l);
    if (this.opts.checkpointBoundary === "layer") await this.#attend(l);
    this.#postAttention(l, false);

    // MLP: out = down(swiglu(gate(ln2), up(ln2))), added to the residual; tile by tile, each
    // tile's intermediates recomputed from ln2.
    const bytes = DTYPE_BYTES[dt];
    for (let t0 = 0; t0 < T; t0 += this.mlpTile) {
      const n = Math.min(this.mlpTile, T - t0), row = BigInt(t0 * H * bytes);
      this.#mlpTileForward(l, s.ln2.ptr + row, n);
      op.linearBackward(
        d,
        this.dh.ptr,
        this.#g(P("mlp.down_proj.weight")),
        this.dres.ptr + row,
        s.h.ptr,
        this.#w(P("mlp.down_proj.weight")),
        n,
        I,
        H,
        dt,
      );
      op.swigluBackward(
        d,
        this.dgate.ptr,
        this.dup.ptr,
        this.dh.ptr,
        s.gate.ptr,
        s.up.ptr,
        n * I,
        dt,
      );
      this.#twoInputLinearBackward(
        this.dgate,
        P("mlp.gate_proj.weight"),
        this.dup,
        P("mlp.up_proj.weight"),
        null,
        null,
        s.ln2,
        I,
        I,
        0,
        t0,
        n,
      );
    }
    op.convert(d, this.dln.ptr, dt, this.dlnF32.ptr, DType.f32, T * H);
    op.rmsnormBackward(
      d,
      this.dres.ptr,
      this.#g(P("post_attention_layernorm.weight")),
      this.dln.ptr,
      s.xMid.ptr,
      this.#w(P("post_attention_layernorm.weight")),
      s.rstd2.ptr,
      T,
      H,
      dt,
    );

    // Attention block: out = o_proj(attn(rope(q), rope(k), v)), added to the residual.
    op.linearBackward(
      d,
      this.dO.ptr,
      this.#g(P("self_attn.o_proj.weight")),
      this.dres.ptr,
      this.attnOut[l].ptr,
      this.#w(P("self_attn.o_proj.weight")),
      T,
      qDim,
      H,
      dt,
    );
    d.memset(this.dqF32.ptr, 0, this.dqF32.bytes);
    d.memset(this.dkF32.ptr, 0, this.dkF32.bytes);
    d.memset(this.dvF32.ptr, 0, this.dvF32.bytes);
    const S = this.opts.seqLen, qStride = S * qDim, kvStride = S * kvDim;
    for (let b = 0; b < this.opts.batch; b++) {
      await this.attention.backward(this.#sequence(l, b), {
        dout: this.dO.at(b * qStride),
        dq: this.dqF32.at(b * qStride),
        dk: this.dkF32.at(b * kvStride),
        dv: this.dvF32.at(b * kvStride),
      });
    }
    // RoPE is a rotation: its backward rotates the gradient back (in fp32, before rounding).
    op.rope(
      d,
      this.dqF32.ptr,
      this.pos.ptr,
      this.invFreq.ptr,
      T,
      c.numHeads,
      c.headDim,
      true,
      DType.f32,
    );
    op.rope(
      d,
      this.dkF32.ptr,
      this.pos.ptr,
      this.invFreq.ptr,
      T,
      c.numKvHeads,
      c.headDim,
      true,
      DType.f32,
    );
    if (this.dq !== this.dqF32) {
      op.convert(d, this.dq.ptr, dt, this.dqF32.ptr, DType.f32, T * qDim);
      op.convert(d, this.dk.ptr, dt, this.dkF32.ptr, DType.f32, T * kvDim);
      op.convert(d, this.dv.ptr, dt, this.dvF32.ptr, DType.f32, T * kvDim);
    }
    this.#twoInputLinearBackward(
      this.dq,
      P("self_attn.q_proj.weight"),
      this.dk,
      P("self_attn.k_proj.weight"),
      this.dv,
      P("self_attn.v_proj.weight"),
      s.ln1,
      qDim,
      kvDim,
      kvDim,
    );
    op.convert(d, this.dln.ptr, dt, this.dlnF32.ptr, DType.f32, T * H);
    op.rmsnormBackward(
      d,
      this.dres.ptr,
      this.#g(P("input_layernorm.weight")),
      this.dln.ptr,
      this.xs[l].ptr,
      this.#w(P("input_layernorm.weight")),
      s.rstd1.ptr,
      T,
      H,
      dt,
    );
  }

  /**
   * Backward of up to three linears reading the same input x [T,H], for the `n` token rows from
   * `row0` (the dy buffers hold exactly those rows): weight gradients, and rows of
   * dlnF32 = sum of dy_i W_i accumulated in fp32 (the caller converts it to dtype).
   */
  #twoInputLinearBackward(
    dy1: Slot,
    w1: ParamEntry,
    dy2: Slot,
    w2: ParamEntry,
    dy3: Slot | null,
    w3: ParamEntry | null,
    x: Slot,
    out1: number,
    out2: number,
    out3: number,
    row0 = 0,
    n = this.tokens,
  ): void {
    const d = this.device, dt = this.dtype, H = this.cfg.hiddenSize;
    const parts: [Slot, ParamEntry, number][] = [[dy1, w1, out1], [dy2, w2, out2]];
    if (dy3 && w3) parts.push([dy3, w3, out3]);
    parts.forEach(([dy, w, outF], i) => {
      op.gemm(d, {
        transA: false,
        transB: false,
        m: n,
        n: H,
        k: outF,
        a: dy.ptr,
        lda: outF,
        b: this.#w(w),
        ldb: H,
        beta: i === 0 ? 0 : 1,
        c: this.dlnF32.at(row0 * H),
        ldc: H,
        abType: dt,
        cType: DType.f32,
      });
      op.gemm(d, {
        transA: true,
        transB: false,
        m: outF,
        n: H,
        k: n,
        a: dy.ptr,
        lda: outF,
        b: x.at(row0 * H),
        ldb: H,
        beta: 1,
        c: this.#g(w),
        ldc: H,
        abType: dt,
        cType: DType.f32,
      });
    });
  }

  /** Full-vocabulary logits [tokens, V] in fp32 after forward() (for tests and evaluation). */
  fullLogits(): Float32Array {
    const T = this.tokens, V = this.cfg.vocabSize;
    const out = new Float32Array(T * V);
    const tile = new Float32Array(this.mlpTile * this.vocabChunk);
    this.#headTiles((t0, n, v0, vc) => {
      this.#logitsTile(t0, n, v0, vc);
      this.device.download(tile.subarray(0, n * vc), this.logits.ptr);
      for (let t = 0; t < n; t++) out.set(tile.subarray(t * vc, (t + 1) * vc), (t0 + t) * V + v0);
    });
    return out;
  }

  /** Global L2 norm of the fp32 gradients (over all ranks' shards when sharded). */
  gradNorm(): Promise<number> {
    return this.params.gradNorm();
  }

  zeroGrads(): void {
    this.params.zeroGrads();
  }

  /** One AdamW update of every parameter (this rank's shard when sharded), compute copy refreshed. */
  adamwStep(args: op.AdamWArgs): void {
    this.params.adamwStep(args);
  }
}
