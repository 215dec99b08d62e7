// Properties of the TensorBoard event encoding (src/train/tensorboard.ts) over generated inputs,
// checked by a reader written here from the formats' definitions (TFRecord framing, protocol
// buffers' wire format, CRC-32C bit by bit), sharing no code with the writer: every record's
// length and masked CRCs, every step across the varint boundaries (127/128, 2^14, ..., 2^53 - 1),
// every tag and float value, and every step of a real file past 127 and 16383.

import { assert, assertEquals } from "./assert.ts";
import { fc, natAcrossBoundaries, runs, unicodeText, VARINT_BOUNDARIES } from "./_properties.ts";
import {
  crc32c,
  fileVersionEvent,
  maskedCrc32c,
  scalarEvent,
  TensorBoardWriter,
  tfRecord,
} from "../src/train/tensorboard.ts";

// ---------------------------------------------------------------------------------------------
// The independent reader

/** CRC-32C bit by bit (reflected Castagnoli polynomial 0x1EDC6F41 -> 0x82F63B78), no table. */
function crc32cBitwise(data: Uint8Array): number {
  let c = 0xffffffff;
  for (const byte of data) {
    c ^= byte;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0x82f63b78 & -(c & 1));
  }
  return (~c) >>> 0;
}

/** TFRecord's mask: ((crc >> 15) | (crc << 17)) + 0xa282ead8, in 32 bits (BigInt arithmetic). */
function mask(crc: number): number {
  const c = BigInt(crc);
  const rot = ((c >> 15n) | (c << 17n)) & 0xffffffffn;
  return Number((rot + 0xa282ead8n) & 0xffffffffn);
}

/** Little-endian unsigned integer of `n` bytes at `at`, byte by byte. */
function le(bytes: Uint8Array, at: number, n: number): bigint {
  let v = 0n;
  for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(bytes[at + i]);
  return v;
}

/** Splits a TFRecord stream into its records' data, checking both masked CRCs of each. */
function readRecords(bytes: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = [];
  let at = 0;
  while (at < bytes.length) {
    if (at + 12 > bytes.length) throw new Error(`record header cut short at ${at}`);
    const length = le(bytes, at, 8);
    if (Number(le(bytes, at + 8, 4)) !== mask(crc32cBitwise(bytes.subarray(at, at + 8)))) {
      throw new Error(`bad length CRC at ${at}`);
    }
    const n = Number(length);
    if (at + 12 + n + 4 > bytes.length) throw new Error(`record data cut short at ${at}`);
    const data = bytes.subarray(at + 12, at + 12 + n);
    if (Number(le(bytes, at + 12 + n, 4)) !== mask(crc32cBitwise(data))) {
      throw new Error(`bad data CRC at ${at}`);
    }
    out.push(data);
    at += 16 + n;
  }
  return out;
}

/** Base-128 varint: 7 bits a byte, least significant group first, high bit = more follows. */
function varint(bytes: Uint8Array, at: number): { value: bigint; next: number } {
  let value = 0n;
  for (let i = 0; i < 10; i++) {
    if (at + i >= bytes.length) throw new Error(`varint cut short at ${at}`);
    const b = bytes[at + i];
    value += BigInt(b & 0x7f) * 128n ** BigInt(i);
    if (b < 0x80) {
      if (i > 0 && b === 0) throw new Error(`varint at ${at} is not minimal`);
      return { value, next: at + i + 1 };
    }
  }
  throw new Error(`varint at ${at} longer than 10 bytes`);
}

type Field =
  | { field: number; wire: 0; value: bigint }
  | { field: number; wire: 1 | 5 | 2; bytes: Uint8Array };

/** The fields of one protocol-buffer message, in order. */
function fields(bytes: Uint8Array): Field[] {
  const out: Field[] = [];
  let at = 0;
  while (at < bytes.length) {
    const key = varint(bytes, at);
    at = key.next;
    const field = Number(key.value / 8n);
    const wire = Number(key.value % 8n);
    if (wire === 0) {
      const v = varint(bytes, at);
      out.push({ field, wire, value: v.value });
      at = v.next;
    } else if (wire === 1 || wire === 5 || wire === 2) {
      let n = wire === 1 ? 8 : 4;
      if (wire === 2) {
        const len = varint(bytes, at);
        n = Number(len.value);
        at = len.next;
      }
      if (at + n > bytes.length) throw new Error(`field ${field} cut short`);
      out.push({ field, wire, bytes: bytes.subarray(at, at + n) });
      at += n;
    } else {
      throw new Error(`wire type ${wire} of field ${field}`);
    }
  }
  return out;
}

/** An Event as TensorBoard reads it (the fields this writer uses). */
interface Event {
  wallTime?: number;
  step?: bigint;
  fileVersion?: string;
  values: [string, number][];
}

const utf8 = new TextDecoder("utf-8", { fatal: true });
const float64 = (b: Uint8Array) => new DataView(b.slice().buffer).getFloat64(0, true);
const float32 = (b: Uint8Array) => new DataView(b.slice().buffer).getFloat32(0, true);

function decodeEvent(bytes: Uint8Array): Event {
  const event: Event = { values: [] };
  for (const f of fields(bytes)) {
    if (f.field === 1 && f.wire === 1) event.wallTime = float64(f.bytes);
    else if (f.field === 2 && f.wire === 0) event.step = BigInt.asIntN(64, f.value);
    else if (f.field === 3 && f.wire === 2) event.fileVersion = utf8.decode(f.bytes);
    else if (f.field === 5 && f.wire === 2) {
      for (const v of fields(f.bytes)) {
        if (v.field !== 1 || v.wire !== 2) throw new Error(`Summary field ${v.field}`);
        let tag: string | undefined;
        let value: number | undefined;
        for (const x of fields(v.bytes)) {
          if (x.field === 1 && x.wire === 2) tag = utf8.decode(x.bytes);
          else if (x.field === 2 && x.wire === 5) value = float32(x.bytes);
          else throw new Error(`Value field ${x.field} (wire ${x.wire})`);
        }
        if (tag === undefined || value === undefined) throw new Error("Value without tag/value");
        event.values.push([tag, value]);
      }
    } else throw new Error(`Event field ${f.field} (wire ${f.wire})`);
  }
  return event;
}

/** Number of bytes of the minimal varint of v >= 0. */
function varintLength(v: bigint): number {
  let n = 1;
  while (v >= 128n) {
    v /= 128n;
    n++;
  }
  return n;
}

// ---------------------------------------------------------------------------------------------
// Generators

/** A step: across every varint boundary, and negative ones (int64 is two's complement). */
const step = fc.oneof(
  { weight: 4, arbitrary: natAcrossBoundaries },
  { weight: 1, arbitrary: natAcrossBoundaries.map((n) => -n) },
);

/** Any double, and often the special ones: NaN, -0, infinities, float32's edges and beyond. */
const value = fc.oneof(
  fc.double(),
  fc.constantFrom(NaN, Infinity, -Infinity, -0, 3.4028234663852886e38, 3.5e38, 1e-46, -1e-45),
);

/** Scalars by tag: Unicode tags (including "__proto__" and integer-like ones), any values. */
const scalars = fc.dictionary(
  fc.oneof(unicodeText(20), fc.constantFrom("train/loss", "__proto__", "0", "17", "eval/loss")),
  value,
  { maxKeys: 6 },
);

/** What a float32 field must hold for a double: the nearest float32 (NaN stays NaN, -0 stays). */
const same = (a: number, b: number) => Object.is(a, b);

function assertScalars(got: [string, number][], want: Record<string, number>, finiteOnly = false) {
  const entries = Object.entries(want).filter(([, v]) => !finiteOnly || Number.isFinite(v));
  assertEquals(got.map(([t]) => t).sort(), entries.map(([t]) => t).sort());
  const byTag = new Map(got);
  for (const [tag, v] of entries) {
    const g = byTag.get(tag)!;
    assert(same(g, Math.fround(v)), `${JSON.stringify(tag)}: wrote ${v}, read ${g}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Properties

Deno.test("tensorboard properties: crc32c equals a bitwise CRC-32C of any bytes", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 600 }), (data) => {
      assertEquals(crc32c(data), crc32cBitwise(data));
      assertEquals(maskedCrc32c(data), mask(crc32cBitwise(data)));
    }),
    runs(300),
  );
});

Deno.test("tensorboard properties: any bytes survive a TFRecord, framing and CRCs verified", () => {
  // Lengths across the one-byte and two-byte varint boundaries of the payload, and empty.
  const length = fc.oneof(fc.integer({ min: 0, max: 300 }), fc.constantFrom(0, 127, 128, 16384));
  fc.assert(
    fc.property(length.chain((n) => fc.uint8Array({ minLength: n, maxLength: n })), (data) => {
      const record = tfRecord(data);
      assertEquals(record.length, 16 + data.length);
      assertEquals(le(record, 0, 8), BigInt(data.length));
      const [read, ...rest] = readRecords(record);
      assertEquals(rest.length, 0);
      assertEquals(read, data);
    }),
    runs(200),
  );
});

Deno.test("tensorboard properties: every byte flipped in a record is caught by a CRC", () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ minLength: 1, maxLength: 64 }),
      fc.nat(),
      fc.integer({ min: 1, max: 255 }),
      (data, where, xor) => {
        const record = tfRecord(data);
        const at = where % record.length;
        record[at] ^= xor;
        let threw = false;
        try {
          const read = readRecords(record);
          // A flipped length may still frame a stream that parses: never to the same data.
          threw = read.length !== 1 || read[0].length !== data.length;
        } catch {
          threw = true;
        }
        assert(threw, `byte ${at} ^ ${xor} not detected`);
      },
    ),
    runs(300),
  );
});

Deno.test("tensorboard properties: scalar events decode to their step, wall time, tags and values", () => {
  fc.assert(
    fc.property(step, fc.double({ noNaN: true }), scalars, (s, wallTime, values) => {
      const event = decodeEvent(scalarEvent(wallTime, s, values));
      assertEquals(event.step, BigInt(s));
      assert(same(event.wallTime!, wallTime), `wall time ${wallTime} read ${event.wallTime}`);
      assertEquals(event.fileVersion, undefined);
      assertScalars(event.values, values);
    }),
    runs(400),
  );
});

Deno.test("tensorboard properties: a step's varint is minimal and decodes across every boundary", () => {
  for (const b of VARINT_BOUNDARIES) {
    for (const s of [b - 1, b, b + 1].filter((x) => x >= 0 && x <= Number.MAX_SAFE_INTEGER)) {
      const bytes = scalarEvent(0, s, {});
      // double wall_time (1 key + 8), then key 0x10 and the step's varint, then Summary (2 bytes).
      assertEquals(bytes[9], 0x10);
      assertEquals(bytes.length, 9 + 1 + varintLength(BigInt(s)) + 2, `step ${s}`);
      assertEquals(decodeEvent(bytes).step, BigInt(s), `step ${s}`);
    }
  }
});

Deno.test("tensorboard properties: the version event decodes", () => {
  fc.assert(
    fc.property(fc.double({ noNaN: true }), (t) => {
      const event = decodeEvent(readRecords(tfRecord(fileVersionEvent(t)))[0]);
      assertEquals(event, { wallTime: t, fileVersion: "brain.Event:2", values: [] });
    }),
    runs(100),
  );
});

Deno.test("tensorboard properties: a written file decodes to the finite scalars of each call", async () => {
  await fc.assert(
    fc.asyncProperty(fc.array(fc.tuple(step, scalars), { maxLength: 8 }), async (calls) => {
      const dir = await Deno.makeTempDir();
      try {
        const before = Date.now() / 1000;
        const w = await TensorBoardWriter.open(dir);
        for (const [s, values] of calls) await w.scalars(s, values);
        w.close();
        const after = Date.now() / 1000;
        const events = readRecords(await Deno.readFile(w.path)).map(decodeEvent);
        assertEquals(events.length, 1 + calls.length);
        assertEquals(events[0].fileVersion, "brain.Event:2");
        events.forEach((e, i) => {
          assert(e.wallTime! >= before - 1 && e.wallTime! <= after + 1, `wall time ${e.wallTime}`);
          if (i === 0) return;
          const [s, values] = calls[i - 1];
          assertEquals(e.step, BigInt(s));
          // The writer skips NaN and infinities (TensorBoard would plot them as gaps or spikes).
          assertScalars(e.values, values, true);
        });
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    }),
    runs(25),
  );
});

Deno.test("tensorboard properties: a file decodes at every step from 0 to 16500 and at the boundaries", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const w = await TensorBoardWriter.open(dir);
    const steps = [...Array.from({ length: 16501 }, (_, i) => i), ...VARINT_BOUNDARIES.slice(5)];
    for (const s of steps) await w.scalars(s, { "train/loss": -s / 7, "train/step": s });
    w.close();
    const events = readRecords(await Deno.readFile(w.path)).map(decodeEvent);
    assertEquals(events.length, 1 + steps.length);
    steps.forEach((s, i) => {
      const e = events[i + 1];
      assertEquals(e.step, BigInt(s));
      assertEquals(e.values, [["train/loss", Math.fround(-s / 7)], ["train/step", Math.fround(s)]]);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
