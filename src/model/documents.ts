/**
 * Packed documents that do not see each other: the one owner of the visibility rule on the host.
 *
 * A sequence (a training window) packs documents back to back. They are described by `starts`, the
 * global positions where documents begin: ascending, the first one 0 (the whole sequence's
 * boundaries, the same array for every rank and block pair). A query at position p sees a key at
 * position s iff docStart(p) <= s <= p, where docStart(p) is the largest start <= p. The kernels
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

/** Whether the query at position p sees the key at position s. */
export function sees(starts: DocStarts, p: number, s: number): boolean {
  return s <= p && s >= docStartOf(starts, p);
}

/**
 * The keys of [k0, k1) that at least one query of [q0, q1) sees, as a range [start, end) of global
 * positions, or null when none does. The union of [docStart(p), p] over consecutive p is one range
 * (a document start p + 1 begins right after p), so the answer is
 * [max(docStart(q0), k0), min(q1, k1)).
 */
export function visibleKeyRange(
  starts: DocStarts,
  q0: number,
  q1: number,
  k0: number,
  k1: number,
): { start: number; end: number } | null {
  if (q1 <= q0 || k1 <= k0) return null;
  const start = Math.max(docStartOf(starts, q0), k0), end = Math.min(q1, k1);
  return start < end ? { start, end } : null;
}

/** Whether a query block [q0, q1) sees any key of the key block [k0, k1): else skip the pair. */
export function blockPairVisible(
  starts: DocStarts,
  q0: number,
  q1: number,
  k0: number,
  k1: number,
): boolean {
  return visibleKeyRange(starts, q0, q1, k0, k1) !== null;
}

/** sum of (x - base + 1) for x in [a, b): the keys [base, x] of queries a .. b-1. */
function triangle(a: number, b: number, base: number): number {
  if (b <= a) return 0;
  return ((b - a) * ((a - base + 1) + (b - base))) / 2;
}

/**
 * Number of visible (query, key) pairs of the block pair: the attention work it holds (in units of
 * one score, the same for forward and backward). Per document, queries before the first key see
 * nothing, the next ones a growing prefix of the key block, the rest all of it.
 */
export function visiblePairCount(
  starts: DocStarts,
  q0: number,
  q1: number,
  k0: number,
  k1: number,
): number {
  if (q1 <= q0 || k1 <= k0) return 0;
  const all = starts.length > 0 ? starts : [0];
  let total = 0;
  for (let c = Math.max(startsUpTo(all, q0) - 1, 0); c < all.length; c++) {
    const docStart = all[c];
    if (docStart >= q1) break;
    const docEnd = c + 1 < all.length ? all[c + 1] : Infinity;
    const lo = Math.max(docStart, q0), hi = Math.min(docEnd, q1); // queries of this document
    const first = Math.max(docStart, k0); // the first key any of them sees
    if (hi <= lo || first >= k1) continue;
    // Queries p < first see nothing, first <= p < k1 see [first, p], p >= k1 see [first, k1).
    const growEnd = Math.min(hi, k1);
    total += triangle(Math.max(lo, first), growEnd, first);
    total += Math.max(hi - Math.max(lo, k1), 0) * (k1 - first);
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
