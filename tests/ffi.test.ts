/** FFI round trips and error paths of the first ops, on the backend under test. */
import { assert, assertEquals, assertThrows } from "./assert.ts";
import { TEST_BACKEND, testDevice } from "./_util.ts";
import { axpyF32, castBf16ToF32, castF32ToBf16 } from "../src/runtime/ops_basic.ts";
import { DistflashError } from "../ffi/unwrap.ts";
import { f32ToBf16Bits } from "../src/io/dtype.ts";

Deno.test(`${TEST_BACKEND}: library identifies itself`, () => {
  const d = testDevice();
  assertEquals(d.backend, TEST_BACKEND);
  assertEquals(d.abiVersion, 1);
  assert(d.buildInfo.includes(`${TEST_BACKEND} backend`), d.buildInfo);
  assert(d.deviceCount() >= 1);
  assert(d.props(0).totalBytes > 0);
});

Deno.test(`${TEST_BACKEND}: copy round trip, memset, device-to-device`, () => {
  const d = testDevice();
  const n = 1000;
  const src = new Float32Array(n).map((_, i) => i * 0.5 - 3);
  const a = d.alloc(4 * n), b = d.alloc(4 * n);
  d.upload(a.ptr, src);
  d.copy(b.ptr, a.ptr, 4 * n);
  assertEquals(Array.from(d.download(new Float32Array(n), b.ptr)), Array.from(src));
  d.memset(b.at(40), 0, 40);
  const got = d.download(new Float32Array(n), b.ptr);
  assertEquals(Array.from(got.subarray(10, 20)), new Array(10).fill(0));
  assertEquals(got[20], src[20]);
  a.free();
  b.free();
});

Deno.test(`${TEST_BACKEND}: axpy equals y + a*x computed in TypeScript`, () => {
  const d = testDevice();
  const n = 4097; // not a multiple of any block size
  const x = new Float32Array(n).map((_, i) => Math.sin(i));
  const y = new Float32Array(n).map((_, i) => Math.cos(i * 0.3));
  const dx = d.alloc(4 * n), dy = d.alloc(4 * n);
  d.upload(dx.ptr, x);
  d.upload(dy.ptr, y);
  axpyF32(d, dy.ptr, dx.ptr, -1.5, n);
  const got = d.download(new Float32Array(n), dy.ptr);
  for (let i = 0; i < n; i++) {
    // One fp32 multiply-add; the GPU may fuse it (one rounding), so allow one ulp-ish slack.
    const want = y[i] + -1.5 * x[i];
    assert(Math.abs(got[i] - want) <= 2e-7 * Math.max(1, Math.abs(want)), `i=${i}`);
  }
  dx.free();
  dy.free();
});

Deno.test(`${TEST_BACKEND}: bf16 casts round to nearest even, keep NaN and Inf`, () => {
  const d = testDevice();
  // Hand-checked patterns: 1.0 = 0x3F80; 1 + 2^-8 is a tie between 0x3F80 and 0x3F81 -> even 0x3F80;
  // 1 + 3*2^-8 is a tie between 0x3F81 and 0x3F82 -> even 0x3F82; -2.5 = 0xC020.
  const values = new Float32Array([
    1,
    1 + 2 ** -8,
    1 + 3 * 2 ** -8,
    -2.5,
    Infinity,
    -Infinity,
    NaN,
  ]);
  const expected = [0x3f80, 0x3f80, 0x3f82, 0xc020, 0x7f80, 0xff80];
  const n = values.length;
  const df = d.alloc(4 * n), dh = d.alloc(2 * n);
  d.upload(df.ptr, values);
  castF32ToBf16(d, dh.ptr, df.ptr, n);
  const bits = d.download(new Uint16Array(n), dh.ptr);
  assertEquals(Array.from(bits.subarray(0, 6)), expected);
  assert((bits[6] & 0x7f80) === 0x7f80 && (bits[6] & 0x7f) !== 0, "NaN stays NaN");
  for (let i = 0; i < 6; i++) assertEquals(bits[i], f32ToBf16Bits(values[i]));
  castBf16ToF32(d, df.ptr, dh.ptr, n);
  const back = d.download(new Float32Array(n), df.ptr);
  assertEquals(Array.from(back.subarray(0, 6)), [1, 1, 1 + 2 ** -6, -2.5, Infinity, -Infinity]);
  assert(Number.isNaN(back[6]));
  df.free();
  dh.free();
});

Deno.test(`${TEST_BACKEND}: freed pointer and bad sizes are thrown errors with the C message`, () => {
  const d = testDevice();
  const x = d.alloc(64), y = d.alloc(64);
  x.free();
  const freed = assertThrows(() => axpyF32(d, y.ptr, x.ptr, 1, 16), DistflashError);
  assert(freed.message.includes("argument 'x'") && freed.message.includes("not inside a live"));
  const tooLong = assertThrows(() => axpyF32(d, y.ptr, y.ptr, 1, 17), DistflashError);
  assert(tooLong.message.includes("df_axpy_f32"), tooLong.message);
  const zero = assertThrows(() => d.alloc(0), DistflashError);
  assert(zero.message.includes("size must be positive"), zero.message);
  const huge = assertThrows(() => d.alloc(2 ** 52), DistflashError);
  assert(huge.status === 1 || huge.status === 2, huge.message);
  const doubleFree = assertThrows(() => d.freeRaw(x.ptr), DistflashError);
  assert(doubleFree.message.includes("double free"), doubleFree.message);
  assertThrows(() => d.upload(x.ptr, new Float32Array(4)), DistflashError);
  y.free();
});

Deno.test(`${TEST_BACKEND}: streams and events order work`, () => {
  const d = testDevice();
  const s = d.createStream();
  const e0 = d.createEvent(), e1 = d.createEvent();
  const buf = d.alloc(4 * 1024);
  d.recordEvent(e0, s);
  d.memset(buf.ptr, 0, 4096, s);
  d.recordEvent(e1, s);
  d.waitEvent(0n, e1);
  d.syncEvent(e1);
  assert(d.elapsedMs(e0, e1) >= 0);
  assertEquals(d.download(new Float32Array(1024), buf.ptr, s)[5], 0);
  d.syncStream(s);
  buf.free();
  d.destroyEvent(e0);
  d.destroyEvent(e1);
  d.destroyStream(s);
});

Deno.test(`${TEST_BACKEND}: no allocation leaks from these tests`, () => {
  const d = testDevice();
  const before = d.liveAllocations();
  const b = d.alloc(100);
  assertEquals(d.liveAllocations().count, before.count + 1);
  b.free();
  assertEquals(d.liveAllocations().count, before.count);
});
