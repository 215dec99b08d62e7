/**
 * src/model/documents.ts against brute force: every answer is recomputed by looping over positions
 * or (query, key) pairs with the rule written out directly (a key is visible iff no document starts
 * in (key, query] and key <= query), for random document layouts.
 */
import { assert, assertEquals, assertThrows } from "./assert.ts";
import { rng } from "./_util.ts";
import {
  blockPairVisible,
  docEndOf,
  docStartOf,
  docStartsFromTokens,
  positionsWithinDocuments,
  sees,
  validateDocStarts,
  visibleKeyRange,
  visiblePairCount,
} from "../src/model/documents.ts";

/** Random layout of a sequence of `length` tokens: every position after 0 starts one w.p. `rate`. */
function randomStarts(length: number, rate: number, u: () => number): number[] {
  const starts = [0];
  for (let p = 1; p < length; p++) if (u() < rate) starts.push(p);
  return starts;
}

/** The rule, written as "no document starts after the key and at or before the query". */
function bruteSees(starts: number[], p: number, s: number): boolean {
  return s <= p && !starts.some((b) => b > s && b <= p);
}

const LAYOUTS = (() => {
  const u = rng(7);
  const out: number[][] = [[0], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]];
  for (const rate of [0.05, 0.2, 0.5]) {
    for (let n = 0; n < 3; n++) out.push(randomStarts(40, rate, u));
  }
  return out;
})();
const T = 40;

Deno.test("documents: docStartOf, docEndOf, sees and positions equal brute force", () => {
  for (const starts of LAYOUTS) {
    for (let p = 0; p < T; p++) {
      let first = p;
      while (first > 0 && !starts.includes(first)) first--;
      assertEquals(docStartOf(starts, p), first, `docStartOf(${p}) of ${starts}`);
      let next = p + 1;
      while (next < T && !starts.includes(next)) next++;
      assertEquals(docEndOf(starts, p), next < T ? next : Infinity, `docEndOf(${p})`);
      for (let s = 0; s < T; s++) assertEquals(sees(starts, p, s), bruteSees(starts, p, s));
    }
    // Any window of positions, including one that starts inside a document.
    for (const [p0, count] of [[0, T], [7, 20], [33, 7]]) {
      const got = positionsWithinDocuments(starts, p0, count);
      for (let t = 0; t < count; t++) {
        let back = 0; // steps back to the document start
        while (p0 + t - back > 0 && !starts.includes(p0 + t - back)) back++;
        assertEquals(got[t], back, `position of ${p0 + t} in ${starts}`);
      }
    }
  }
});

Deno.test("documents: block pair key range, visibility and pair count equal brute force", () => {
  const cuts = [[0, 5], [5, 13], [13, 14], [14, 29], [29, 40], [0, 40], [8, 24]];
  let skipped = 0, kept = 0;
  for (const starts of LAYOUTS) {
    for (const [q0, q1] of cuts) {
      for (const [k0, k1] of cuts) {
        let lo = Infinity, hi = -Infinity, pairs = 0;
        for (let p = q0; p < q1; p++) {
          for (let s = k0; s < k1; s++) {
            if (!bruteSees(starts, p, s)) continue;
            pairs++;
            lo = Math.min(lo, s);
            hi = Math.max(hi, s);
          }
        }
        const what = `q [${q0}, ${q1}) k [${k0}, ${k1}) docs ${starts}`;
        const range = visibleKeyRange(starts, q0, q1, k0, k1);
        assertEquals(range, pairs ? { start: lo, end: hi + 1 } : null, `key range ${what}`);
        assertEquals(blockPairVisible(starts, q0, q1, k0, k1), pairs > 0, `visible ${what}`);
        assertEquals(visiblePairCount(starts, q0, q1, k0, k1), pairs, `pairs ${what}`);
        if (pairs) kept++;
        else skipped++;
      }
    }
  }
  // The layouts must exercise both answers (causal alone already skips blocks above the diagonal).
  assert(skipped > 50 && kept > 50, `skipped ${skipped}, kept ${kept}`);
});

Deno.test("documents: starts from BOS tokens, and validation", () => {
  const BOS = 1;
  assertEquals(docStartsFromTokens([5, 6, 1, 7, 1, 1, 8], BOS), [0, 2, 4, 5]);
  assertEquals(docStartsFromTokens([1, 6, 7, 1, 9], BOS), [0, 3]); // a BOS at 0 is the window start
  assertEquals(docStartsFromTokens([4, 4], BOS), [0]);
  validateDocStarts([0, 3, 9], 10);
  for (const bad of [[], [1, 4], [0, 4, 4], [0, 5, 3], [0, 10], [0, 2.5]]) {
    const e = assertThrows(() => validateDocStarts(bad, 10), Error);
    assert(e.message.startsWith("document starts"), e.message);
  }
});
