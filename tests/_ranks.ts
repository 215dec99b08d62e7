/**
 * A model on P in-process ranks (LocalGroup communicators on the test device), as the trainer
 * builds them: each rank's layout, batch slice, sequence attention and model; and the whole
 * sequence's logits and summed gradients read back from them. Shared by the model tests that compare
 * P ranks with one rank or with transformers (documents_model, families_ranks, mistral_window).
 */
import { testDevice } from "./_util.ts";
import type { ModelConfig } from "../src/model/config.ts";
import { DecoderModel } from "../src/model/decoder.ts";
import { DType } from "../src/runtime/ops.ts";
import { ParallelLayout, type SequenceLayout } from "../src/parallel/layout.ts";
import { buildSequenceAttention } from "../src/parallel/sequence_attention.ts";
import { LocalGroup } from "../src/comm/local_comm.ts";
import { balanceDocuments } from "../src/parallel/document_balance.ts";
import { docStartsFromTokens } from "../src/model/documents.ts";

/** One in-process rank. */
export interface Rank {
  layout: ParallelLayout;
  batch: ReturnType<ParallelLayout["sliceBatch"]>;
  model: DecoderModel;
  attention: ReturnType<typeof buildSequenceAttention> | undefined;
}

/**
 * The fp32 model of `cfg` on P ranks over `windows` windows of L tokens (`ids`, `labels`), with
 * the sequence layout and the document split (`split`: as sliceBatch takes it; absent: causal).
 * Allocated; the caller loads or initialises the weights and frees the ranks ({@link freeRanks}).
 */
export function inProcessRanks(
  cfg: ModelConfig,
  o: {
    P: number;
    layout: SequenceLayout;
    ids: Int32Array;
    labels: Int32Array;
    windows: number;
    L: number;
    split?: Parameters<ParallelLayout["sliceBatch"]>[3];
    vocabChunk: number;
    headGroups?: number;
  },
): Rank[] {
  const d = testDevice();
  return new LocalGroup(d, o.P).members().map((comm, r) => {
    const layout = new ParallelLayout(o.P, r, {
      spSize: o.P,
      distattnLayout: o.layout,
      fsdp: "",
      offloadOptimizer: false,
    });
    const batch = layout.sliceBatch({ inputs: o.ids, labels: o.labels }, o.windows, o.L, o.split);
    const S = layout.tokensPerRank(o.L);
    const attention = o.P === 1 ? undefined : buildSequenceAttention(d, cfg, S, DType.f32, comm, {
      layout: o.layout,
      balanced: true,
      overlap: true,
      headGroups: o.headGroups ?? 1,
    });
    attention?.allocate();
    const model = new DecoderModel(
      d,
      cfg,
      { dtype: DType.f32, batch: o.windows, seqLen: S, vocabChunk: o.vocabChunk },
      attention,
    );
    model.allocate();
    return { layout, batch, model, attention };
  });
}

/** Frees every rank's model and sequence attention. */
export function freeRanks(ranks: Rank[]): void {
  for (const { model, attention } of ranks) {
    model.free();
    attention?.free();
  }
}

/** Number of trained labels over all ranks (the loss's denominator). */
export function labelCount(ranks: Rank[]): number {
  return ranks.reduce((n, { batch }) => n + batch.labels.filter((l) => l >= 0).length, 0);
}

/**
 * The whole batch's logits [windows, L, V] in window order, gathered from the ranks' pieces; with
 * `bos` (documents) under zigzag on several ranks, each window's documents are put back in their
 * original order (sliceBatch reorders them for balance).
 */
export function gatheredLogits(
  ranks: Rank[],
  o: { ids: Int32Array; windows: number; L: number; V: number; bos?: number; balanced: boolean },
): Float32Array {
  const { windows, L, V } = o;
  const logits = new Float32Array(windows * L * V);
  for (const { model, layout } of ranks) {
    const mine = model.fullLogits(), S = layout.tokensPerRank(L);
    for (let b = 0; b < windows; b++) {
      let at = b * S;
      for (const [start, n] of layout.pieces(L)) {
        logits.set(mine.subarray(at * V, (at + n) * V), (b * L + start) * V);
        at += n;
      }
    }
  }
  if (o.bos !== undefined && o.balanced) {
    const P = ranks.length;
    for (let b = 0; b < windows; b++) {
      const docs = docStartsFromTokens(o.ids.subarray(b * L, (b + 1) * L), o.bos);
      const { order, starts } = balanceDocuments(docs, L, P);
      const moved = logits.slice(b * L * V, (b + 1) * L * V);
      order.forEach((doc, i) => {
        const n = (doc + 1 < docs.length ? docs[doc + 1] : L) - docs[doc];
        logits.set(moved.subarray(starts[i] * V, (starts[i] + n) * V), (b * L + docs[doc]) * V);
      });
    }
  }
  return logits;
}

/** Every parameter's gradient summed over the ranks (each holds its tokens' share). */
export function summedGrads(ranks: Rank[]): Map<string, Float32Array> {
  const grads = new Map<string, Float32Array>();
  for (const e of ranks[0].model.layout.entries) {
    const sum = new Float32Array(e.numel);
    for (const { model } of ranks) {
      const g = model.gradOf(e.name);
      for (let i = 0; i < sum.length; i++) sum[i] += g[i];
    }
    grads.set(e.name, sum);
  }
  return grads;
}
