/**
 * Packed documents that do not see each other: the one owner of the visibility rule on the host.
 *
 * A sequence (a training window) packs documents back to back. They are described by `starts`, the
 * global positions where documents begin: ascending, the first one 0 (the whole sequence's
 * boundaries, the same array for every rank and block pair). A query at position p sees a key at
 * position s iff docStart(p) <= s <= p, where docStart(p) is the largest start <= p.
 *
 * A sliding window W (Mistral's `sliding_window`) tightens the rule: the query at p also needs
 * p - s < W, as in Hugging Face transformers (masking_utils.sliding_window_overlay: kv_idx > q_idx -
 * sliding_window, and-ed with the causal mask), so p sees s iff max(docStart(p), p - W + 1) <= s <=
 * p. Every function below takes the window as its optional last argument (absent or 0: none); a
 * windowed model without documents is the single start [0] with the window. The kernels
 * apply the same rule inside a block pair (csrc/include/distflash.h, df_attention_forward_docs);
 * this module answers the questions above the kernels: which block pairs have any visible
 * (query, key) pair (the others are skipped), how much work a block pair holds, where documents
 * begin in a token window and which RoPE position each token gets.
 *
 * Pure: no device, no I/O. Positions are plain numbers (exact integers up to 2^53).
 */

/** Global start positions of the documents of one sequence (ascending, the first 0). */
export type DocStarts = ArrayLike<number>;

/** Throws unless `starts` is a valid document list for a sequence of `length` tokens. */
export function validateDocStarts(starts: DocStarts, length: number): void {
  if (starts.length === 0) {
    throw new Error("document starts: empty (the first document starts at 0)");
  }
  if (starts[0] !== 0) throw new Error(`document starts: the first must be 0, got ${starts[0]}`);
  for (let i = 1; i < starts.length; i++) {
    const s = starts[i];
    if (!Number.isInteger(s) || s <= starts[i - 1] || s >= length) {
      throw new Error(
        `document starts: entry ${i} (${s}) must be an integer above ${
          starts[i - 1]
        } and below the sequence length ${length}`,
      );
    }
  }
}

/** Number of starts <= p (binary search). */
function startsUpTo(starts: DocStarts, p: number): number {
  let lo = 0, hi = starts.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (starts[mid] <= p) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Index in `starts` of the document holding position p (0 for positions before every start). */
export function documentIndexOf(starts: DocStarts, p: number): number {
  return Math.max(startsUpTo(starts, p) - 1, 0);
}

/** First position of the document holding position p. */
export function docStartOf(starts: DocStarts, p: number): number {
  const c = startsUpTo(starts, p);
  return c > 0 ? starts[c - 1] : 0;
}

/** First position after the document holding position p (Infinity for the last document). */
export function docEndOf(starts: DocStarts, p: number): number {
  const c = startsUpTo(starts, p);
  return c < starts.length ? starts[c] : Infinity;
}

/** Throws unless `window` is a sliding window: 0 (none) or a positive integer. */
export function validateWindow(window: number): void {
  if (!Number.isSafeInteger(window) || window < 0) {
    throw new Error(`sliding window: must be 0 (none) or a positive integer, got ${window}`);
  }
}

/** The window as a bound on p - s (Infinity for none). */
function span(window: number | undefined): number {
  return window && window > 0 ? window : Infinity;
}

/** First key position the query at p sees: max(docStart(p), p - window + 1). */
export function firstKeyOf(starts: DocStarts, p: number, window?: number): number {
  return Math.max(docStartOf(starts, p), p - span(window) + 1);
}

/** Whether the query at position p sees the key at position s. */
export function sees(starts: DocStarts, p: number, s: number, window?: number): boolean {
  return s <= p && s >= firstKeyOf(starts, p, window);
}

/**
 * The keys of [k0, k1) that at least one query of [q0, q1) sees, as a range [start, end) of global
 * positions, or null when none does. The union of [firstKey(p), p] over consecutive p is one range
 * (firstKey(p + 1) <= p + 1: each range begins at most right after the previous one ends), so the
 * answer is [max(firstKey(q0), k0), min(q1, k1)), window or not.
 */
export function visibleKeyRange(
  starts: DocStarts,
  q0: number,
  q1: number,
  k0: number,
  k1: number,
  window?: number,
): { start: number; end: number } | null {
  if (q1 <= q0 || k1 <= k0) return null;
  const start = Math.max(firstKeyOf(starts, q0, window), k0), end = Math.min(q1, k1);
  return start < end ? { start, end } : null;
}

/** Whether a query block [q0, q1) sees any key of the key block [k0, k1): else skip the pair. */
export function blockPairVisible(
  starts: DocStarts,
  q0: number,
  q1: number,
  k0: number,
  k1: number,
  window?: number,
): boolean {
  return visibleKeyRange(starts, q0, q1, k0, k1, window) !== null;
}

/** sum of max(0, c + m p) for integers p in [a, b), m in {-1, 0, 1}: an arithmetic series. */
function positiveSum(a: number, b: number, c: number, m: number): number {
  // The terms are positive on p >= 1 - c (m = 1), p <= c - 1 (m = -1), everywhere or nowhere (0).
  if (m > 0) a = Math.max(a, 1 - c);
  else if (m < 0) b = Math.min(b, c);
  else if (c <= 0) return 0;
  if (b <= a) return 0;
  return ((b - a) * ((c + m * a) + (c + m * (b - 1)))) / 2;
}

/**
 * Number of visible (query, key) pairs of the block pair: the attention work it holds (in units of
 * one score, the same for forward and backward). Per document with queries p in [lo, hi), p sees
 * the keys [max(first, p - W + 1), min(p + 1, k1)) with first = max(docStart, k0): both bounds are
 * piecewise linear in p (breaking at p = first + W - 1 and p = k1 - 1), so the count is a sum of
 * at most three arithmetic series.
 */
export function visiblePairCount(
  starts: DocStarts,
  q0: number,
  q1: number,
  k0: number,
  k1: number,
  window?: number,
): number {
  if (q1 <= q0 || k1 <= k0) return 0;
  const all = starts.length > 0 ? starts : [0], W = span(window);
  let total = 0;
  for (let c = Math.max(startsUpTo(all, q0) - 1, 0); c < all.length; c++) {
    const docStart = all[c];
    if (docStart >= q1) break;
    const docEnd = c + 1 < all.length ? all[c + 1] : Infinity;
    const lo = Math.max(docStart, q0), hi = Math.min(docEnd, q1); // queries of this document
    const first = Math.max(docStart, k0); // the first key any of them sees
    if (hi <= lo || first >= k1) continue;
    const slide = first + W - 1, full = k1 - 1; // from here on: left bound p - W + 1; right k1
    const cuts = [lo, ...[slide, full].filter((x) => x > lo && x < hi).sort((x, y) => x - y), hi];
    for (let i = 0; i + 1 < cuts.length; i++) {
      const a = cuts[i], b = cuts[i + 1];
      // On [a, b): count(p) = right(p) - left(p) = c + m p.
      const [lc, lm] = a >= slide ? [1 - W, 1] : [first, 0];
      const [rc, rm] = a >= full ? [k1, 0] : [1, 1];
      total += positiveSum(a, b, rc - lc, rm - lm);
    }
  }
  return total;
}

/**
 * Document starts of a token window: one at position 0 (a document cut by the window edge continues
 * as a new one) and one at every BOS token.
 */
export function docStartsFromTokens(tokens: ArrayLike<number>, bos: number): number[] {
  const starts = [0];
  for (let i = 1; i < tokens.length; i++) if (tokens[i] === bos) starts.push(i);
  return starts;
}

/** RoPE positions of global positions [p0, p0 + count): restarting at 0 at every document start. */
export function positionsWithinDocuments(
  starts: DocStarts,
  p0: number,
  count: number,
): Int32Array {
  const out = new Int32Array(count);
  let c = startsUpTo(starts, p0); // starts <= the current position
  let docStart = c > 0 ? starts[c - 1] : 0;
  for (let t = 0; t < count; t++) {
    const p = p0 + t;
    while (c < starts.length && starts[c] <= p) docStart = starts[c++];
    out[t] = p - docStart;
  }
  return out;
}

/** The starts as the kernels read them (int64, for Device.upload). */
export function docStartsInt64(starts: DocStarts): BigInt64Array {
  return BigInt64Array.from(Array.from(starts, (s) => BigInt(s)));
}
