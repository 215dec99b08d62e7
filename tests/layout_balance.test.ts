/**
 * The sequence layouts asserted independently of their implementation: the zigzag chunk indices
 * against the formula written here, and every layout's per-rank causal work, counted here in
 * (query, key) token pairs from the assignment the code uses, equal across ranks within one block
 * for P = 2..8.
 */
import { assert, assertEquals, assertLess } from "./assert.ts";
import { taskPlan } from "../src/parallel/schedule.ts";
import { zigzagChunks } from "../src/parallel/zigzag.ts";

const S = 16; // tokens a rank holds (any even number gives the same conclusions)

/** Causal token pairs of a set of query positions: position t attends to t + 1 keys. */
function causalPairs(positions: Iterable<number>): number {
  let n = 0;
  for (const t of positions) n += t + 1;
  return n;
}

/** Causal (query, key) pairs between query block q and key block kv of `size` tokens each. */
function blockPairs(q: number, kv: number, size: number): number {
  let n = 0;
  for (let i = 0; i < size; i++) {
    for (let j = 0; j < size; j++) if (kv * size + j <= q * size + i) n++;
  }
  return n;
}

function spread(xs: number[]): number {
  return Math.max(...xs) - Math.min(...xs);
}

Deno.test("layout: zigzag chunks are [r, 2P-1-r] and cover the sequence once", () => {
  for (let P = 1; P <= 8; P++) {
    const seen: number[] = [];
    for (let r = 0; r < P; r++) {
      assertEquals(zigzagChunks(r, P), [r, 2 * P - 1 - r], `P=${P} rank ${r}`);
      seen.push(...zigzagChunks(r, P));
    }
    assertEquals(seen.sort((a, b) => a - b), Array.from({ length: 2 * P }, (_, i) => i));
  }
});

Deno.test("layout: zigzag gives every rank the same causal work, P = 2..8", () => {
  for (let P = 2; P <= 8; P++) {
    const half = S / 2;
    const work = Array.from({ length: P }, (_, r) => {
      const positions: number[] = [];
      for (const c of zigzagChunks(r, P)) {
        for (let t = 0; t < half; t++) positions.push(c * half + t);
      }
      return causalPairs(positions);
    });
    // Within one diagonal block of a chunk (half*(half+1)/2 pairs); the formula gives exactly equal
    // work ([r, P+r] instead gives rank P-1 (P-1)*S*S/2 more pairs than rank 0).
    assertLess(spread(work), half * (half + 1) / 2 + 1, `P=${P} zigzag work ${work}`);
    assertEquals(
      work.reduce((a, b) => a + b),
      causalPairs(Array.from({ length: P * S }, (_, i) => i)),
    );
  }
});

Deno.test("layout: contiguous with the balanced schedule covers every causal block once, work within one block, P = 2..8", () => {
  for (let P = 2; P <= 8; P++) {
    const work = new Array<number>(P).fill(0);
    const done = new Set<string>();
    for (const step of taskPlan(P, { balanced: true })) {
      const workers = new Set<number>();
      for (const t of step) {
        assert(!workers.has(t.worker), `P=${P}: one task per worker and step`);
        workers.add(t.worker);
        const key = `${t.q},${t.kv}`;
        assert(t.kv <= t.q && !done.has(key), `P=${P}: block pair ${key} once and causal`);
        done.add(key);
        work[t.worker] += blockPairs(t.q, t.kv, S);
      }
    }
    assertEquals(done.size, P * (P + 1) / 2, `P=${P}: every causal block pair`);
    // P(P+1)/2 blocks on P ranks: for even P, P/2 ranks have one off-diagonal block (S*S pairs)
    // less, which no block-granular schedule avoids; for odd P the work is equal.
    assertLess(spread(work), S * S + 1, `P=${P} balanced work ${work}`);
    if (P % 2 === 1) assertEquals(spread(work), 0, `P=${P} odd: equal work`);
  }
  // The unbalanced schedule fails the bound (rank P-1 computes P blocks, rank 0 one): the check
  // above can tell.
  const unbalanced = new Array<number>(4).fill(0);
  for (const step of taskPlan(4, { balanced: false })) {
    for (const t of step) unbalanced[t.worker] += blockPairs(t.q, t.kv, S);
  }
  assert(spread(unbalanced) > S * S, "the unbalanced schedule is unbalanced");
});
