/**
 * Reading and writing safetensors files and Hugging Face model folders.
 *
 * File layout (https://huggingface.co/docs/safetensors): 8-byte little-endian header length N,
 * N bytes of JSON (`{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}`,
 * possibly padded with spaces), then the data buffer; offsets are relative to the buffer start.
 *
 * Readers never load a whole file: they read the header, then each tensor's bytes on demand
 * through positioned reads. Writers stream tensor by tensor into a temporary file that is renamed
 * into place only once complete and flushed.
 *
 * @module
 */

import { join } from "node:path";
import { asBytes, dtypeBytes, isDType, toFloat32, typedView } from "./dtype.ts";
import type { DType, TensorData } from "./dtype.ts";
import { readFully, writeBytesAtomic, writeFileAtomic, writeFully } from "./files.ts";

/** Largest JSON header accepted (the safetensors library's own limit). */
export const MAX_HEADER_BYTES = 100_000_000;

/** Name of a single-file model's weights in a Hugging Face folder. */
export const SINGLE_FILE_NAME = "model.safetensors";
/** Name of the shard index in a Hugging Face folder. */
export const INDEX_FILE_NAME = "model.safetensors.index.json";

/** One tensor as described by a safetensors header. */
export interface TensorInfo {
  name: string;
  dtype: DType;
  shape: number[];
  /** [begin, end) relative to the start of the data buffer. */
  dataOffsets: [number, number];
  /** end - begin. */
  byteLength: number;
  /** Path of the file holding it. */
  file: string;
}

/** Common read interface of a single file and of a (possibly sharded) model folder. */
export interface TensorSource {
  /** Tensor names in file order (for folders: shard order, then file order). */
  names(): string[];
  has(name: string): boolean;
  info(name: string): TensorInfo;
  tensors(): TensorInfo[];
  /** The tensor's raw little-endian bytes. */
  readBytes(name: string): Promise<Uint8Array>;
  /** The tensor converted to float32 (from F32, BF16, F16, F64 or an integer type). */
  readFloat32(name: string): Promise<Float32Array>;
  close(): void;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isNonNegInt(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

/** Product of dims (1 for a scalar). */
export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/**
 * The keys of a JSON object's text in the order written. (Object.entries of JSON.parse's result
 * lists integer-like keys such as "0" or "10" first, in numeric order.) `text` must be valid JSON.
 */
function keysInTextOrder(text: string): string[] {
  const keys = new Set<string>();
  let depth = 0;
  let keyNext = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      let j = i + 1;
      while (text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
      if (depth === 1 && keyNext) keys.add(JSON.parse(text.slice(i, j + 1)));
      keyNext = false;
      i = j;
    } else if (c === "{" || c === "[") {
      depth++;
      keyNext = depth === 1;
    } else if (c === "}" || c === "]") depth--;
    else if (c === "," && depth === 1) keyNext = true;
  }
  return [...keys];
}

/**
 * Parses and validates a safetensors JSON header. `dataSize` is the byte length of the data
 * buffer (file size - 8 - header length). Errors name `path` and the offending tensor.
 */
export function parseSafetensorsHeader(
  headerText: string,
  dataSize: number,
  path: string,
): { tensors: TensorInfo[]; metadata: Record<string, string> | null } {
  let json: unknown;
  try {
    json = JSON.parse(headerText);
  } catch (e) {
    throw new Error(`${path}: safetensors header is not valid JSON (${(e as Error).message})`);
  }
  if (!isPlainObject(json)) throw new Error(`${path}: safetensors header is not a JSON object`);
  let metadata: Record<string, string> | null = null;
  const tensors: TensorInfo[] = [];
  // Tensors in the header's order, integer-like names included (see keysInTextOrder).
  const obj = json;
  for (const [name, raw] of keysInTextOrder(headerText).map((k) => [k, obj[k]] as const)) {
    if (name === "__metadata__") {
      if (raw === null) continue;
      if (!isPlainObject(raw)) throw new Error(`${path}: __metadata__ must be an object`);
      metadata = {};
      for (const [k, v] of Object.entries(raw)) {
        if (typeof v !== "string") {
          throw new Error(`${path}: __metadata__.${k} must be a string, got ${JSON.stringify(v)}`);
        }
        metadata[k] = v;
      }
      continue;
    }
    const where = `${path}: tensor ${JSON.stringify(name)}`;
    if (!isPlainObject(raw)) throw new Error(`${where}: entry is not an object`);
    const { dtype, shape, data_offsets: offsets } = raw;
    if (!isDType(dtype)) throw new Error(`${where}: unsupported dtype ${JSON.stringify(dtype)}`);
    if (!Array.isArray(shape) || !shape.every(isNonNegInt)) {
      throw new Error(`${where}: shape must be an array of non-negative integers`);
    }
    if (
      !Array.isArray(offsets) || offsets.length !== 2 || !isNonNegInt(offsets[0]) ||
      !isNonNegInt(offsets[1])
    ) {
      throw new Error(`${where}: data_offsets must be [begin, end] of non-negative integers`);
    }
    const [begin, end] = offsets as [number, number];
    if (end < begin) throw new Error(`${where}: data_offsets [${begin}, ${end}] end before begin`);
    if (end > dataSize) {
      throw new Error(
        `${where}: data_offsets [${begin}, ${end}] run past the end of the data buffer ` +
          `(${dataSize} bytes; file truncated?)`,
      );
    }
    const expected = numel(shape) * dtypeBytes(dtype);
    if (end - begin !== expected) {
      throw new Error(
        `${where}: data_offsets [${begin}, ${end}] hold ${end - begin} bytes but ${dtype} ` +
          `[${shape.join(", ")}] needs ${expected}`,
      );
    }
    tensors.push({
      name,
      dtype,
      shape: [...shape] as number[],
      dataOffsets: [begin, end],
      byteLength: end - begin,
      file: path,
    });
  }
  // The buffer must be covered exactly: no overlaps, no holes (as the safetensors library checks).
  const sorted = [...tensors].sort((a, b) =>
    a.dataOffsets[0] - b.dataOffsets[0] || a.dataOffsets[1] - b.dataOffsets[1]
  );
  let pos = 0;
  for (const t of sorted) {
    if (t.dataOffsets[0] !== pos) {
      const kind = t.dataOffsets[0] < pos ? "overlaps the previous tensor" : "leaves a gap";
      throw new Error(
        `${path}: tensor ${JSON.stringify(t.name)}: data_offsets [${t.dataOffsets[0]}, ` +
          `${t.dataOffsets[1]}] ${kind} (expected begin ${pos})`,
      );
    }
    pos = t.dataOffsets[1];
  }
  if (pos !== dataSize) {
    throw new Error(
      `${path}: tensors cover ${pos} bytes but the data buffer holds ${dataSize} (trailing bytes)`,
    );
  }
  return { tensors, metadata };
}

/** One open .safetensors file. Reads are positioned and serialized, so concurrent calls are safe. */
export class SafetensorsFile implements TensorSource {
  readonly path: string;
  readonly metadata: Record<string, string> | null;
  /** Byte offset of the data buffer in the file (8 + header length). */
  readonly dataStart: number;
  readonly fileSize: number;
  #file: Deno.FsFile | null;
  #byName: Map<string, TensorInfo>;
  #order: TensorInfo[];
  #queue: Promise<unknown> = Promise.resolve();

  private constructor(
    path: string,
    file: Deno.FsFile,
    tensors: TensorInfo[],
    metadata: Record<string, string> | null,
    dataStart: number,
    fileSize: number,
  ) {
    this.path = path;
    this.#file = file;
    this.#order = tensors;
    this.#byName = new Map(tensors.map((t) => [t.name, t]));
    this.metadata = metadata;
    this.dataStart = dataStart;
    this.fileSize = fileSize;
  }

  /** Opens `path` and reads and validates its header only. */
  static async open(path: string): Promise<SafetensorsFile> {
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path, { read: true });
    } catch (e) {
      throw new Error(`${path}: cannot open safetensors file (${(e as Error).message})`);
    }
    try {
      const size = (await file.stat()).size;
      if (size < 8) throw new Error(`${path}: too short for a safetensors file (${size} bytes)`);
      const lenBuf = new Uint8Array(8);
      await readFully(file, lenBuf, path);
      const len64 = new DataView(lenBuf.buffer).getBigUint64(0, true);
      if (len64 > BigInt(MAX_HEADER_BYTES)) {
        throw new Error(
          `${path}: header length ${len64} exceeds the ${MAX_HEADER_BYTES}-byte limit ` +
            `(not a safetensors file?)`,
        );
      }
      const headerLen = Number(len64);
      if (8 + headerLen > size) {
        throw new Error(
          `${path}: header length ${headerLen} runs past the end of the ${size}-byte file`,
        );
      }
      const headerBuf = new Uint8Array(headerLen);
      await readFully(file, headerBuf, path);
      let text: string;
      try {
        text = new TextDecoder("utf-8", { fatal: true }).decode(headerBuf);
      } catch {
        throw new Error(`${path}: safetensors header is not valid UTF-8`);
      }
      if (!text.startsWith("{")) {
        throw new Error(`${path}: safetensors header does not start with '{' (not safetensors?)`);
      }
      const dataStart = 8 + headerLen;
      const { tensors, metadata } = parseSafetensorsHeader(text, size - dataStart, path);
      return new SafetensorsFile(path, file, tensors, metadata, dataStart, size);
    } catch (e) {
      file.close();
      throw e;
    }
  }

  names(): string[] {
    return this.#order.map((t) => t.name);
  }

  has(name: string): boolean {
    return this.#byName.has(name);
  }

  info(name: string): TensorInfo {
    const t = this.#byName.get(name);
    if (!t) throw new Error(`${this.path}: no tensor named ${JSON.stringify(name)}`);
    return t;
  }

  tensors(): TensorInfo[] {
    return [...this.#order];
  }

  /** Reads `length` bytes starting `offset` bytes into tensor `name`'s data. */
  async readRange(name: string, offset: number, length: number): Promise<Uint8Array> {
    const t = this.info(name);
    if (!isNonNegInt(offset) || !isNonNegInt(length) || offset + length > t.byteLength) {
      throw new Error(
        `${this.path}: tensor ${JSON.stringify(name)}: range [${offset}, ${offset + length}) ` +
          `outside its ${t.byteLength} bytes`,
      );
    }
    return await this.#readAt(this.dataStart + t.dataOffsets[0] + offset, length, name);
  }

  async readBytes(name: string): Promise<Uint8Array> {
    const t = this.info(name);
    return await this.#readAt(this.dataStart + t.dataOffsets[0], t.byteLength, name);
  }

  async readFloat32(name: string): Promise<Float32Array> {
    const t = this.info(name);
    const bytes = await this.readBytes(name);
    if (t.dtype === "F32") {
      return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4);
    }
    return toFloat32(t.dtype, bytes);
  }

  /** The tensor as a typed array of its own dtype (BF16/F16 as Uint16Array bits). */
  async readTyped(name: string): Promise<TensorData> {
    return typedView(this.info(name).dtype, await this.readBytes(name));
  }

  #readAt(pos: number, length: number, name: string): Promise<Uint8Array> {
    const run = async () => {
      const file = this.#file;
      if (file === null) throw new Error(`${this.path}: file is closed`);
      const buf = new Uint8Array(length);
      await file.seek(pos, Deno.SeekMode.Start);
      await readFully(file, buf, `${this.path}: tensor ${JSON.stringify(name)}`);
      return buf;
    };
    const p = this.#queue.then(run, run);
    this.#queue = p.catch(() => {});
    return p;
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

/** Reads only the header of a safetensors file: its tensors and metadata. */
export async function readSafetensorsHeader(
  path: string,
): Promise<{ tensors: TensorInfo[]; metadata: Record<string, string> | null }> {
  const f = await SafetensorsFile.open(path);
  try {
    return { tensors: f.tensors(), metadata: f.metadata };
  } finally {
    f.close();
  }
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/**
 * The weights of a Hugging Face model folder: `model.safetensors`, or shards listed by
 * `model.safetensors.index.json` (`weight_map`). A path to one .safetensors file also works.
 * Like transformers, a folder holding both prefers the single `model.safetensors`.
 */
export class SafetensorsModel implements TensorSource {
  /** The folder (or the file, when opened on a file). */
  readonly path: string;
  /** The files opened, in shard order. */
  readonly files: readonly SafetensorsFile[];
  /** `metadata` of the index, when sharded. */
  readonly indexMetadata: Record<string, unknown> | null;
  #where: Map<string, SafetensorsFile>;
  #order: string[];

  private constructor(
    path: string,
    files: SafetensorsFile[],
    where: Map<string, SafetensorsFile>,
    order: string[],
    indexMetadata: Record<string, unknown> | null,
  ) {
    this.path = path;
    this.files = files;
    this.#where = where;
    this.#order = order;
    this.indexMetadata = indexMetadata;
  }

  static async open(path: string): Promise<SafetensorsModel> {
    let st: Deno.FileInfo;
    try {
      st = await Deno.stat(path);
    } catch (e) {
      throw new Error(`${path}: cannot open model weights (${(e as Error).message})`);
    }
    if (st.isFile) return SafetensorsModel.#fromFiles(path, [await SafetensorsFile.open(path)]);
    const single = join(path, SINGLE_FILE_NAME);
    if (await isFile(single)) {
      return SafetensorsModel.#fromFiles(path, [await SafetensorsFile.open(single)]);
    }
    const indexPath = join(path, INDEX_FILE_NAME);
    if (!(await isFile(indexPath))) {
      const found: string[] = [];
      for await (const e of Deno.readDir(path)) {
        if (e.name.endsWith(".safetensors")) found.push(e.name);
      }
      throw new Error(
        `${path}: no ${SINGLE_FILE_NAME} or ${INDEX_FILE_NAME} in this folder` +
          (found.length ? ` (found ${found.sort().join(", ")})` : " (no .safetensors files)"),
      );
    }
    let index: unknown;
    try {
      index = JSON.parse(await Deno.readTextFile(indexPath));
    } catch (e) {
      throw new Error(`${indexPath}: cannot parse shard index (${(e as Error).message})`);
    }
    if (!isPlainObject(index) || !isPlainObject(index.weight_map)) {
      throw new Error(`${indexPath}: shard index has no "weight_map" object`);
    }
    const weightMap = index.weight_map;
    const shardNames: string[] = [];
    for (const [name, shard] of Object.entries(weightMap)) {
      if (typeof shard !== "string" || shard.length === 0 || shard.includes("..")) {
        throw new Error(`${indexPath}: weight_map[${JSON.stringify(name)}] is not a file name`);
      }
      if (!shardNames.includes(shard)) shardNames.push(shard);
    }
    shardNames.sort();
    const files: SafetensorsFile[] = [];
    try {
      for (const s of shardNames) files.push(await SafetensorsFile.open(join(path, s)));
      const byShard = new Map(shardNames.map((s, i) => [s, files[i]]));
      const where = new Map<string, SafetensorsFile>();
      for (const [name, shard] of Object.entries(weightMap)) {
        const f = byShard.get(shard as string)!;
        if (!f.has(name)) {
          throw new Error(
            `${indexPath}: weight_map puts ${JSON.stringify(name)} in ${shard}, which lacks it`,
          );
        }
        where.set(name, f);
      }
      const order: string[] = [];
      for (const f of files) for (const n of f.names()) if (where.get(n) === f) order.push(n);
      const meta = isPlainObject(index.metadata) ? index.metadata : null;
      return new SafetensorsModel(path, files, where, order, meta);
    } catch (e) {
      for (const f of files) f.close();
      throw e;
    }
  }

  static #fromFiles(path: string, files: SafetensorsFile[]): SafetensorsModel {
    const where = new Map<string, SafetensorsFile>();
    for (const f of files) for (const n of f.names()) where.set(n, f);
    return new SafetensorsModel(path, files, where, files.flatMap((f) => f.names()), null);
  }

  /** Whether the weights came from a shard index. */
  get sharded(): boolean {
    return this.indexMetadata !== null || this.files.length > 1;
  }

  names(): string[] {
    return [...this.#order];
  }

  has(name: string): boolean {
    return this.#where.has(name);
  }

  #file(name: string): SafetensorsFile {
    const f = this.#where.get(name);
    if (!f) throw new Error(`${this.path}: no tensor named ${JSON.stringify(name)}`);
    return f;
  }

  info(name: string): TensorInfo {
    return this.#file(name).info(name);
  }

  tensors(): TensorInfo[] {
    return this.#order.map((n) => this.info(n));
  }

  async readBytes(name: string): Promise<Uint8Array> {
    return await this.#file(name).readBytes(name);
  }

  async readFloat32(name: string): Promise<Float32Array> {
    return await this.#file(name).readFloat32(name);
  }

  async readTyped(name: string): Promise<TensorData> {
    return await this.#file(name).readTyped(name);
  }

  close(): void {
    for (const f of this.files) f.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Writing

/** Bytes of a tensor to write: given, or produced on demand just before it is written. */
export type TensorBytes =
  | ArrayBufferView
  | (() => ArrayBufferView | Promise<ArrayBufferView>);

/** A tensor to write. `data` holds numel(shape) * dtypeBytes(dtype) little-endian bytes. */
export interface TensorToWrite {
  name: string;
  dtype: DType;
  shape: readonly number[];
  /**
   * The data: any typed array or DataView over the raw bytes, or a function returning one, called
   * only when the tensor is written (so a caller can fetch one tensor at a time from a device).
   */
  data: TensorBytes;
}

function tensorByteLength(t: TensorToWrite, where: string): number {
  if (!isDType(t.dtype)) {
    throw new Error(`${where}: tensor ${JSON.stringify(t.name)}: unknown dtype ${t.dtype}`);
  }
  if (!Array.isArray(t.shape) || !t.shape.every(isNonNegInt)) {
    throw new Error(`${where}: tensor ${JSON.stringify(t.name)}: bad shape ${t.shape}`);
  }
  return numel(t.shape) * dtypeBytes(t.dtype);
}

async function tensorBytes(t: TensorToWrite, expected: number, where: string): Promise<Uint8Array> {
  const v = typeof t.data === "function" ? await t.data() : t.data;
  if (!ArrayBuffer.isView(v)) {
    throw new Error(`${where}: tensor ${JSON.stringify(t.name)}: data is not a typed array`);
  }
  const bytes = asBytes(v);
  if (bytes.byteLength !== expected) {
    throw new Error(
      `${where}: tensor ${JSON.stringify(t.name)}: ${t.dtype} [${t.shape.join(", ")}] needs ` +
        `${expected} bytes, data has ${bytes.byteLength}`,
    );
  }
  return bytes;
}

/** The 8-byte length + JSON header (space-padded so the data starts 8-byte aligned). */
function encodeHeader(
  tensors: readonly TensorToWrite[],
  sizes: number[],
  metadata: Record<string, string> | null,
): Uint8Array {
  // Entries as text, in the order given: an object would put integer-like names ("0") first.
  const entries: string[] = [];
  if (metadata && Object.keys(metadata).length > 0) {
    entries.push(`"__metadata__":${JSON.stringify(metadata)}`);
  }
  let off = 0;
  tensors.forEach((t, i) => {
    const entry = { dtype: t.dtype, shape: [...t.shape], data_offsets: [off, off + sizes[i]] };
    entries.push(`${JSON.stringify(t.name)}:${JSON.stringify(entry)}`);
    off += sizes[i];
  });
  let json = new TextEncoder().encode(`{${entries.join(",")}}`);
  const padded = Math.ceil(json.byteLength / 8) * 8;
  if (padded !== json.byteLength) {
    const p = new Uint8Array(padded).fill(0x20);
    p.set(json);
    json = p;
  }
  const out = new Uint8Array(8 + json.byteLength);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.byteLength), true);
  out.set(json, 8);
  return out;
}

function checkNames(tensors: readonly TensorToWrite[], where: string): void {
  const seen = new Set<string>();
  for (const t of tensors) {
    if (typeof t.name !== "string" || t.name.length === 0 || t.name === "__metadata__") {
      throw new Error(`${where}: invalid tensor name ${JSON.stringify(t.name)}`);
    }
    if (seen.has(t.name)) throw new Error(`${where}: duplicate tensor name ${t.name}`);
    seen.add(t.name);
  }
}

/**
 * Writes one .safetensors file, tensors in the given order, streaming each tensor's bytes.
 * `metadata` goes to `__metadata__` (transformers expects `{"format": "pt"}`, added when absent;
 * pass `null` to write none).
 */
export async function writeSafetensors(
  path: string,
  tensors: readonly TensorToWrite[],
  metadata: Record<string, string> | null = {},
): Promise<void> {
  checkNames(tensors, path);
  const sizes = tensors.map((t) => tensorByteLength(t, path));
  const meta = metadata === null ? null : { format: "pt", ...metadata };
  const header = encodeHeader(tensors, sizes, meta);
  await writeFileAtomic(path, async (file) => {
    await writeFully(file, header);
    for (let i = 0; i < tensors.length; i++) {
      await writeFully(file, await tensorBytes(tensors[i], sizes[i], path));
    }
  });
}

/** Shard file name the way transformers spells it: `model-00001-of-00003.safetensors`. */
export function shardFileName(index: number, count: number): string {
  const p = (n: number) => String(n).padStart(5, "0");
  return `model-${p(index + 1)}-of-${p(count)}.safetensors`;
}

/** Splits tensors, in order, into groups of at most `maxShardBytes` (a bigger tensor goes alone). */
export function planShards(sizes: readonly number[], maxShardBytes: number): number[][] {
  const shards: number[][] = [];
  let cur: number[] = [];
  let curBytes = 0;
  sizes.forEach((s, i) => {
    if (cur.length > 0 && curBytes + s > maxShardBytes) {
      shards.push(cur);
      cur = [];
      curBytes = 0;
    }
    cur.push(i);
    curBytes += s;
  });
  if (cur.length > 0 || shards.length === 0) shards.push(cur);
  return shards;
}

/**
 * Writes a Hugging Face weights folder: a single `model.safetensors` when everything fits in
 * `maxShardBytes`, else `model-0000i-of-0000N.safetensors` shards plus
 * `model.safetensors.index.json` (`metadata.total_size` and `total_parameters`, sorted
 * `weight_map`), as transformers'
 * `save_pretrained` does. Each file is written atomically; weights files of an earlier layout left
 * in `dir` (other shard counts, a stale single file or index) are removed afterwards.
 * Returns the names of the files written.
 */
export async function writeShardedSafetensors(
  dir: string,
  tensors: readonly TensorToWrite[],
  maxShardBytes: number,
  metadata: Record<string, string> | null = {},
): Promise<string[]> {
  if (!(maxShardBytes > 0)) throw new Error(`maxShardBytes must be positive, got ${maxShardBytes}`);
  checkNames(tensors, dir);
  await Deno.mkdir(dir, { recursive: true });
  const sizes = tensors.map((t) => tensorByteLength(t, dir));
  const plan = planShards(sizes, maxShardBytes);
  const written: string[] = [];
  if (plan.length === 1) {
    await writeSafetensors(join(dir, SINGLE_FILE_NAME), tensors, metadata);
    written.push(SINGLE_FILE_NAME);
  } else {
    const weightMap: Record<string, string> = {};
    for (let s = 0; s < plan.length; s++) {
      const name = shardFileName(s, plan.length);
      const group = plan[s].map((i) => tensors[i]);
      await writeSafetensors(join(dir, name), group, metadata);
      for (const t of group) weightMap[t.name] = name;
      written.push(name);
    }
    const sortedMap: Record<string, string> = {};
    for (const k of Object.keys(weightMap).sort()) sortedMap[k] = weightMap[k];
    const total = sizes.reduce((a, b) => a + b, 0);
    const params = tensors.reduce((a, t) => a + numel(t.shape), 0);
    const index = {
      metadata: { total_parameters: params, total_size: total },
      weight_map: sortedMap,
    };
    await writeBytesAtomic(join(dir, INDEX_FILE_NAME), JSON.stringify(index, null, 2) + "\n");
    written.push(INDEX_FILE_NAME);
  }
  const stale = /^(model-\d{5}-of-\d{5}\.safetensors|model\.safetensors(\.index\.json)?)$/;
  for await (const e of Deno.readDir(dir)) {
    if (e.isFile && stale.test(e.name) && !written.includes(e.name)) {
      await Deno.remove(join(dir, e.name));
    }
  }
  return written;
}

/** Opens a model folder or a single .safetensors file (see {@link SafetensorsModel}). */
export function openSafetensors(path: string): Promise<SafetensorsModel> {
  return SafetensorsModel.open(path);
}
