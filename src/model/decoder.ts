/**
 * The decoder-only model on one device, for every registered family (Llama's decoder with the
 * families' switches: q/k/v biases, q/k norms, a sliding window; src/model/families/): parameters,
 * memory plan, forward and a hand-written backward (the forward in reverse, as in llm.c). Attention goes through an `Attention` object so the
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
import { DType } from "../runtime/ops.ts";
import { Tensor } from "../runtime/tensor.ts";
import { layerParams, layerWindow, type ModelConfig, ropeInvFreq } from "./config.ts";
import { f32ToBf16 } from "../io/dtype.ts";
import {
  type ParamEntry,
  ParamLayout,
  type ParamStore,
  type ParamStoreSpec,
  ReplicatedParams,
  replicatedParamStore,
} from "./params.ts";
import { CheckpointOffload } from "./host_state.ts";
import { type Attention, LocalAttention, type SequenceDocuments } from "./attention.ts";
import { type DocStarts, docStartsInt64, validateDocStarts } from "./documents.ts";
import type { DeviceBuffer } from "../runtime/device.ts";
import {
  DecoderLayer,
  type LayerGradScratch,
  type LayerSaved,
  type LayerScratch,
  type LayerWeights,
} from "./layer.ts";
import { LmHead } from "./head.ts";

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
   * Tokens per tile of everything but attention (default 4096): the norms, projections, RoPE,
   * residual adds, the MLP and the LM head run tile by tile, in forward and backward, so their
   * intermediates ([tokens, hidden], [tokens, intermediate], [tokens, vocabulary chunk]) exist for
   * one tile at a time and do not grow with the sequence. What attention reads and writes (q, k,
   * v, its output and LSE, and their gradients) and the residual stream stay whole.
   */
  mlpTile?: number;
  /**
   * Where parameters, gradients and the AdamW state live (default: all on this device, nothing
   * all-reduced). Parallelism is applied from outside: the caller passes a replicated store over
   * its data-parallel ranks or ZeRO-3 (src/parallel/zero3.ts, with the optimizer offloaded or
   * not); the model makes no communicators.
   */
  params?: ParamStoreSpec;
  /**
   * Keep each layer's saved tensors (its input, and its attention output and LSE) in host memory:
   * copied out after the layer's forward and back before its backward. The device then holds two
   * layer inputs and one attention output whatever the depth.
   */
  offloadCheckpoints?: boolean;
}

export class DecoderModel {
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
  /**
   * The current micro-batch's documents per sequence, with the config's sliding window (null: plain
   * causal attention; a windowed model without documents has one document per sequence), as the
   * windowed layers see them; the layers without the window (before `windowFromLayer`) see
   * #causalDocuments: the given documents without the window, or null.
   */
  #documents: SequenceDocuments[] | null = null;
  #causalDocuments: SequenceDocuments[] | null = null;
  /** Device memory of their starts (grown as needed; tiny: one int64 per document). */
  #docStarts: DeviceBuffer | null = null;

  /** Parameters, gradients and AdamW state (replicated or sharded). */
  readonly params: ParamStore;
  // Saved per layer for backward.
  readonly xs: Slot[]; // residual stream input of layer l (l = numLayers: the final residual)
  readonly attnOut: Slot[];
  readonly attnLse: Slot[];
  readonly rstdF: Slot;
  readonly #layer: DecoderLayer;
  readonly #head: LmHead;
  /** The per-layer parameters of this config (the table in config.ts, filtered). */
  readonly #layerParams = [] as ReturnType<typeof layerParams>;
  /** Ones [tile] for the q/k/v biases (null without them), filled by allocate(). */
  readonly #ones: Tensor | null;
  // Inputs.
  readonly ids: Slot;
  readonly labels: Slot;
  readonly pos: Slot;
  readonly invFreq: Slot;

  constructor(
    readonly device: Device,
    readonly cfg: ModelConfig,
    readonly opts: ModelOptions,
    attention?: Attention,
  ) {
    const { dtype, batch, seqLen } = opts;
    const store = opts.params ?? replicatedParamStore();
    this.layout = new ParamLayout(cfg, store.align);
    this.#layerParams = layerParams(cfg);
    this.tokens = batch * seqLen;
    this.vocabChunk = Math.min(opts.vocabChunk ?? 4096, cfg.vocabSize);
    this.mlpTile = Math.max(1, Math.min(opts.mlpTile ?? 4096, batch * seqLen));
    const T = this.tokens, H = cfg.hiddenSize, I = cfg.intermediateSize, tile = this.mlpTile;
    const qDim = cfg.numHeads * cfg.headDim, kvDim = cfg.numKvHeads * cfg.headDim;
    const p = this.plan, f32 = DType.f32;
    this.params = store.create(device, this.layout, dtype, p);

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

    // Views [rows, cols] of reserved slots (a slot may be larger than one view of it).
    const view = (slot: Slot, rows: number, cols: number, dt = slot.dtype) =>
      new Tensor(slot, dt, [rows, cols]);
    const layer = (name: string, rows: number, cols: number, dt = dtype) =>
      view(p.reserve("layer scratch", name, rows * cols, dt), rows, cols);
    // q, k and v are attention's, of every token; the rest are one token tile's.
    const s: LayerScratch = {
      ln1: layer("ln1", tile, H),
      rstd1: layer("rstd1", tile, 1, f32),
      q: layer("q", T, qDim),
      k: layer("k", T, kvDim),
      v: layer("v", T, kvDim),
      xMid: layer("xMid", tile, H),
      ln2: layer("ln2", tile, H),
      rstd2: layer("rstd2", tile, 1, f32),
      gate: layer("gate", tile, I),
      up: layer("up", tile, I),
      h: layer("h", tile, I),
      tmp: layer("tmp", tile, H),
    };
    if (cfg.qkvBias) s.ones = layer("ones", tile, 1);
    if (cfg.qkNorm) {
      s.qk = {
        qRaw: layer("qRaw", tile, qDim),
        kRaw: layer("kRaw", tile, kvDim),
        rstdQ: layer("rstdQ", tile * cfg.numHeads, 1, f32),
        rstdK: layer("rstdK", tile * cfg.numKvHeads, 1, f32),
        qOut: layer("qOut", tile, qDim),
        kOut: layer("kOut", tile, kvDim),
        dqRaw: layer("dqRaw", tile, qDim),
        dkRaw: layer("dkRaw", tile, kvDim),
      };
    }
    const backSlot = (name: string, numel: number, dt = dtype) =>
      p.reserve("backward scratch", name, numel, dt);
    const dres = backSlot("dres", T * H), dh = backSlot("dh", tile * I);
    const dgate = backSlot("dgate", tile * I), dup = backSlot("dup", tile * I);
    const dln = backSlot("dln", tile * H), dO = backSlot("dO", T * qDim);
    const dqF32 = backSlot("dqF32", T * qDim, f32);
    // d(norm output) of a tile in fp32 is written by the MLP's backward before attention's
    // backward zeroes dqF32, and by the QKV projections' backward after tile 0's dq has been
    // rounded into q's buffer (bf16 only: in fp32 dq is dqF32 itself): it can be dqF32's first
    // rows (layer.ts, LayerGradScratch).
    const dlnF32 = dtype !== f32 && qDim >= H ? dqF32 : backSlot("dlnF32", tile * H, f32);
    const dkF32 = backSlot("dkF32", T * kvDim, f32), dvF32 = backSlot("dvF32", T * kvDim, f32);
    // In bf16 the rounded dq, dk, dv take the place of q, k, v, which attention's backward was
    // the last to read (DistAttn makes the compute stream wait for its transfers before returning).
    const rounded = (fp32: Slot, cols: number, q: Tensor) =>
      dtype === f32 ? view(fp32, T, cols) : q;
    const g: LayerGradScratch = {
      dres: view(dres, T, H),
      dh: view(dh, tile, I),
      dgate: view(dgate, tile, I),
      dup: view(dup, tile, I),
      dlnF32: view(dlnF32, tile, H, f32),
      dln: view(dln, tile, H),
      dO: view(dO, T, qDim),
      dqF32: view(dqF32, T, qDim),
      dkF32: view(dkF32, T, kvDim),
      dvF32: view(dvF32, T, kvDim),
      dq: rounded(dqF32, qDim, s.q),
      dk: rounded(dkF32, kvDim, s.k),
      dv: rounded(dvF32, kvDim, s.v),
    };

    const headSlot = (name: string, numel: number, dt: DType = f32) =>
      p.reserve("LM head and loss", name, numel, dt);
    const C = this.vocabChunk;
    // The final norm's output [tokens, hidden] lives from the end of the forward to the LM head's
    // backward, while no layer runs: it shares q's buffer when that is large enough.
    const xf = qDim >= H
      ? new Tensor(s.q.base, dtype, [T, H])
      : view(headSlot("xf", T * H, dtype), T, H);
    this.rstdF = headSlot("rstdF", T);
    // Logits exist for one (token tile, vocabulary chunk) at a time.
    const logits = headSlot("logits", tile * C);
    const dlogits = dtype === f32 ? logits : headSlot("dlogits", tile * C, dtype);
    const [ceM, ceS, ceTarget, ceLoss, ceLse] = ["ceM", "ceS", "ceTarget", "ceLoss", "ceLse"]
      .map((name) => view(headSlot(name, T), T, 1));
    // d(final norm output) lives only from the LM head's backward to the final norm's, before any
    // layer's backward needs dqF32: the two share one buffer when it is large enough.
    const dxfF32 = qDim >= H ? dqF32 : headSlot("dxfF32", T * H);
    const scalar = headSlot("scalar", 64);

    const inputs = "inputs";
    this.ids = p.reserve(inputs, "ids", T, f32); // int32 ids share fp32's 4-byte size
    this.labels = p.reserve(inputs, "labels", T, f32);
    this.pos = p.reserve(inputs, "pos", T, f32);
    this.invFreq = p.reserve(inputs, "invFreq", cfg.headDim / 2, f32);

    this.#head = new LmHead(
      device,
      {
        xf,
        labels: view(this.labels, T, 1, DType.f32),
        logits: view(logits, tile, C),
        dlogits: view(dlogits, tile, C),
        ceM,
        ceS,
        ceTarget,
        ceLoss,
        ceLse,
        dxfF32: view(dxfF32, T, H, f32),
        scalar: view(scalar, 1, 64),
      },
      T,
      H,
      cfg.vocabSize,
      C,
      tile,
      dtype,
    );
    const rope = { pos: view(this.pos, T, 1), invFreq: view(this.invFreq, 1, cfg.headDim / 2) };
    this.#ones = s.ones ?? null;
    this.#layer = new DecoderLayer(
      device,
      cfg,
      { dtype, batch, seqLen, tile },
      s,
      g,
      rope,
      (l) => layerWindow(cfg, l) > 0 ? this.#documents : this.#causalDocuments,
    );
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
    const ones = this.#ones;
    if (ones) {
      const f = new Float32Array(ones.shape[0]).fill(1);
      this.device.upload(ones.ptr, this.dtype === DType.f32 ? f : f32ToBf16(f));
    }
  }

  free(): void {
    this.plan.free();
    this.params.release();
    this.#host?.free();
    this.#host = null;
    this.#docStarts?.free();
    this.#docStarts = null;
    this.#documents = this.#causalDocuments = null;
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

  /**
   * Uploads a micro-batch: ids and labels [batch * seqLen]; positions default to 0..T-1.
   * `documents`: per sequence of the micro-batch, the global starts of its documents (the whole
   * sequence's, on every rank; src/model/documents.ts), so attention masks by document; absent:
   * causal attention over the whole sequence. A config with a sliding window (`slidingWindow`,
   * Mistral; Qwen2 from `windowFromLayer` on) masks its windowed layers by it too, with or without
   * documents. RoPE positions are the caller's
   * (`positions`).
   */
  setBatch(
    ids: Int32Array,
    labels: Int32Array,
    positions?: Int32Array,
    documents?: readonly DocStarts[],
  ): void {
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
    if (documents && documents.length !== this.opts.batch) {
      throw new Error(
        `documents: one list of starts per sequence (${this.opts.batch}), got ${documents.length}`,
      );
    }
    for (const starts of documents ?? []) validateDocStarts(starts, Infinity);
    this.device.upload(this.ids.ptr, ids);
    this.device.upload(this.labels.ptr, labels);
    this.device.upload(this.pos.ptr, pos);
    this.#uploadDocuments(documents);
  }

  /**
   * Uploads every sequence's document starts into one device buffer (grown when too small). With a
   * sliding window and no documents, each sequence is one document: the kernels take the window
   * with the documents (src/runtime/ops.ts, AttentionDocuments).
   */
  #uploadDocuments(given: readonly DocStarts[] | undefined): void {
    const window = this.cfg.slidingWindow ?? 0;
    const documents = given ??
      (window > 0 ? Array.from({ length: this.opts.batch }, () => [0]) : undefined);
    if (!documents) {
      this.#documents = this.#causalDocuments = null;
      return;
    }
    const all = docStartsInt64(documents.flatMap((starts) => Array.from(starts)));
    if (!this.#docStarts || this.#docStarts.bytes < all.byteLength) {
      this.#docStarts?.free();
      this.#docStarts = this.device.alloc(all.byteLength);
    }
    this.device.upload(this.#docStarts.ptr, all);
    let at = 0;
    this.#documents = documents.map((starts) => {
      const docs: SequenceDocuments = {
        starts,
        device: { starts: this.#docStarts!.ptr + BigInt(at * 8), count: starts.length },
      };
      if (window > 0) docs.window = docs.device.window = window;
      at += starts.length;
      return docs;
    });
    // Layers without the window: the same starts without it (plain causal when none were given).
    this.#causalDocuments = !given
      ? null
      : window > 0
      ? this.#documents.map(({ starts, device }) => ({
        starts,
        device: { starts: device.starts, count: device.count },
      }))
      : this.#documents;
  }

  /** Layer l's weights (or, `grads`, their fp32 gradients), after its unit is gathered. */
  #layerWeights(l: number, grads = false): LayerWeights {
    const at = (suffix: string) => {
      const e = this.layout.layer(l, suffix);
      return grads ? this.params.grad(e) : this.params.weight(e);
    };
    const w: Partial<LayerWeights> = {};
    for (const p of this.#layerParams) w[p.key] = at(p.name);
    return w as LayerWeights;
  }

  /** Layer l's saved tensors as views. */
  #saved(l: number): LayerSaved {
    const T = this.tokens, H = this.cfg.hiddenSize, c = this.cfg;
    const qDim = c.numHeads * c.headDim, S = this.opts.seqLen;
    return {
      x: new Tensor(this.xs[l], this.dtype, [T, H]),
      o: new Tensor(this.attnOut[l], this.dtype, [T, qDim]),
      lse: new Tensor(this.attnLse[l], DType.f32, [this.opts.batch * c.numHeads, S]),
      y: new Tensor(this.xs[l + 1], this.dtype, [T, H]),
    };
  }

  /** The LM head's weight [V, H] (or, `grads`, its fp32 gradient). */
  #headWeight(grads = false): Tensor {
    const e = this.layout.lmHead, shape = [this.cfg.vocabSize, this.cfg.hiddenSize];
    return grads
      ? Tensor.at(this.params.grad(e), DType.f32, shape)
      : Tensor.at(this.params.weight(e), this.dtype, shape);
  }

  /** Forward through the layers and the final norm: xs[] and the final norm's output filled. */
  async forward(): Promise<void> {
    const d = this.device, c = this.cfg, dt = this.dtype, T = this.tokens, H = c.hiddenSize;
    const L = this.layout, layer = this.#layer;
    await this.params.gather(0);
    await this.params.prefetch(1);
    const emb = this.params.weight(L.get("model.embed_tokens.weight"));
    op.embeddingForward(d, this.xs[0].ptr, emb, this.ids.ptr, T, c.vocabSize, H, dt);
    for (let l = 0; l < c.numLayers; l++) {
      this.onLayer?.("forward", l);
      await this.params.gather(l + 1);
      await this.params.prefetch(l + 2); // the next layer, or the final norm and LM head
      const w = this.#layerWeights(l), io = this.#saved(l);
      layer.preAttention(io, w);
      this.#host?.beforeOverwrite(l % 2); // attention output slot: layer l-2's copy has left
      await layer.attend(this.attention, io, l);
      this.#host?.beforeOverwrite((l + 1) % 2); // input slot of layer l+1: layer l-1's has left
      layer.postAttention(io, w);
      this.#host?.save(l, this.#savedSlots(l));
    }
    await this.params.gather(c.numLayers + 1);
    const norm = this.params.weight(L.get("model.norm.weight")), xf = this.#head.b.xf.ptr;
    const x = this.xs[c.numLayers].ptr;
    op.rmsnormForward(d, xf, this.rstdF.ptr, x, norm, T, H, c.rmsNormEps, dt);
  }

  /**
   * Cross-entropy of the current micro-batch, chunked over the vocabulary. Returns the sum of
   * per-token losses (ignored labels count 0).
   */
  lossSum(): number {
    return this.#head.lossSum(this.#headWeight());
  }

  /**
   * Backward of (lossScale * sum of token losses) into the fp32 gradients (accumulated: zero them
   * at the start of an optimizer step). Needs forward() and lossSum() of the same micro-batch.
   * The forward in reverse: LM head, final norm, the layers from the top, the embedding.
   */
  async backward(lossScale: number): Promise<void> {
    const d = this.device, c = this.cfg, dt = this.dtype, T = this.tokens, H = c.hiddenSize;
    const L = this.layout, g = this.#layer.g, head = this.#head.b;
    this.params.beginGrads(0);
    this.params.beginGrads(c.numLayers + 1);
    this.#head.backward(this.#headWeight(), this.#headWeight(true), lossScale);
    // Final norm, tile by tile: dres = d(x_L).
    d.memset(g.dres.ptr, 0, g.dres.bytes);
    const normF = L.get("model.norm.weight"), x = new Tensor(this.xs[c.numLayers], dt, [T, H]);
    const [normW, normG] = [this.params.weight(normF), this.params.grad(normF)];
    for (let t0 = 0; t0 < T; t0 += this.mlpTile) {
      const n = Math.min(this.mlpTile, T - t0), rows = (t: Tensor) => t.rows(t0, n).ptr;
      op.convert(d, g.dln.ptr, dt, rows(head.dxfF32), DType.f32, n * H);
      const rstd = this.rstdF.ptr + BigInt(t0 * 4);
      op.rmsnormBackward(d, rows(g.dres), normG, g.dln.ptr, rows(x), normW, rstd, n, H, dt);
    }
    await this.params.reduceGrads(c.numLayers + 1);

    const recomputeAttention = this.opts.checkpointBoundary === "layer";
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
      const w = this.#layerWeights(l), gw = this.#layerWeights(l, true);
      await this.#layer.backward(this.attention, this.#saved(l), w, gw, recomputeAttention, l);
      await this.params.reduceGrads(l + 1);
    }
    const emb = this.params.grad(L.get("model.embed_tokens.weight"));
    op.embeddingBackward(d, emb, g.dres.ptr, this.ids.ptr, T, c.vocabSize, H, dt);
    await this.params.reduceGrads(0);
  }

  /** The device slots of layer l's saved tensors that --offload-checkpoints moves to the host. */
  #savedSlots(l: number): Partial<Record<"x" | "o" | "lse", DevicePtr>> {
    if (!this.#hostCheckpoints?.o) return { x: this.xs[l].ptr };
    return { x: this.xs[l].ptr, o: this.attnOut[l].ptr, lse: this.attnLse[l].ptr };
  }

  /** Full-vocabulary logits [tokens, V] in fp32 after forward() (for tests and evaluation). */
  fullLogits(): Float32Array {
    return this.#head.fullLogits(this.#headWeight());
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
