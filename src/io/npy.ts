/**
 * Token files in NumPy's .npy format (versions 1.0, 2.0 and 3.0): 1-D arrays of uint16, int32,
 * uint32 or int64, little-endian. Token ids come back as `Int32Array`; values that do not fit are
 * an error naming the file and position. Windowed reads touch only the bytes asked for.
 *
 * Format (numpy.lib.format): magic `\x93NUMPY`, major and minor version bytes, header length
 * (uint16 LE in 1.0, uint32 LE in 2.0/3.0), a Python dict literal
 * `{'descr': '<u2', 'fortran_order': False, 'shape': (n,), }` padded with spaces and ending in a
 * newline so the data starts 64-byte aligned, then the raw elements.
 *
 * @module
 */

import { writeFileAtomic } from "./files.ts";
import { readFully } from "./files.ts";

/** Element types accepted in token files. */
export type NpyTokenDType = "uint16" | "int32" | "uint32" | "int64";

const KINDS: Readonly<Record<string, { dtype: NpyTokenDType; size: number }>> = {
  u2: { dtype: "uint16", size: 2 },
  i4: { dtype: "int32", size: 4 },
  u4: { dtype: "uint32", size: 4 },
  i8: { dtype: "int64", size: 8 },
};

const ALLOWED = "<u2 (uint16), <i4 (int32), <u4 (uint32), <i8 (int64); byte order '<' or '|'";

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY

/** What a .npy header says about a token file. */
export interface NpyInfo {
  path: string;
  /** Format version, e.g. [1, 0]. */
  version: [number, number];
  /** The descr string as written, e.g. "<u2". */
  descr: string;
  dtype: NpyTokenDType;
  itemSize: number;
  /** Number of elements. */
  length: number;
  /** Byte offset of the first element. */
  dataOffset: number;
}

// ---------------------------------------------------------------------------------------------
// A small parser for the Python literal in the header (dicts, tuples, lists, strings, ints,
// True/False/None) so that odd but valid spacing or key order is accepted.

type PyValue = string | number | boolean | null | PyValue[] | { [k: string]: PyValue };

function parsePyLiteral(text: string, path: string): PyValue {
  let i = 0;
  const fail = (msg: string): never => {
    throw new Error(`${path}: cannot parse .npy header ${JSON.stringify(text.trim())}: ${msg}`);
  };
  const ws = () => {
    while (i < text.length && /\s/.test(text[i])) i++;
  };
  const value = (): PyValue => {
    ws();
    const c = text[i];
    if (c === "{") {
      i++;
      const obj: { [k: string]: PyValue } = {};
      for (;;) {
        ws();
        if (text[i] === "}") {
          i++;
          return obj;
        }
        const k = value();
        if (typeof k !== "string") fail("dict key is not a string");
        ws();
        if (text[i] !== ":") fail(`expected ':' at ${i}`);
        i++;
        obj[k as string] = value();
        ws();
        if (text[i] === ",") i++;
        else if (text[i] !== "}") fail(`expected ',' or '}' at ${i}`);
      }
    }
    if (c === "(" || c === "[") {
      const close = c === "(" ? ")" : "]";
      i++;
      const arr: PyValue[] = [];
      for (;;) {
        ws();
        if (text[i] === close) {
          i++;
          return arr;
        }
        arr.push(value());
        ws();
        if (text[i] === ",") i++;
        else if (text[i] !== close) fail(`expected ',' or '${close}' at ${i}`);
      }
    }
    if (c === "'" || c === '"') {
      const end = text.indexOf(c, i + 1);
      if (end < 0) fail("unterminated string");
      const s = text.slice(i + 1, end);
      i = end + 1;
      return s;
    }
    const m = /^(True|False|None|-?\d+L?)/.exec(text.slice(i));
    if (!m) return fail(`unexpected ${JSON.stringify(text.slice(i, i + 10))} at ${i}`);
    i += m[0].length;
    if (m[0] === "True") return true;
    if (m[0] === "False") return false;
    if (m[0] === "None") return null;
    return Number(m[0].replace("L", ""));
  };
  const v = value();
  ws();
  if (i !== text.length) fail(`trailing characters at ${i}`);
  return v;
}

/** Parses the header bytes at the start of a .npy file (`fileSize` checks for truncation). */
async function readHeader(file: Deno.FsFile, path: string, fileSize: number): Promise<NpyInfo> {
  const pre = new Uint8Array(12);
  const got = Math.min(12, fileSize);
  await readFully(file, pre.subarray(0, got), path);
  if (got < 10 || MAGIC.some((b, k) => pre[k] !== b)) {
    throw new Error(`${path}: not a .npy file (wrong magic; expected \\x93NUMPY)`);
  }
  const major = pre[6], minor = pre[7];
  let headerLen: number, headerStart: number;
  if (major === 1) {
    headerLen = pre[8] | (pre[9] << 8);
    headerStart = 10;
  } else if (major === 2 || major === 3) {
    if (got < 12) throw new Error(`${path}: truncated .npy header`);
    headerLen = new DataView(pre.buffer).getUint32(8, true);
    headerStart = 12;
  } else {
    throw new Error(`${path}: unsupported .npy format version ${major}.${minor} (1.0-3.0 known)`);
  }
  if (headerStart + headerLen > fileSize) {
    throw new Error(`${path}: .npy header length ${headerLen} runs past the end of the file`);
  }
  const hdr = new Uint8Array(headerLen);
  await file.seek(headerStart, Deno.SeekMode.Start);
  await readFully(file, hdr, path);
  const text = new TextDecoder(major === 3 ? "utf-8" : "latin1").decode(hdr);
  const dict = parsePyLiteral(text, path);
  if (typeof dict !== "object" || dict === null || Array.isArray(dict)) {
    throw new Error(`${path}: .npy header is not a dict`);
  }
  const { descr, fortran_order: fortran, shape } = dict;
  if (typeof descr !== "string") {
    throw new Error(
      `${path}: unsupported dtype ${JSON.stringify(descr)} (structured); allowed: ${ALLOWED}`,
    );
  }
  const kind = (descr[0] === "<" || descr[0] === "|") ? KINDS[descr.slice(1)] : undefined;
  if (!kind) throw new Error(`${path}: unsupported dtype '${descr}'; allowed: ${ALLOWED}`);
  if (fortran !== false) {
    throw new Error(
      `${path}: fortran_order is ${fortran === true ? "True" : String(fortran)}; ` +
        `only C-order arrays are supported`,
    );
  }
  if (!Array.isArray(shape) || !shape.every((d) => typeof d === "number" && d >= 0)) {
    throw new Error(`${path}: .npy header has no valid 'shape'`);
  }
  if (shape.length !== 1) {
    throw new Error(
      `${path}: expected a 1-D array of token ids, got ndim ${shape.length} ` +
        `(shape (${shape.join(", ")}${shape.length === 1 ? "," : ""}))`,
    );
  }
  const length = shape[0] as number;
  const dataOffset = headerStart + headerLen;
  const need = dataOffset + length * kind.size;
  if (need > fileSize) {
    throw new Error(
      `${path}: truncated: ${length} ${kind.dtype} elements need ${need} bytes, file has ` +
        `${fileSize}`,
    );
  }
  return {
    path,
    version: [major, minor],
    descr,
    dtype: kind.dtype,
    itemSize: kind.size,
    length,
    dataOffset,
  };
}

/** Elements converted per read, bounding the scratch buffer of whole-file reads. */
const CHUNK_ELEMS = 1 << 22;

/** Converts `count` raw elements in `raw` to int32 at `out[outOff..]`; `base` is for errors. */
function convert(
  info: NpyInfo,
  raw: Uint8Array,
  count: number,
  out: Int32Array,
  outOff: number,
  base: number,
): void {
  const buf = raw.buffer, off = raw.byteOffset;
  switch (info.dtype) {
    case "uint16":
      out.set(new Uint16Array(buf, off, count), outOff);
      return;
    case "int32":
      out.set(new Int32Array(buf, off, count), outOff);
      return;
    case "uint32": {
      const src = new Uint32Array(buf, off, count);
      for (let k = 0; k < count; k++) {
        const v = src[k];
        if (v > 0x7fffffff) {
          throw new Error(
            `${info.path}: token ${base + k} has uint32 value ${v} > 2^31-1, ` +
              `which does not fit an int32 token id`,
          );
        }
        out[outOff + k] = v;
      }
      return;
    }
    case "int64": {
      // Low and high 32-bit halves: the value fits int32 iff hi is the sign extension of lo.
      const lo = new Int32Array(buf, off, count * 2);
      for (let k = 0; k < count; k++) {
        const l = lo[2 * k], h = lo[2 * k + 1];
        if (h !== (l >> 31)) {
          const v = new BigInt64Array(buf, off + 8 * k, 1)[0];
          throw new Error(
            `${info.path}: token ${base + k} has int64 value ${v}, outside the int32 range`,
          );
        }
        out[outOff + k] = l;
      }
      return;
    }
  }
}

/** An open .npy token file for windowed reads; reads are serialized, so concurrent calls are safe. */
export class NpyTokenFile {
  readonly info: NpyInfo;
  #file: Deno.FsFile | null;
  #queue: Promise<unknown> = Promise.resolve();

  private constructor(info: NpyInfo, file: Deno.FsFile) {
    this.info = info;
    this.#file = file;
  }

  static async open(path: string): Promise<NpyTokenFile> {
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path, { read: true });
    } catch (e) {
      throw new Error(`${path}: cannot open .npy file (${(e as Error).message})`);
    }
    try {
      const size = (await file.stat()).size;
      return new NpyTokenFile(await readHeader(file, path, size), file);
    } catch (e) {
      file.close();
      throw e;
    }
  }

  get path(): string {
    return this.info.path;
  }

  /** Number of tokens in the file. */
  get length(): number {
    return this.info.length;
  }

  /** Tokens [start, start + n) as int32 (into `out` when given). */
  read(start: number, n: number, out?: Int32Array): Promise<Int32Array> {
    const { path, length, itemSize, dataOffset } = this.info;
    if (
      !Number.isSafeInteger(start) || !Number.isSafeInteger(n) || start < 0 || n < 0 ||
      start + n > length
    ) {
      return Promise.reject(
        new Error(`${path}: token window [${start}, ${start + n}) outside [0, ${length})`),
      );
    }
    if (out && out.length < n) {
      return Promise.reject(new Error(`${path}: output holds ${out.length} tokens, need ${n}`));
    }
    const dst = out ?? new Int32Array(n);
    const run = async () => {
      const file = this.#file;
      if (file === null) throw new Error(`${path}: file is closed`);
      const chunk = Math.min(n, CHUNK_ELEMS);
      const scratch = new Uint8Array(chunk * itemSize);
      await file.seek(dataOffset + start * itemSize, Deno.SeekMode.Start);
      for (let done = 0; done < n;) {
        const c = Math.min(chunk, n - done);
        const raw = scratch.subarray(0, c * itemSize);
        await readFully(file, raw, path);
        convert(this.info, raw, c, dst, done, start + done);
        done += c;
      }
      return dst;
    };
    const p = this.#queue.then(run, run);
    this.#queue = p.catch(() => {});
    return p;
  }

  /** All tokens as int32. */
  readAll(): Promise<Int32Array> {
    return this.read(0, this.info.length);
  }

  close(): void {
    if (this.#file !== null) {
      this.#file.close();
      this.#file = null;
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** Reads and validates only the header of a .npy token file. */
export async function readNpyInfo(path: string): Promise<NpyInfo> {
  const f = await NpyTokenFile.open(path);
  f.close();
  return f.info;
}

/** Reads a whole .npy token file as int32 token ids. */
export async function readNpyTokens(path: string): Promise<Int32Array> {
  const f = await NpyTokenFile.open(path);
  try {
    return await f.readAll();
  } finally {
    f.close();
  }
}

/** Reads tokens [start, start + n) of a .npy token file, touching only those bytes. */
export async function readNpyWindow(path: string, start: number, n: number): Promise<Int32Array> {
  const f = await NpyTokenFile.open(path);
  try {
    return await f.read(start, n);
  } finally {
    f.close();
  }
}

/** The .npy preamble (magic, version, header) for a 1-D array; data then starts 64-aligned. */
export function npyHeader(descr: string, length: number): Uint8Array {
  const dict = `{'descr': '${descr}', 'fortran_order': False, 'shape': (${length},), }`;
  const base = 10; // magic + version + uint16 length
  const total = Math.ceil((base + dict.length + 1) / 64) * 64;
  const text = dict + " ".repeat(total - base - dict.length - 1) + "\n";
  const out = new Uint8Array(total);
  out.set(MAGIC);
  out[6] = 1;
  out[7] = 0;
  new DataView(out.buffer).setUint16(8, text.length, true);
  out.set(new TextEncoder().encode(text), base);
  return out;
}

/** Writes a 1-D .npy file (format 1.0, little-endian), atomically (temporary file + rename). */
export async function writeNpy(
  path: string,
  data: Int32Array | Uint16Array | Uint32Array | BigInt64Array,
): Promise<void> {
  let descr: string;
  if (data instanceof Int32Array) descr = "<i4";
  else if (data instanceof Uint16Array) descr = "<u2";
  else if (data instanceof Uint32Array) descr = "<u4";
  else if (data instanceof BigInt64Array) descr = "<i8";
  else {throw new Error(
      `${path}: writeNpy takes Int32Array, Uint16Array, Uint32Array or BigInt64Array`,
    );}
  const header = npyHeader(descr, data.length);
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  await writeFileAtomic(path, async (file) => {
    for (const part of [header, bytes]) {
      let off = 0;
      while (off < part.byteLength) {
        off += await file.write(part.subarray(off, Math.min(part.byteLength, off + (64 << 20))));
      }
    }
  });
}
