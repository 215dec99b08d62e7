/**
 * `distflash bench attn`: forward+backward TFLOP/s of causal attention per GPU, on one device
 * (the local kernel over the whole sequence) or over the ranks of a launched job (DistAttn over
 * the sequence split into contiguous slices), for each schedule variant.
 *
 * FLOPs (the project's convention): causal forward = 2 * B * H * S^2 * D, backward = 2.5 x forward;
 * per GPU = total / P. Timing: median of `reps` runs after `warmup`, device synchronised.
 *
 * With `docLength` (--attention-mask document) every configuration runs twice, causal and with the
 * sequence packed into documents of random lengths averaging docLength tokens (the same starts on
 * every rank): a document row's FLOPs count its visible (query, key) pairs (4 x H x D per pair in
 * the forward, as the causal convention's S^2 / 2 pairs), and `attention work ratio` is causal's
 * visible pairs over the documents', the speedup the skipped work allows, to judge the measured
 * one against. With `window` (--sliding-window) a row under the sliding window is added the same
 * way (its visible pairs: each query's last `window` keys).
 */
import type { Device } from "../runtime/device.ts";
import * as op from "../runtime/ops.ts";
import { attentionBackward, attentionForward } from "../model/document_attention.ts";
import { DType } from "../runtime/ops.ts";
import type { Communicator } from "../comm/comm.ts";
import { DistAttention } from "../parallel/distattn.ts";
import { ZigzagAttention } from "../parallel/zigzag.ts";
import { docStartsInt64, visiblePairCount } from "../model/documents.ts";
import { type AttentionGeometry, blockPair, type SequenceDocuments } from "../model/attention.ts";
import { randomDocumentStarts } from "../parallel/document_work.ts";

export interface AttnBenchOptions {
  seq: number[];
  heads: number;
  kvHeads: number;
  headDim: number;
  reps: number;
  warmup: number;
  variants: AttnVariant[];
  /** Also time document masking, documents of this many tokens on average (random lengths). */
  docLength?: number;
  /** Also time causal attention under a sliding window of this many tokens (Mistral's). */
  window?: number;
}

/** The mask of a bench row: causal over the whole sequence, packed documents, or a sliding window. */
export type AttnMask = "causal" | "document" | "window";

export type AttnVariant = "balanced" | "unbalanced" | "no-overlap" | "zigzag";

export interface AttnBenchRow {
  seq: number;
  ranks: number;
  variant: AttnVariant | "single";
  mask: AttnMask;
  /** Visible (query, key) pairs of the whole sequence (per head). */
  visiblePairs: number;
  /** Documents in the sequence (1 for causal). */
  documents: number;
  fwdMs: number;
  fwdBwdMs: number;
  /** forward+backward TFLOP/s per GPU */
  tflops: number;
  fwdTflops: number;
}

export function causalFlops(seq: number, heads: number, headDim: number): number {
  return 2 * heads * seq * seq * headDim;
}

/** The document starts bench attn packs a `seq`-token sequence with (seeded: every rank agrees). */
export function benchDocumentStarts(seq: number, docLength: number): number[] {
  return randomDocumentStarts(seq, docLength, seq);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** Random bf16 values in [-1, 1) (mulberry32), written on the device through fp32 staging. */
export function fillRandom(d: Device, ptr: bigint, n: number, seed: number): void {
  const chunk = 1 << 20;
  const tmp = d.alloc(chunk * 4);
  let a = seed >>> 0;
  const host = new Float32Array(chunk);
  for (let i = 0; i < n; i += chunk) {
    const m = Math.min(chunk, n - i);
    for (let j = 0; j < m; j++) {
      a = (a + 0x6d2b79f5) >>> 0;
      let t = Math.imul(a ^ (a >>> 15), a | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      host[j] = (((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1;
    }
    d.upload(tmp.ptr, host.subarray(0, m));
    op.convert(d, ptr + BigInt(i * 2), DType.bf16, tmp.ptr, DType.f32, m);
  }
  tmp.free();
}

/** Times `fn` (which enqueues device work) with device synchronisation; returns median ms. */
async function time(
  d: Device,
  comm: Communicator | null,
  reps: number,
  warmup: number,
  fn: () => Promise<void>,
): Promise<number> {
  const times: number[] = [];
  const trace = Deno.env.get("DISTFLASH_TRACE") === "1";
  for (let i = 0; i < warmup + reps; i++) {
    if (trace) console.error(`[rank ${comm?.rank ?? 0}] rep ${i}: synchronize`);
    d.synchronize();
    // On GPUs the NCCL transfers of the timed work keep the ranks in step; the host transport's
    // ranks line up at a store barrier.
    if (comm && d.backend !== "cuda") await comm.barrier();
    if (trace) console.error(`[rank ${comm?.rank ?? 0}] rep ${i}: run`);
    const t0 = performance.now();
    await fn();
    d.synchronize();
    if (i >= warmup) times.push(performance.now() - t0);
  }
  return median(times);
}

export async function benchAttention(
  d: Device,
  comm: Communicator | null,
  o: AttnBenchOptions,
): Promise<AttnBenchRow[]> {
  const P = comm?.size ?? 1, rank = comm?.rank ?? 0;
  const rows: AttnBenchRow[] = [];
  for (const seq of o.seq) {
    if (seq % P !== 0) throw new Error(`--seq ${seq} is not a multiple of the ${P} ranks`);
    // The reference of the distributed rows, in the same run: the whole sequence on rank 0's GPU
    // alone (the other ranks wait for it in their first exchange).
    if (P > 1 && rank === 0) rows.push(...await benchAttention(d, null, { ...o, seq: [seq] }));
    const S = seq / P, H = o.heads, KV = o.kvHeads, D = o.headDim;
    const q = d.alloc(S * H * D * 2), k = d.alloc(S * KV * D * 2), v = d.alloc(S * KV * D * 2);
    const dout = d.alloc(S * H * D * 2), out = d.alloc(S * H * D * 2), lse = d.alloc(H * S * 4);
    const dq = d.alloc(S * H * D * 4), dk = d.alloc(S * KV * D * 4), dv = d.alloc(S * KV * D * 4);
    const starts = o.docLength ? benchDocumentStarts(seq, o.docLength) : null;
    const startsBuf = starts ? d.alloc(starts.length * 8) : null;
    const windowStart = o.window ? d.alloc(8) : null;
    try {
      let docs: SequenceDocuments | undefined, windowed: SequenceDocuments | undefined;
      if (starts && startsBuf) {
        d.upload(startsBuf.ptr, docStartsInt64(starts));
        docs = { starts, device: { starts: startsBuf.ptr, count: starts.length } };
      }
      if (o.window && windowStart) {
        // A windowed model without documents: the single start 0 and the window.
        d.upload(windowStart.ptr, docStartsInt64([0]));
        const device = { starts: windowStart.ptr, count: 1, window: o.window };
        windowed = { starts: [0], window: o.window, device };
      }
      fillRandom(d, q.ptr, S * H * D, 11 + rank);
      fillRandom(d, k.ptr, S * KV * D, 22 + rank);
      fillRandom(d, v.ptr, S * KV * D, 33 + rank);
      fillRandom(d, dout.ptr, S * H * D, 44 + rank);
      const variants: (AttnVariant | "single")[] = P === 1 ? ["single"] : o.variants;
      const masks: AttnMask[] = ["causal"];
      if (docs) masks.push("document");
      if (windowed) masks.push("window");
      for (const variant of variants) {
        for (const mask of masks) {
          const maskDocs = mask === "document" ? docs : mask === "window" ? windowed : undefined;
          const visiblePairs = visiblePairCount(
            maskDocs?.starts ?? [0],
            0,
            seq,
            0,
            seq,
            maskDocs?.window,
          );
          // Causal keeps the convention (S^2 / 2 pairs); documents and the window count the pairs
          // they compute.
          const total = mask === "causal" ? causalFlops(seq, H, D) : 4 * H * D * visiblePairs;
          let fwd: () => Promise<void>, bwd: () => Promise<void>;
          let dist: DistAttention | ZigzagAttention | null = null;
          if (variant === "single") {
            // The diagonal pair as the model makes it (blockPair: documents with their host copy).
            const shape = blockPair({
              tq: S,
              tk: S,
              nh: H,
              nkv: KV,
              hd: D,
              qPos0: 0,
              kPos0: 0,
              scale: 1 / Math.sqrt(D),
              dtype: DType.bf16,
            }, maskDocs)!;
            fwd = () =>
              Promise.resolve(attentionForward(d, out.ptr, lse.ptr, q.ptr, k.ptr, v.ptr, shape));
            bwd = () =>
              Promise.resolve(
                attentionBackward(
                  d,
                  dq.ptr,
                  dk.ptr,
                  dv.ptr,
                  dout.ptr,
                  q.ptr,
                  k.ptr,
                  v.ptr,
                  out.ptr,
                  lse.ptr,
                  shape,
                ),
              );
          } else {
            const cfg: AttentionGeometry = { numHeads: H, numKvHeads: KV, headDim: D };
            dist = variant === "zigzag"
              ? new ZigzagAttention(d, cfg, S, DType.bf16, comm!)
              : new DistAttention(d, cfg, S, DType.bf16, comm!, {
                balanced: variant !== "unbalanced",
                overlap: variant !== "no-overlap",
              });
            const a = dist;
            const t = { q: q.ptr, k: k.ptr, v: v.ptr, out: out.ptr, lse: lse.ptr, docs: maskDocs };
            fwd = () => a.forward(t);
            bwd = () => a.backward(t, { dout: dout.ptr, dq: dq.ptr, dk: dk.ptr, dv: dv.ptr });
          }
          const fwdMs = await time(d, comm, o.reps, o.warmup, fwd);
          const fwdBwdMs = await time(d, comm, o.reps, o.warmup, async () => {
            await fwd();
            await bwd();
          });
          dist?.free();
          rows.push({
            seq,
            ranks: P,
            variant,
            mask,
            visiblePairs,
            documents: maskDocs?.starts.length ?? 1,
            fwdMs,
            fwdBwdMs,
            tflops: (3.5 * total) / P / (fwdBwdMs / 1e3) / 1e12,
            fwdTflops: total / P / (fwdMs / 1e3) / 1e12,
          });
        }
      }
    } finally {
      for (const b of [q, k, v, dout, out, lse, dq, dk, dv]) b.free();
      startsBuf?.free();
      windowStart?.free();
    }
  }
  return rows;
}

/** The table bench attn prints; distributed rows also give their share of the one-GPU rate. */
export function formatAttnRows(rows: AttnBenchRow[]): string {
  const lines = [
    "seq      ranks variant      mask       fwd ms   fwd+bwd ms  fwd TFLOP/s  fwd+bwd TFLOP/s/GPU  of 1 GPU",
  ];
  for (const r of rows) {
    const single = rows.find((s) => s.seq === r.seq && s.variant === "single" && s.mask === r.mask);
    const share = r.ranks > 1 && single ? `${((100 * r.tflops) / single.tflops).toFixed(1)}%` : "";
    lines.push(
      `${String(r.seq).padEnd(8)} ${String(r.ranks).padEnd(5)} ${r.variant.padEnd(12)} ${
        r.mask.padEnd(8)
      } ${r.fwdMs.toFixed(2).padStart(8)} ${r.fwdBwdMs.toFixed(2).padStart(12)} ${
        r.fwdTflops.toFixed(1).padStart(12)
      } ${r.tflops.toFixed(1).padStart(20)} ${share.padStart(9)}`.trimEnd(),
    );
  }
  lines.push(...documentSpeedups(rows));
  return lines.join("\n");
}

/**
 * Per document or window row: the measured speedup over the same configuration causal, beside the
 * attention work ratio (causal's visible pairs over the row's), the most skipping the work can give.
 */
function documentSpeedups(rows: AttnBenchRow[]): string[] {
  const lines: string[] = [];
  for (const r of rows) {
    if (r.mask === "causal") continue;
    const causal = rows.find((c) =>
      c.mask === "causal" && c.seq === r.seq && c.ranks === r.ranks && c.variant === r.variant
    );
    if (!causal) continue;
    if (lines.length === 0) {
      lines.push(
        "",
        "document masking / sliding window against causal (speedup measured; work ratio = visible pairs)",
      );
    }
    const what = r.mask === "window" ? "sliding window" : `${r.documents} documents`;
    lines.push(
      `${String(r.seq).padEnd(8)} ${String(r.ranks).padEnd(5)} ${
        r.variant.padEnd(12)
      } ${what}: speedup fwd ${(causal.fwdMs / r.fwdMs).toFixed(2)}x, fwd+bwd ${
        (causal.fwdBwdMs / r.fwdBwdMs).toFixed(2)
      }x; attention work ratio ${(causal.visiblePairs / r.visiblePairs).toFixed(2)}x`,
    );
  }
  return lines;
}
