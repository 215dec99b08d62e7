/**
 * Work balanced by documents under the zigzag layout: a deterministic permutation of the WHOLE
 * documents of a window, chosen so that the busiest sp rank holds as little attention work as a
 * short local search finds.
 *
 * Zigzag gives every rank the same number of tokens and, for causal attention, the same work. With
 * documents (src/model/documents.ts) a query sees only the keys of its own document up to itself,
 * so a token's work is its position inside its document plus one, and a rank holding the ends of
 * long documents does more than one holding their beginnings. Documents do not see each other,
 * RoPE positions restart at 0 in each one and the prediction of a document's first token from the
 * previous one is not trained on, so reordering whole documents inside a window (their tokens and
 * labels moving with them, the document starts given explicitly) changes no loss term: only the
 * order in which the same numbers are summed.
 *
 * Pure: no device, no I/O; the same window gives the same order on every rank.
 */
import type { DocStarts } from "../model/documents.ts";

/** The documents of a window in their balanced order, and what the order gives. */
export interface DocumentBalance {
  /** order[i] = the index (in the window's order) of the document placed i-th. */
  order: number[];
  /** The document starts of the permuted window (ascending, the first 0). */
  starts: number[];
  /** Visible (query, key) pairs of each sp rank's queries before the permutation. */
  workBefore: number[];
  /** The same after it. */
  workAfter: number[];
  /** Busiest rank's work over the mean, before and after (1 = balanced). */
  before: number;
  after: number;
}

/** Options of the search (the defaults are what training uses). */
export interface BalanceOptions {
  /**
   * Upper bound on the document placements the search evaluates (each candidate order costs one
   * per document): keeps a window of many short documents to a few milliseconds.
   */
  budget?: number;
}

/** Lengths of the documents of a `length`-token window from its starts. */
export function documentLengths(starts: DocStarts, length: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < starts.length; i++) {
    out.push((i + 1 < starts.length ? starts[i + 1] : length) - starts[i]);
  }
  return out;
}

/**
 * Work of each of the P zigzag ranks when documents of `lengths` follow each other in the order
 * `order` (indices into lengths) in a window of 2P chunks of `chunk` tokens: a query at in-document
 * position j sees j + 1 keys; rank r holds chunks r and 2P-1-r. Adds into `out` (zeroed first).
 */
export function zigzagWork(
  lengths: ArrayLike<number>,
  order: ArrayLike<number>,
  P: number,
  chunk: number,
  out: number[] = new Array(P).fill(0),
): number[] {
  out.fill(0);
  let a = 0;
  for (let i = 0; i < order.length; i++) {
    const e = a + lengths[order[i]];
    for (let c = Math.floor(a / chunk); c * chunk < e; c++) {
      const lo = Math.max(a, c * chunk), hi = Math.min(e, (c + 1) * chunk);
      // sum of (p - a + 1) for p in [lo, hi)
      out[c < P ? c : 2 * P - 1 - c] += ((hi - lo) * (lo - a + 1 + (hi - a))) / 2;
    }
    a = e;
  }
  return out;
}

/** Busiest rank's work over the mean (1 = balanced, and for no work). */
function busiestOverMean(work: number[]): number {
  let sum = 0, max = 0;
  for (const w of work) {
    sum += w;
    if (w > max) max = w;
  }
  return sum > 0 ? max / (sum / work.length) : 1;
}

/** Orders compare by the busiest rank's work, then by the sum of squares (flatter is better). */
function score(work: number[]): [number, number] {
  let max = 0, squares = 0;
  for (const w of work) {
    if (w > max) max = w;
    squares += w * w;
  }
  return [max, squares];
}

function better(a: [number, number], b: [number, number]): boolean {
  return a[0] < b[0] || (a[0] === b[0] && a[1] < b[1]);
}

/** Windows of at most this many documents try every order (8! = 40320). */
const EXHAUSTIVE = 8;

/**
 * First-improvement local search from `cur`: swaps of two documents, then moves of one to another
 * place, while the score improves and `more()` allows. Returns the order reached and its score.
 */
function localSearch(
  cur: number[],
  evaluate: (order: number[]) => [number, number],
  lengths: number[],
  more: () => boolean,
): [number[], [number, number]] {
  const n = cur.length;
  let bestScore = evaluate(cur);
  for (let improved = true; improved && more();) {
    improved = false;
    for (let i = 0; i < n && more(); i++) {
      for (let j = i + 1; j < n && more(); j++) {
        if (lengths[cur[i]] === lengths[cur[j]]) continue;
        [cur[i], cur[j]] = [cur[j], cur[i]];
        const s = evaluate(cur);
        if (better(s, bestScore)) {
          bestScore = s;
          improved = true;
        } else [cur[i], cur[j]] = [cur[j], cur[i]];
      }
    }
    for (let i = 0; i < n && more(); i++) {
      for (let j = 0; j <= n && more(); j++) {
        if (j === i || j === i + 1) continue;
        const moved = cur.slice(), [d] = moved.splice(i, 1);
        moved.splice(j > i ? j - 1 : j, 0, d);
        const s = evaluate(moved);
        if (better(s, bestScore)) {
          bestScore = s;
          cur.splice(0, n, ...moved);
          improved = true;
        }
      }
    }
  }
  return [cur, bestScore];
}

/**
 * The balanced order of the documents (given by their `starts`) of a `length`-token window cut
 * into 2P zigzag chunks (length a multiple of 2P). Up to 8 documents: the best of every order.
 * More: a local search (swap two documents, or move one to another place, while the busiest
 * rank's work, then the spread, decreases) from a few orders (the window's own, longest first,
 * shortest first, long documents alternately at both ends), the best result kept, within
 * `budget`. Never worse than the window's own order; ties keep the earlier order found.
 */
export function balanceDocuments(
  starts: DocStarts,
  length: number,
  P: number,
  options: BalanceOptions = {},
): DocumentBalance {
  if (!Number.isInteger(P) || P < 1 || length % (2 * P) !== 0) {
    throw new Error(
      `balanceDocuments: a window of ${length} tokens is not cut into ${2 * P} chunks`,
    );
  }
  const lengths = documentLengths(starts, length), n = lengths.length, chunk = length / (2 * P);
  const identity = lengths.map((_, i) => i);
  const workBefore = zigzagWork(lengths, identity, P, chunk);
  let budget = options.budget ?? 2_000_000;
  const work = new Array(P).fill(0);
  const evaluate = (order: number[]): [number, number] => {
    budget -= order.length;
    return score(zigzagWork(lengths, order, P, chunk, work));
  };

  let best = identity, bestScore = score(workBefore);
  if (P > 1 && n > 1 && n <= EXHAUSTIVE) {
    // Few documents: every order (Heap's algorithm), the first best one kept.
    const cur = identity.slice(), c = new Array(n).fill(0);
    for (let i = 1; i < n;) {
      if (c[i] < i) {
        const k = i % 2 === 0 ? 0 : c[i];
        [cur[k], cur[i]] = [cur[i], cur[k]];
        const s = evaluate(cur);
        if (better(s, bestScore)) [best, bestScore] = [cur.slice(), s];
        c[i]++;
        i = 1;
      } else c[i++] = 0;
    }
  } else if (P > 1 && n > 1) {
    const longFirst = identity.slice().sort((x, y) => lengths[y] - lengths[x] || x - y);
    const ends: number[] = new Array(n);
    longFirst.forEach((d, i) => (ends[i % 2 === 0 ? i >> 1 : n - 1 - (i >> 1)] = d));
    // Each start is improved by the local search; the best result is kept.
    for (const start of [identity, longFirst, longFirst.slice().reverse(), ends]) {
      if (budget <= 0) break;
      const [order, s] = localSearch(start.slice(), evaluate, lengths, () => budget > 0);
      if (better(s, bestScore)) [best, bestScore] = [order, s];
    }
  }
  const workAfter = zigzagWork(lengths, best, P, chunk);
  const permuted: number[] = [];
  let at = 0;
  for (const d of best) {
    permuted.push(at);
    at += lengths[d];
  }
  return {
    order: best,
    starts: permuted,
    workBefore,
    workAfter,
    before: busiestOverMean(workBefore),
    after: busiestOverMean(workAfter),
  };
}

/**
 * Copies `from` (one window of `length` values, e.g. its inputs or its labels) into `to` with its
 * documents (given by `starts`) in `order`: what balanceDocuments chose.
 */
export function permuteDocuments(
  from: Int32Array,
  to: Int32Array,
  starts: DocStarts,
  length: number,
  order: number[],
): void {
  let at = 0;
  for (const d of order) {
    const s = starts[d], e = d + 1 < starts.length ? starts[d + 1] : length;
    to.set(from.subarray(s, e), at);
    at += e - s;
  }
}
