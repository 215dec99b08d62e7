/**
 * How documents spread the attention work over the ranks of a sequence: the number of visible
 * (query, key) pairs each rank's queries hold (src/model/documents.ts counts them) under the run's
 * layout. Causal attention under zigzag gives every rank the same work; documents do not, and
 * `plan` reports by how much.
 */
import { type DocStarts, visiblePairCount } from "../model/documents.ts";
import type { ParallelLayout } from "./layout.ts";
import { Rng } from "../data/random.ts";

/**
 * Visible (query, key) pairs of each sp rank's queries in a `length`-token window, under a sliding
 * window when `window` > 0.
 */
export function attentionWorkPerRank(
  layout: ParallelLayout,
  length: number,
  starts: DocStarts,
  window = 0,
): number[] {
  return Array.from({ length: layout.sp }, (_, r) => {
    let work = 0;
    for (const [q0, n] of layout.forRank(layout.dpRank * layout.sp + r).pieces(length)) {
      work += visiblePairCount(starts, q0, q0 + n, 0, length, window);
    }
    return work;
  });
}

/**
 * Document starts of a `length`-token window packing documents of random lengths, uniform in
 * [1, 2 x meanLength - 1] (mean meanLength), from a seeded generator.
 */
export function randomDocumentStarts(length: number, meanLength: number, seed = 0): number[] {
  const rng = new Rng(seed), starts = [0];
  for (let at = 0;;) {
    at += 1 + rng.below(Math.max(1, 2 * meanLength - 1));
    if (at >= length) return starts;
    starts.push(at);
  }
}

/** Busiest rank's work over the mean (1 = balanced). */
export function imbalance(work: number[]): number {
  const mean = work.reduce((a, b) => a + b, 0) / work.length;
  return mean > 0 ? Math.max(...work) / mean : 1;
}
