/**
 * TensorBoard event files: scalars written as TensorBoard's `Event` protocol buffers in TFRecord
 * framing, the format its EventFileWriter writes and its EventAccumulator reads. No npm package
 * writes them without TensorFlow, so the two small encodings live here:
 *
 * - TFRecord: each record is uint64 length, uint32 masked CRC-32C of the length bytes, the data,
 *   uint32 masked CRC-32C of the data (all little-endian); mask(c) = rotr(c, 15) + 0xa282ead8.
 * - Event { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
 *   Summary { repeated Value value = 1; } Value { string tag = 1; float simple_value = 2; }
 *
 * @module
 */
import { hostname } from "node:os";
import { join } from "node:path";

const CRC32C_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    // Castagnoli polynomial 0x1EDC6F41, bit-reversed.
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    table[i] = c >>> 0;
  }
  return table;
})();

/** CRC-32C (Castagnoli) of `data`, as iSCSI (RFC 3720) and TFRecord use it. */
export function crc32c(data: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < data.length; i++) c = CRC32C_TABLE[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** TFRecord's masked CRC: rotated right by 15 bits plus a constant, so CRCs of CRCs differ. */
export function maskedCrc32c(data: Uint8Array): number {
  const c = crc32c(data);
  return ((((c >>> 15) | (c << 17)) >>> 0) + 0xa282ead8) >>> 0;
}

/** One TFRecord: length, its masked CRC, the data, the data's masked CRC. */
export function tfRecord(data: Uint8Array): Uint8Array {
  const out = new Uint8Array(16 + data.length);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(data.length), true);
  view.setUint32(8, maskedCrc32c(out.subarray(0, 8)), true);
  out.set(data, 12);
  view.setUint32(12 + data.length, maskedCrc32c(data), true);
  return out;
}

/** A protocol-buffer message under construction (only the wire types used here). */
class Proto {
  readonly #bytes: number[] = [];

  #varint(v: bigint): void {
    let x = BigInt.asUintN(64, v);
    while (x >= 0x80n) {
      this.#bytes.push(Number(x & 0x7fn) | 0x80);
      x >>= 7n;
    }
    this.#bytes.push(Number(x));
  }
  #key(field: number, wire: number): void {
    this.#varint(BigInt((field << 3) | wire));
  }
  double(field: number, v: number): this {
    this.#key(field, 1);
    const b = new Uint8Array(8);
    new DataView(b.buffer).setFloat64(0, v, true);
    this.#bytes.push(...b);
    return this;
  }
  float(field: number, v: number): this {
    this.#key(field, 5);
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, v, true);
    this.#bytes.push(...b);
    return this;
  }
  int64(field: number, v: number): this {
    this.#key(field, 0);
    this.#varint(BigInt(v));
    return this;
  }
  bytes(field: number, b: Uint8Array): this {
    this.#key(field, 2);
    this.#varint(BigInt(b.length));
    this.#bytes.push(...b);
    return this;
  }
  string(field: number, s: string): this {
    return this.bytes(field, new TextEncoder().encode(s));
  }
  finish(): Uint8Array {
    return Uint8Array.from(this.#bytes);
  }
}

/** The first Event of every file: TensorBoard reads a file only after this version record. */
export function fileVersionEvent(wallTime: number): Uint8Array {
  return new Proto().double(1, wallTime).string(3, "brain.Event:2").finish();
}

/** An Event holding scalars at one step. */
export function scalarEvent(
  wallTime: number,
  step: number,
  scalars: Record<string, number>,
): Uint8Array {
  const summary = new Proto();
  for (const [tag, value] of Object.entries(scalars)) {
    summary.bytes(1, new Proto().string(1, tag).float(2, value).finish());
  }
  return new Proto().double(1, wallTime).int64(2, step).bytes(5, summary.finish()).finish();
}

/**
 * Writes one TensorBoard event file in `dir` (created): `events.out.tfevents.<time>.<host>.<pid>`,
 * the name TensorBoard looks for, starting with the file_version event it expects.
 */
export class TensorBoardWriter {
  readonly path: string;
  #file: Deno.FsFile;

  private constructor(path: string, file: Deno.FsFile) {
    this.path = path;
    this.#file = file;
  }

  /** Creates the folder and the event file. */
  static async open(dir: string): Promise<TensorBoardWriter> {
    await Deno.mkdir(dir, { recursive: true });
    const now = Date.now() / 1000;
    const stem = `events.out.tfevents.${Math.floor(now)}.${hostname()}.${Deno.pid}`;
    // A second run in the same process and second (a resume through train() in mod.ts) gets a
    // numbered name instead of failing on the first's file.
    for (let n = 0;; n++) {
      const path = join(dir, n === 0 ? `${stem}.distflash` : `${stem}.${n}.distflash`);
      let file: Deno.FsFile;
      try {
        file = await Deno.open(path, { write: true, createNew: true });
      } catch (error) {
        if (error instanceof Deno.errors.AlreadyExists && n < 1000) continue;
        throw error;
      }
      const writer = new TensorBoardWriter(path, file);
      await writer.#write(fileVersionEvent(now));
      return writer;
    }
  }

  async #write(event: Uint8Array): Promise<void> {
    const record = tfRecord(event);
    for (let done = 0; done < record.length;) done += await this.#file.write(record.subarray(done));
  }

  /** Scalars (finite ones; others are skipped) at `step`, written through at once. */
  async scalars(step: number, values: Record<string, number>): Promise<void> {
    const finite = Object.fromEntries(Object.entries(values).filter(([, v]) => Number.isFinite(v)));
    await this.#write(scalarEvent(Date.now() / 1000, step, finite));
  }

  /** Closes the file. */
  close(): void {
    this.#file.close();
  }
}

/** The step of an encoded Event (field 2), or 0 when it has none (the version event). */
export function eventStep(event: Uint8Array): number {
  let at = 0;
  const varint = (): bigint => {
    let value = 0n, shift = 0n;
    for (;;) {
      if (at >= event.length) throw new Error("truncated varint");
      const b = event[at++];
      value |= BigInt(b & 0x7f) << shift;
      if (!(b & 0x80)) return value;
      shift += 7n;
    }
  };
  while (at < event.length) {
    const key = Number(varint());
    const field = key >>> 3, wire = key & 7;
    if (field === 2 && wire === 0) return Number(BigInt.asIntN(64, varint()));
    if (wire === 0) varint();
    else if (wire === 1) at += 8;
    else if (wire === 2) {
      const length = Number(varint()); // read before `at` is (`at += varint()` adds to the old at)
      at += length;
    } else if (wire === 5) at += 4;
    else throw new Error(`unexpected wire type ${wire}`);
  }
  return 0;
}

/**
 * The events of a TFRecord file, in order, up to the first record that is cut short or fails its
 * CRC (the tail a killed run may leave).
 */
export function readTfRecords(bytes: Uint8Array): Uint8Array[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const records: Uint8Array[] = [];
  for (let at = 0; at + 12 <= bytes.length;) {
    if (view.getUint32(at + 8, true) !== maskedCrc32c(bytes.subarray(at, at + 8))) break;
    const n = Number(view.getBigUint64(at, true));
    if (at + 16 + n > bytes.length) break;
    const data = bytes.subarray(at + 12, at + 12 + n);
    if (view.getUint32(at + 12 + n, true) !== maskedCrc32c(data)) break;
    records.push(data);
    at += 16 + n;
  }
  return records;
}

/**
 * The event files TensorBoardWriter wrote in `dir` (their `.distflash` suffix; a user's own files
 * there, and links, are not among them), sorted; none when `dir` does not exist.
 */
export function distflashEventFiles(dir: string): string[] {
  try {
    return [...Deno.readDirSync(dir)]
      .filter((e) =>
        e.isFile && e.name.startsWith("events.out.tfevents.") && e.name.endsWith(".distflash")
      )
      .map((e) => join(dir, e.name)).sort();
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return [];
    throw error;
  }
}

/**
 * On resume from the checkpoint of step `step`: rewrites every distflash event file in `dir` (the
 * `<output-dir>/runs` folder) without its events after `step`, which belong to the run that went
 * on past the checkpoint and died (a damaged tail goes too), as metrics.jsonl is cut back.
 * TensorBoard then shows each step once, the resumed run's. Each file is replaced whole (written
 * beside it, then renamed over it); files that need no change are left alone. Returns the paths
 * rewritten.
 */
export async function cutBackEventFiles(dir: string, step: number): Promise<string[]> {
  const changed: string[] = [];
  for (const path of distflashEventFiles(dir)) {
    const bytes = await Deno.readFile(path);
    const records = readTfRecords(bytes);
    const kept = records.filter((r) => eventStep(r) <= step);
    const framed = kept.map(tfRecord);
    const size = framed.reduce((a, r) => a + r.length, 0);
    if (size === bytes.length) continue; // nothing after the step, no damaged tail
    const out = new Uint8Array(size);
    let at = 0;
    for (const r of framed) {
      out.set(r, at);
      at += r.length;
    }
    // The temporary name has no "tfevents" in it, so TensorBoard never reads it.
    const tmp = join(dir, `.cut-back.${Deno.pid}.tmp`);
    const file = await Deno.open(tmp, { write: true, create: true, truncate: true });
    try {
      for (let done = 0; done < out.length;) done += await file.write(out.subarray(done));
      await file.sync();
    } finally {
      file.close();
    }
    await Deno.rename(tmp, path);
    changed.push(path);
  }
  return changed;
}
