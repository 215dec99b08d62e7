// TensorBoard event files (src/train/tensorboard.ts): CRC-32C against the RFC 3720 test vectors,
// and an event file that TensorBoard's own reader (which checks every record's CRC) decoded to
// exactly the scalars written (tests/reference/read_tensorboard_events.py).

import { assert, assertEquals } from "./assert.ts";
import { join } from "node:path";
import { crc32c, TensorBoardWriter } from "../src/train/tensorboard.ts";
import { fixtureBytes, STEPS, WALL_TIME } from "./reference/tensorboard_events.ts";

const DIR = new URL("./fixtures/tensorboard/", import.meta.url).pathname;

Deno.test("tensorboard: CRC-32C matches RFC 3720's test vectors", () => {
  const bytes = (f: (i: number) => number) => Uint8Array.from({ length: 32 }, (_, i) => f(i));
  assertEquals(crc32c(bytes(() => 0)), 0x8a9136aa);
  assertEquals(crc32c(bytes(() => 0xff)), 0x62a8ab43);
  assertEquals(crc32c(bytes((i) => i)), 0x46dd794e);
  assertEquals(crc32c(bytes((i) => 31 - i)), 0x113fdb5c);
  assertEquals(crc32c(new TextEncoder().encode("123456789")), 0xe3069283); // the check value
});

Deno.test("tensorboard: TensorBoard reads back exactly the scalars written", async () => {
  // The committed file is what the writer produces today, byte for byte...
  const committed = await Deno.readFile(join(DIR, "events.out.tfevents.fixture"));
  assertEquals(fixtureBytes(), committed);
  // ...and TensorBoard decoded that file to the written scalars (as float32), steps and times.
  const decoded = JSON.parse(await Deno.readTextFile(join(DIR, "expected.json"))) as Record<
    string,
    [number, number, number][]
  >;
  const want: Record<string, [number, number, number][]> = {};
  STEPS.forEach((scalars, i) => {
    for (const [tag, v] of Object.entries(scalars)) {
      (want[tag] ??= []).push([WALL_TIME + i + 1, i + 1, Math.fround(v)]);
    }
  });
  assertEquals(decoded, want);
});

Deno.test("tensorboard: the writer's file starts with the version event, one record a call", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const w = await TensorBoardWriter.open(dir);
    await w.scalars(1, { "train/loss": 2, "train/grad_norm": NaN });
    w.close();
    const bytes = await Deno.readFile(w.path);
    assert(w.path.includes("events.out.tfevents."), w.path);
    // Walk the records by their length fields: exactly two, the second holding one value.
    const view = new DataView(bytes.buffer);
    const lengths: number[] = [];
    for (let at = 0; at < bytes.length;) {
      const n = Number(view.getBigUint64(at, true));
      lengths.push(n);
      at += 16 + n;
    }
    assertEquals(lengths.length, 2);
    const text = new TextDecoder("latin1").decode(bytes);
    assert(text.includes("brain.Event:2") && text.includes("train/loss"));
    assert(!text.includes("grad_norm"), "non-finite scalars are skipped");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
