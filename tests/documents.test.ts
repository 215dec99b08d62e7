/**
 * src/model/documents.ts against brute force: every answer is recomputed by looping over positions
 * or (query, key) pairs with the rule written out directly (a key is visible iff no document starts
 * in (key, query] and key <= query), for random document layouts; with Mistral's sliding window
 * (key within `window` of the query: query - key < window), as a fast-check property.
 */
import { assert, assertEquals, assertThrows } from "./assert.ts";
import { rng } from "./_util.ts";
import { fc, runs } from "./_properties.ts";
import {
  blockPairVisible,
  docEndOf,
  docStartOf,
  docStartsFromTokens,
  positionsWithinDocuments,
  sees,
  validateDocStarts,
  validateWindow,
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

/** The windowed rule written out: no document starts in (s, p], s <= p, and p - s < window. */
function bruteSeesWindow(starts: number[], p: number, s: number, window: number): boolean {
  return bruteSees(starts, p, s) && p - s < window;
}

Deno.test("documents: sliding window (alone and with documents), block pairs equal brute force", () => {
  // Random sequences (up to 48 tokens, random document starts or none), windows from 1 to past
  // the sequence, and random query and key blocks: sees, the key range, the skip decision and the
  // pair count must equal the loop over (query, key) pairs.
  const layout = fc.integer({ min: 1, max: 48 }).chain((length) =>
    fc.record({
      length: fc.constant(length),
      starts: fc.oneof(
        fc.constant<number[]>([0]),
        fc.uniqueArray(fc.integer({ min: 1, max: Math.max(1, length - 1) }), { maxLength: 12 })
          .map((xs) => [0, ...xs.filter((x) => x < length).sort((a, b) => a - b)]),
      ),
      window: fc.integer({ min: 1, max: length + 4 }),
      q: fc.tuple(fc.nat(length), fc.nat(length)),
      k: fc.tuple(fc.nat(length), fc.nat(length)),
    })
  );
  fc.assert(
    fc.property(layout, ({ length, starts, window, q, k }) => {
      const [q0, q1] = [Math.min(...q), Math.max(...q)],
        [k0, k1] = [Math.min(...k), Math.max(...k)];
      for (let p = 0; p < length; p++) {
        for (let s = 0; s < length; s++) {
          if (sees(starts, p, s, window) !== bruteSeesWindow(starts, p, s, window)) return false;
        }
      }
      let lo = Infinity, hi = -Infinity, pairs = 0;
      for (let p = q0; p < q1; p++) {
        for (let s = k0; s < k1; s++) {
          if (!bruteSeesWindow(starts, p, s, window)) continue;
          pairs++;
          lo = Math.min(lo, s);
          hi = Math.max(hi, s);
        }
      }
      assertEquals(
        visibleKeyRange(starts, q0, q1, k0, k1, window),
        pairs ? { start: lo, end: hi + 1 } : null,
      );
      assertEquals(blockPairVisible(starts, q0, q1, k0, k1, window), pairs > 0);
      assertEquals(visiblePairCount(starts, q0, q1, k0, k1, window), pairs);
      return true;
    }),
    runs(400),
  );
});

Deno.test("documents: a window skips whole block pairs far below the diagonal, and validation", () => {
  // 64 tokens in blocks of 8, window 10: a query block sees its own block and the one before; two
  // blocks apart, the nearest pair (first query, last key) is 9 apart: also visible; three: 17.
  const B = 8, W = 10;
  for (let qb = 0; qb < 8; qb++) {
    for (let kb = 0; kb < 8; kb++) {
      const visible = blockPairVisible([0], qb * B, qb * B + B, kb * B, kb * B + B, W);
      // Nearest pair of blocks qb > kb: the first query qb*B and the last key kb*B + B - 1.
      const nearest = qb * B - (kb * B + B - 1);
      assertEquals(visible, kb <= qb && nearest < W, `q block ${qb}, k block ${kb}`);
    }
  }
  // Causal over 64 tokens is 64 * 65 / 2 pairs; the window keeps W per query past the first W.
  assertEquals(visiblePairCount([0], 0, 64, 0, 64, W), (W * (W + 1)) / 2 + (64 - W) * W);
  assertEquals(visiblePairCount([0], 0, 64, 0, 64, 0), (64 * 65) / 2); // 0: no window
  validateWindow(0);
  validateWindow(4096);
  for (const bad of [-1, 1.5, NaN]) assertThrows(() => validateWindow(bad));
});
