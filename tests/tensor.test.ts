/** The device tensor view: byte offsets of sub-views against hand computation and real data. */
import { assertEquals, assertThrows } from "./assert.ts";
import { testDevice } from "./_util.ts";
import { Tensor } from "../src/runtime/tensor.ts";
import { DType } from "../src/runtime/ops.ts";
import { MemoryPlan } from "../src/runtime/memory.ts";

Deno.test("tensor view: rows and index offsets, by hand", () => {
  const base = 4096n;
  // bf16 [3, 5, 4]: a row of the first axis is 5 * 4 elements * 2 bytes = 40 bytes.
  const t = Tensor.at(base, DType.bf16, [3, 5, 4]);
  assertEquals(t.numel, 60);
  assertEquals(t.bytes, 120);
  const r = t.rows(1, 2);
  assertEquals(r.shape, [2, 5, 4]);
  assertEquals(r.ptr, base + 40n);
  // Index 2 of the first axis, then rows 3.. of the [5, 4] result: 2*40 + 3*(4*2) = 104 bytes.
  const i = t.index(2);
  assertEquals(i.shape, [5, 4]);
  assertEquals(i.ptr, base + 80n);
  assertEquals(i.rows(3, 2).ptr, base + 104n);
  // fp32 [7, 3]: 12 bytes a row.
  assertEquals(Tensor.at(base, DType.f32, [7, 3]).rows(5, 1).ptr, base + 60n);
  assertEquals(assertThrows(() => t.rows(2, 2), RangeError).message.includes("3 rows"), true);
  assertThrows(() => t.rows(-1, 1), RangeError);
  assertThrows(() => Tensor.at(base, DType.f32, [4]).index(0), RangeError);
  assertThrows(() => Tensor.at(base, DType.f32, [2, 0]), RangeError);
});

Deno.test("tensor view: a view of a plan slot addresses the right elements once allocated", () => {
  const d = testDevice();
  const plan = new MemoryPlan();
  const slot = plan.reserve("test", "x", 24, DType.f32);
  const view = new Tensor(slot, DType.f32, [2, 3, 4]); // made before the allocation
  plan.allocate(d);
  try {
    d.upload(slot.ptr, Float32Array.from({ length: 24 }, (_, i) => i));
    const got = d.download(new Float32Array(8), view.index(1).rows(1, 2).ptr);
    assertEquals([...got], [16, 17, 18, 19, 20, 21, 22, 23]);
  } finally {
    plan.free();
  }
});
