/**
 * Document readers: JSON Lines, JSON and Parquet files to a stream of documents (texts or
 * conversations).
 *
 * Each record gives one document, taken from its text field (`text` unless another is named):
 * - a string is the document as is;
 * - a list of chat turns is a conversation ({@link parseConversation}; chat.ts renders and
 *   tokenises it, training on the assistant's turns only);
 * - with the default field name, a record without `text` may instead hold `conversations`
 *   (ShareGPT / Vicuna, LightSeq's format) or `messages` (OpenAI style).
 *
 * Chat template (plain text, one line per turn, turns joined by "\n"; chat.ts owns it and which
 * tokens are trained on):
 * ```
 * SYSTEM: <system text>
 * USER: <human / user text>
 * ASSISTANT: <gpt / assistant text>
 * ```
 * A turn's role comes from `from` or `role` and its text from `value` or `content`. Roles
 * `human`/`user` print as USER, `gpt`/`assistant`/`model`/`chatgpt`/`bard`/`bing` as ASSISTANT,
 * `system` as SYSTEM, and any other role upper-cased. Turn text is kept verbatim.
 *
 * Errors name the file and the line (JSONL), element (JSON array) or row (Parquet).
 *
 * @module
 */

import {
  asyncBufferFromFile,
  parquetMetadataAsync,
  parquetReadObjects,
  parquetSchema,
} from "npm:hyparquet@^1.33.0";
import { compressors } from "npm:hyparquet-compressors@^1.1.2";
import { type ChatTurn, conversationText } from "./chat.ts";

/** The text field used when none is named. */
export const DEFAULT_TEXT_FIELD = "text";

/** Fields tried, in order, when the default text field is missing from a record. */
export const CHAT_FIELDS: readonly string[] = ["conversations", "messages"];

/** Progress of one file: bytes read so far and the file's size. */
export type ProgressCallback = (bytesDone: number, bytesTotal: number) => void;

/** Options shared by the document readers. */
export interface ReadOptions {
  /** Field (JSON) or column (Parquet) holding the text; default "text". */
  textField?: string;
  /** Called as the file is read, at most every 64 KiB-ish and once at the end. */
  onProgress?: ProgressCallback;
}

/** A malformed data file: the message names the file and the place. */
export class DataError extends Error {
  /** An error; `message` names the file and place, then what is wrong. */
  constructor(message: string) {
    super(message);
    this.name = "DataError";
  }
}

const ROLE_LABELS: Readonly<Record<string, string>> = {
  human: "USER",
  user: "USER",
  gpt: "ASSISTANT",
  assistant: "ASSISTANT",
  model: "ASSISTANT",
  chatgpt: "ASSISTANT",
  bard: "ASSISTANT",
  bing: "ASSISTANT",
  system: "SYSTEM",
};

function describe(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "a list";
  return typeof v === "object" ? "an object" : `a ${typeof v}`;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

/** One document of a data file: a text, or a conversation's turns. */
export type DataDocument = string | ChatTurn[];

/**
 * Checks a list of chat turns ({from|role, value|content}) and normalises their roles.
 * @param where prefix for error messages, e.g. "data.jsonl:12"
 */
export function parseConversation(turns: readonly unknown[], where = "conversation"): ChatTurn[] {
  const parsed: ChatTurn[] = [];
  for (let i = 0; i < turns.length; i++) {
    const t = turns[i];
    if (!isRecord(t)) {
      throw new DataError(
        `${where}: turn ${i} is ${describe(t)}, expected {from|role, value|content}`,
      );
    }
    const role = t.from ?? t.role;
    const text = t.value ?? t.content;
    if (typeof role !== "string") {
      throw new DataError(`${where}: turn ${i} has no "from" or "role" string`);
    }
    if (typeof text !== "string") {
      throw new DataError(`${where}: turn ${i} has no "value" or "content" string`);
    }
    parsed.push({ role: ROLE_LABELS[role.toLowerCase()] ?? role.toUpperCase(), text });
  }
  return parsed;
}

/**
 * Renders chat turns as plain text (see the module doc for the template).
 * @param where prefix for error messages, e.g. "data.jsonl:12"
 */
export function renderConversation(turns: readonly unknown[], where = "conversation"): string {
  return conversationText(parseConversation(turns, where));
}

function valueDocument(value: unknown, field: string, where: string): DataDocument {
  if (typeof value === "string") return value;
  if (Array.isArray(value)) return parseConversation(value, `${where}: "${field}"`);
  throw new DataError(
    `${where}: field "${field}" is ${describe(value)}, expected a string or a list of chat turns`,
  );
}

/**
 * The document text of one record, a conversation rendered as plain text.
 * @param where prefix for error messages, e.g. "data.jsonl:12"
 */
export function recordText(
  record: unknown,
  textField: string = DEFAULT_TEXT_FIELD,
  where = "record",
): string {
  const doc = recordDocument(record, textField, where);
  return typeof doc === "string" ? doc : conversationText(doc);
}

/**
 * The document of one record (an object parsed from JSON, a Parquet row, or any reader's record
 * of the same shape): its text, or its conversation's turns.
 * @param where prefix for error messages, e.g. "data.jsonl:12"
 */
export function recordDocument(
  record: unknown,
  textField: string = DEFAULT_TEXT_FIELD,
  where = "record",
): DataDocument {
  if (!isRecord(record)) {
    throw new DataError(`${where}: expected a JSON object, got ${describe(record)}`);
  }
  if (record[textField] !== undefined) return valueDocument(record[textField], textField, where);
  if (textField === DEFAULT_TEXT_FIELD) {
    for (const f of CHAT_FIELDS) {
      if (record[f] !== undefined) return valueDocument(record[f], f, where);
    }
  }
  const keys = Object.keys(record);
  const alt = textField === DEFAULT_TEXT_FIELD ? ` (nor ${CHAT_FIELDS.join(" or ")})` : "";
  throw new DataError(
    `${where}: missing field "${textField}"${alt}; the record has ` +
      (keys.length ? `fields ${keys.map((k) => JSON.stringify(k)).join(", ")}` : "no fields") +
      "; choose the text field with --text-field (textField in the API)",
  );
}

const CHUNK = 1 << 22;
const PROGRESS_STEP = 1 << 16;

/** Lines of a file (without the "\n" or "\r\n"), with 1-based line numbers, read in chunks. */
export async function* readLines(
  path: string,
  onProgress?: ProgressCallback,
): AsyncGenerator<{ line: string; lineNo: number }> {
  const file = await openFile(path);
  try {
    const total = (await file.stat()).size;
    const decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: false });
    const buf = new Uint8Array(CHUNK);
    let pending: Uint8Array[] = [];
    let lineNo = 0;
    let done = 0;
    let reported = 0;
    const emit = (bytes: Uint8Array): string => {
      lineNo++;
      let end = bytes.length;
      if (end > 0 && bytes[end - 1] === 13) end--;
      try {
        // A BOM is skipped by the decoder only at the start of its input, so strip it by hand.
        let start = 0;
        if (lineNo === 1 && bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf) start = 3;
        return decoder.decode(bytes.subarray(start, end));
      } catch {
        throw new DataError(`${path}:${lineNo}: invalid UTF-8`);
      }
    };
    for (;;) {
      const n = await file.read(buf);
      if (n === null) break;
      const chunk = buf.subarray(0, n);
      let pos = 0;
      for (;;) {
        const nl = chunk.indexOf(10, pos);
        if (nl < 0) break;
        let bytes: Uint8Array = chunk.subarray(pos, nl);
        if (pending.length) {
          bytes = concat([...pending, bytes]);
          pending = [];
        }
        const line = emit(bytes);
        yield { line, lineNo };
        pos = nl + 1;
      }
      if (pos < n) pending.push(chunk.slice(pos));
      done += n;
      if (onProgress && done - reported >= PROGRESS_STEP) {
        reported = done;
        onProgress(done, total);
      }
    }
    if (pending.length) {
      const line = emit(concat(pending));
      yield { line, lineNo };
    }
    onProgress?.(total, total);
  } finally {
    file.close();
  }
}

function concat(parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

async function openFile(path: string): Promise<Deno.FsFile> {
  try {
    return await Deno.open(path, { read: true });
  } catch (e) {
    throw new DataError(`${path}: cannot open (${(e as Error).message})`);
  }
}

/** Documents of a JSON Lines file: one JSON object a line; blank lines are skipped. */
export async function* readJsonl(
  path: string,
  options: ReadOptions = {},
): AsyncGenerator<DataDocument> {
  const field = options.textField ?? DEFAULT_TEXT_FIELD;
  for await (const { line, lineNo } of readLines(path, options.onProgress)) {
    if (line.trim() === "") continue;
    let rec: unknown;
    try {
      rec = JSON.parse(line);
    } catch (e) {
      throw new DataError(`${path}:${lineNo}: invalid JSON (${(e as Error).message})`);
    }
    yield recordDocument(rec, field, `${path}:${lineNo}`);
  }
}

/** Line and column (1-based) of a character offset. */
function lineCol(text: string, pos: number): string {
  let line = 1;
  let last = -1;
  for (let i = text.indexOf("\n"); i >= 0 && i < pos; i = text.indexOf("\n", i + 1)) {
    line++;
    last = i;
  }
  return `${line}:${pos - last}`;
}

/**
 * Documents of a .json file: an array of objects; a file that does not start with "[" is read
 * as JSON Lines (what `datasets`' `to_json` writes by default).
 */
export async function* readJson(
  path: string,
  options: ReadOptions = {},
): AsyncGenerator<DataDocument> {
  const field = options.textField ?? DEFAULT_TEXT_FIELD;
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new DataError(`${path}: cannot read (${(e as Error).message})`);
  }
  const first = text.search(/[^\s\uFEFF]/);
  if (first < 0 || text[first] !== "[") {
    yield* readJsonl(path, options);
    return;
  }
  const total = new TextEncoder().encode(text).length;
  let records: unknown;
  try {
    records = JSON.parse(text.replace(/^\uFEFF/, ""));
  } catch (e) {
    const msg = (e as Error).message;
    const m = /position (\d+)/.exec(msg);
    const at = m && !/line \d+/.test(msg) ? ` at ${path}:${lineCol(text, Number(m[1]))}` : "";
    throw new DataError(`${path}: invalid JSON (${msg})${at}`);
  }
  const list = records as unknown[];
  let reported = 0;
  for (let i = 0; i < list.length; i++) {
    yield recordDocument(list[i], field, `${path}: element ${i}`);
    if (options.onProgress && i - reported >= 1024) {
      reported = i;
      options.onProgress(Math.floor((total * i) / list.length), total);
    }
  }
  options.onProgress?.(total, total);
}

/** Documents of a Parquet file (Hugging Face `datasets` layout), read one row group at a time. */
export async function* readParquet(
  path: string,
  options: ReadOptions = {},
): AsyncGenerator<DataDocument> {
  const field = options.textField ?? DEFAULT_TEXT_FIELD;
  let file;
  let meta;
  let columns: string[];
  try {
    file = await asyncBufferFromFile(path);
    meta = await parquetMetadataAsync(file);
    // A corrupted schema fails here (a TypeError naming no file) as much as in the metadata.
    columns = parquetSchema(meta).children.map((c) => c.element.name);
  } catch (e) {
    throw new DataError(`${path}: not a readable Parquet file (${(e as Error).message})`);
  }
  let column = field;
  if (!columns.includes(field)) {
    const chat = field === DEFAULT_TEXT_FIELD ? CHAT_FIELDS.find((c) => columns.includes(c)) : null;
    if (!chat) {
      const alt = field === DEFAULT_TEXT_FIELD ? ` (nor ${CHAT_FIELDS.join(" or ")})` : "";
      throw new DataError(
        `${path}: no column "${field}"${alt}; columns are ${
          columns.map((c) => JSON.stringify(c)).join(", ")
        }; choose the text column with --text-field (textField in the API)`,
      );
    }
    column = chat;
  }
  const total = file.byteLength;
  let rowStart = 0;
  let bytes = 0;
  for (const group of meta.row_groups) {
    const rows = Number(group.num_rows);
    let objects: Record<string, unknown>[];
    try {
      objects = await parquetReadObjects({
        file,
        compressors,
        columns: [column],
        rowStart,
        rowEnd: rowStart + rows,
      });
    } catch (e) {
      throw new DataError(
        `${path}: cannot read rows ${rowStart}..${rowStart + rows - 1} (${(e as Error).message})`,
      );
    }
    for (let r = 0; r < objects.length; r++) {
      const value = objects[r][column];
      const where = `${path}: row ${rowStart + r}`;
      if (value === null || value === undefined) {
        throw new DataError(`${where}: column "${column}" is null`);
      }
      yield valueDocument(value, column, where);
    }
    rowStart += rows;
    bytes += Number(group.total_compressed_size ?? group.total_byte_size);
    options.onProgress?.(Math.min(bytes, total), total);
  }
  options.onProgress?.(total, total);
}

/** Extensions of document (text) files and their readers. */
export const TEXT_READERS: Readonly<
  Record<string, (path: string, options?: ReadOptions) => AsyncGenerator<DataDocument>>
> = {
  ".jsonl": readJsonl,
  ".json": readJson,
  ".parquet": readParquet,
};
