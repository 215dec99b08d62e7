/**
 * The parallel layout (src/parallel/layout.ts) against rules written out here: rank placement in
 * dp x sp, the flags named by validation, and each rank's tokens and global positions of a batch
 * checked against a direct enumeration of the chunks (independent of the code's piece lists).
 */
import { assert, assertEquals, assertThrows } from "./assert.ts";
import { ParallelLayout, type ParallelOptions } from "../src/parallel/layout.ts";

const opts = (o: Partial<ParallelOptions> = {}): ParallelOptions => ({
  spSize: 0,
  distattnLayout: "zigzag",
  fsdp: "",
  offloadOptimizer: false,
  ...o,
});

Deno.test("layout: ranks are placed sp-major inside dp groups, and the degrees are validated", () => {
  const l = new ParallelLayout(8, 5, opts({ spSize: 4 }));
  assertEquals([l.dp, l.sp, l.dpRank, l.spRank], [2, 4, 1, 1]);
  assertEquals(l.spGroup(), [4, 5, 6, 7]);
  assert(
    assertThrows(() => new ParallelLayout(6, 0, opts({ spSize: 4 }))).message.includes(
      "--sp-size 4",
    ),
  );
  assert(assertThrows(() => new ParallelLayout(2, 2, opts())).message.includes("rank 2"));
  assertEquals(new ParallelLayout(2, 0, opts({ fsdp: "full_shard auto_wrap" })).fullShard, true);
  assertEquals(new ParallelLayout(2, 0, opts({ offloadOptimizer: true })).fullShard, true);
  assertEquals(new ParallelLayout(1, 0, opts({ fsdp: "full_shard" })).fullShard, false);
  assertEquals(new ParallelLayout(2, 0, opts({ fsdp: "no_shard" })).fullShard, false);
});

Deno.test("layout: the length rule names --model-max-length and the unit of each layout", () => {
  const z = new ParallelLayout(4, 0, opts()),
    c = new ParallelLayout(4, 0, opts({ distattnLayout: "contiguous" }));
  z.checkLength(64);
  c.checkLength(36);
  assert(
    assertThrows(() => z.checkLength(36)).message.includes(
      "--model-max-length 36 must be a multiple of 8",
    ),
  );
  assert(assertThrows(() => c.checkLength(30)).message.includes("multiple of 4 (--sp-size 4)"));
  assertEquals(z.plannedSlice(36), 10); // 9 tokens a rank, rounded up to two equal chunks
  assertEquals(c.plannedSlice(36), 9);
});

for (const layout of ["zigzag", "contiguous"] as const) {
  Deno.test(`layout: ${layout} slices every window into disjoint pieces at their global positions`, () => {
    const B = 2, L = 48;
    const inputs = Int32Array.from({ length: B * L }, (_, i) => 1000 + i);
    const labels = Int32Array.from({ length: B * L }, (_, i) => -1 - i);
    for (const P of [1, 2, 3, 4]) {
      const seen = new Set<number>();
      for (let r = 0; r < P; r++) {
        const l = new ParallelLayout(P, r, opts({ distattnLayout: layout }));
        const s = l.sliceBatch({ inputs, labels }, B, L);
        const S = L / P;
        // The rule written out: zigzag holds chunks r and 2P-1-r of 2P, contiguous slice r.
        const expected: number[] = [];
        if (layout === "zigzag") {
          for (const c of [r, 2 * P - 1 - r]) {
            for (let t = 0; t < S / 2; t++) expected.push(c * (S / 2) + t);
          }
        } else {
          for (let t = 0; t < S; t++) expected.push(r * S + t);
        }
        for (let b = 0; b < B; b++) {
          for (let t = 0; t < S; t++) {
            const pos = expected[t];
            assertEquals(s.positions[b * S + t], pos);
            assertEquals(s.inputs[b * S + t], 1000 + b * L + pos);
            assertEquals(s.labels[b * S + t], -1 - (b * L + pos));
            seen.add(b * L + pos);
          }
        }
      }
      assert(seen.size === B * L, `P=${P}: every token on exactly one rank`);
    }
  });
}
