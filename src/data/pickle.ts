/**
 * A Python pickle reader that executes nothing: it understands the opcodes of protocols 2 to 5
 * that build plain data (lists, dicts, tuples, sets, str, bytes, int, float, bool, None and the
 * memo) and refuses every opcode that would import a name or call one (GLOBAL, REDUCE, BUILD,
 * NEWOBJ, ...), so a `.pkl` dataset cannot run code here whatever it holds.
 *
 * Values come out as JavaScript values: lists and tuples as arrays, dicts as plain objects (with
 * no prototype, so a key "__proto__" is just a key), str as string, bytes as Uint8Array, int as
 * number (bigint beyond 2^53), float as number, None as null, sets as arrays.
 *
 * @module
 */

import {
  type DataDocument,
  DataError,
  DEFAULT_TEXT_FIELD,
  type ReadOptions,
  recordDocument,
} from "./readers.ts";

/** Opcodes that import or call Python objects, and why they are refused. */
const CODE_OPCODES: Readonly<Record<number, string>> = {
  0x63: "GLOBAL",
  0x93: "STACK_GLOBAL",
  0x52: "REDUCE",
  0x62: "BUILD",
  0x69: "INST",
  0x6f: "OBJ",
  0x81: "NEWOBJ",
  0x92: "NEWOBJ_EX",
  0x82: "EXT1",
  0x83: "EXT2",
  0x84: "EXT4",
  0x50: "PERSID",
  0x51: "BINPERSID",
  0x97: "NEXT_BUFFER",
  0x98: "READONLY_BUFFER",
};

/** Marks the stack position of a MARK opcode. */
const MARK = Symbol("mark");
type Stack = unknown[];

/** A dict under construction: keys must be str (or int, stored as their decimal text). */
function setItem(dict: unknown, key: unknown, value: unknown, where: string): void {
  if (dict === null || typeof dict !== "object" || Array.isArray(dict)) {
    throw new DataError(`${where}: SETITEM on a value that is not a dict`);
  }
  let k: string;
  if (typeof key === "string") k = key;
  else if (typeof key === "number" || typeof key === "bigint") k = String(key);
  else throw new DataError(`${where}: dict keys must be str or int`);
  Object.defineProperty(dict, k, { value, enumerable: true, writable: true, configurable: true });
}

function newDict(): Record<string, unknown> {
  return Object.create(null);
}

/**
 * Parses one pickle (protocol 0-5 framing; the data opcodes of protocols 2-5) into plain values.
 * @param where prefix of error messages, e.g. the file name
 * @throws DataError for a truncated or malformed pickle, or one that would import or call code
 */
export function parsePickle(bytes: Uint8Array, where = "pickle"): unknown {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const utf8 = new TextDecoder("utf-8", { fatal: true });
  const stack: Stack = [];
  const memo = new Map<number, unknown>();
  let pos = 0;

  const need = (n: number) => {
    if (pos + n > bytes.length) {
      throw new DataError(`${where}: truncated pickle (needs ${n} bytes at offset ${pos})`);
    }
  };
  const u8 = () => (need(1), bytes[pos++]);
  const u16 = () => (need(2), pos += 2, view.getUint16(pos - 2, true));
  const u32 = () => (need(4), pos += 4, view.getUint32(pos - 4, true));
  const u64 = () => {
    need(8);
    const n = view.getBigUint64(pos, true);
    pos += 8;
    if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw new DataError(`${where}: length ${n} too large`);
    return Number(n);
  };
  const take = (n: number) => (need(n), pos += n, bytes.subarray(pos - n, pos));
  const text = (n: number) => {
    const raw = take(n);
    try {
      return utf8.decode(raw);
    } catch {
      throw new DataError(`${where}: invalid UTF-8 in a str at offset ${pos - n}`);
    }
  };
  const line = () => {
    const end = bytes.indexOf(0x0a, pos);
    if (end < 0) throw new DataError(`${where}: truncated pickle (no end of line at ${pos})`);
    const s = new TextDecoder("latin1").decode(bytes.subarray(pos, end));
    pos = end + 1;
    return s;
  };
  const pop = () => {
    if (stack.length === 0) throw new DataError(`${where}: pickle stack underflow at ${pos - 1}`);
    const v = stack.pop();
    if (v === MARK) throw new DataError(`${where}: unexpected MARK at ${pos - 1}`);
    return v;
  };
  const top = () => {
    const v = stack.at(-1);
    if (stack.length === 0 || v === MARK) {
      throw new DataError(`${where}: pickle stack underflow at ${pos - 1}`);
    }
    return v;
  };
  const popMark = (): unknown[] => {
    const at = stack.lastIndexOf(MARK);
    if (at < 0) throw new DataError(`${where}: no MARK before offset ${pos - 1}`);
    const items = stack.splice(at);
    items.shift();
    return items;
  };
  const list = (v: unknown): unknown[] => {
    if (!Array.isArray(v)) throw new DataError(`${where}: APPEND on a value that is not a list`);
    return v;
  };
  const int = (b: bigint): number | bigint =>
    b >= BigInt(Number.MIN_SAFE_INTEGER) && b <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(b) : b;
  /** Little-endian two's-complement integer of n bytes (LONG1 / LONG4). */
  const long = (n: number) => {
    const b = take(n);
    let v = 0n;
    for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]);
    if (n > 0 && b[n - 1] & 0x80) v -= 1n << BigInt(8 * n);
    return int(v);
  };
  /** FLOAT's text: Python's repr of a float ("1.5", "1e+100", "inf", "-inf", "nan"). */
  const float = (s: string) => {
    const t = s.trim();
    if (/^[-+]?(inf|infinity)$/i.test(t)) return t.startsWith("-") ? -Infinity : Infinity;
    if (/^[-+]?nan$/i.test(t)) return NaN;
    if (!/^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/i.test(t)) {
      throw new DataError(`${where}: bad float ${JSON.stringify(s)}`);
    }
    return Number(t);
  };
  /** PUT and GET's text memo key: a decimal number. */
  const memoKey = (s: string) => {
    if (!/^\d+$/.test(s)) throw new DataError(`${where}: bad memo key ${JSON.stringify(s)}`);
    return Number(s);
  };
  const decimal = (s: string) => {
    const t = s.replace(/L$/, "");
    if (t === "00") return false;
    if (t === "01") return true;
    if (!/^[-+]?\d+$/.test(t)) throw new DataError(`${where}: bad integer ${JSON.stringify(s)}`);
    return int(BigInt(t));
  };

  for (;;) {
    const op = u8();
    switch (op) {
      case 0x80: // PROTO
        if (u8() > 5) throw new DataError(`${where}: pickle protocol above 5 is not supported`);
        break;
      case 0x95: // FRAME: a length prefix only
        u64();
        break;
      case 0x2e: // STOP
        if (stack.length !== 1) throw new DataError(`${where}: malformed pickle (stack at STOP)`);
        return pop();
      case 0x28: // MARK
        stack.push(MARK);
        break;
      case 0x5d: // EMPTY_LIST
        stack.push([]);
        break;
      case 0x7d: // EMPTY_DICT
        stack.push(newDict());
        break;
      case 0x29: // EMPTY_TUPLE
        stack.push([]);
        break;
      case 0x8f: // EMPTY_SET
        stack.push([]);
        break;
      case 0x61: { // APPEND
        const v = pop();
        list(top()).push(v);
        break;
      }
      case 0x65: // APPENDS
      case 0x90: { // ADDITEMS (sets are lists here)
        const items = popMark();
        // One push per item: push(...items) overflows the call stack beyond ~120k items.
        const target = list(top());
        for (const item of items) target.push(item);
        break;
      }
      case 0x73: { // SETITEM
        const v = pop(), k = pop();
        setItem(top(), k, v, where);
        break;
      }
      case 0x75: { // SETITEMS
        const items = popMark();
        if (items.length % 2) throw new DataError(`${where}: SETITEMS with an odd item count`);
        const d = top();
        for (let i = 0; i < items.length; i += 2) setItem(d, items[i], items[i + 1], where);
        break;
      }
      case 0x6c: // LIST
      case 0x74: // TUPLE
      case 0x91: // FROZENSET
        stack.push(popMark());
        break;
      case 0x64: { // DICT
        const items = popMark();
        const d = newDict();
        for (let i = 0; i + 1 < items.length; i += 2) setItem(d, items[i], items[i + 1], where);
        stack.push(d);
        break;
      }
      case 0x85: // TUPLE1
        stack.push([pop()]);
        break;
      case 0x86: { // TUPLE2
        const b = pop(), a = pop();
        stack.push([a, b]);
        break;
      }
      case 0x87: { // TUPLE3
        const c = pop(), b = pop(), a = pop();
        stack.push([a, b, c]);
        break;
      }
      case 0x4a: // BININT
        need(4);
        stack.push(view.getInt32(pos, true));
        pos += 4;
        break;
      case 0x4b: // BININT1
        stack.push(u8());
        break;
      case 0x4d: // BININT2
        stack.push(u16());
        break;
      case 0x8a: // LONG1
        stack.push(long(u8()));
        break;
      case 0x8b: { // LONG4
        const n = u32();
        stack.push(long(n));
        break;
      }
      case 0x49: // INT (text)
      case 0x4c: // LONG (text)
        stack.push(decimal(line()));
        break;
      case 0x47: // BINFLOAT (big-endian)
        need(8);
        stack.push(view.getFloat64(pos, false));
        pos += 8;
        break;
      case 0x46: // FLOAT (text)
        stack.push(float(line()));
        break;
      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x88: // NEWTRUE
        stack.push(true);
        break;
      case 0x89: // NEWFALSE
        stack.push(false);
        break;
      case 0x58: // BINUNICODE
        stack.push(text(u32()));
        break;
      case 0x8c: // SHORT_BINUNICODE
        stack.push(text(u8()));
        break;
      case 0x8d: // BINUNICODE8
        stack.push(text(u64()));
        break;
      case 0x54: // BINSTRING (Python 2 str: bytes, read as latin-1)
      case 0x55: { // SHORT_BINSTRING
        const n = op === 0x54 ? u32() : u8();
        stack.push(new TextDecoder("latin1").decode(take(n)));
        break;
      }
      case 0x42: // BINBYTES
        stack.push(take(u32()).slice());
        break;
      case 0x43: // SHORT_BINBYTES
        stack.push(take(u8()).slice());
        break;
      case 0x8e: // BINBYTES8
      case 0x96: // BYTEARRAY8
        stack.push(take(u64()).slice());
        break;
      case 0x71: // BINPUT
        memo.set(u8(), top());
        break;
      case 0x72: // LONG_BINPUT
        memo.set(u32(), top());
        break;
      case 0x70: // PUT (text)
        memo.set(memoKey(line()), top());
        break;
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x68: // BINGET
      case 0x6a: // LONG_BINGET
      case 0x67: { // GET (text)
        const k = op === 0x68 ? u8() : op === 0x6a ? u32() : memoKey(line());
        if (!memo.has(k)) throw new DataError(`${where}: memo key ${k} was never stored`);
        stack.push(memo.get(k));
        break;
      }
      case 0x30: // POP
        if (stack.pop() === undefined) throw new DataError(`${where}: POP on an empty stack`);
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        stack.push(top());
        break;
      default: {
        const name = CODE_OPCODES[op];
        if (name) {
          throw new DataError(
            `${where}: the pickle uses ${name} (offset ${
              pos - 1
            }), which imports or calls Python ` +
              "code; only plain data is read (lists, dicts, str, int, bytes, tuples). Save the " +
              "dataset as plain Python lists/dicts (e.g. convert numpy arrays with .tolist()), " +
              "or as JSONL, Parquet or .npy",
          );
        }
        throw new DataError(
          `${where}: unsupported pickle opcode 0x${op.toString(16).padStart(2, "0")} at offset ${
            pos - 1
          }`,
        );
      }
    }
  }
}

/** Reads and parses a .pkl file (see {@link parsePickle}). */
export async function readPickleFile(path: string): Promise<unknown> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    throw new DataError(`${path}: cannot read (${(e as Error).message})`);
  }
  return parsePickle(bytes, path);
}

/** What a .pkl dataset holds: documents (texts and conversations) or pre-tokenised id lists. */
export type PickleRecords =
  | { kind: "documents"; documents: DataDocument[] }
  | { kind: "tokens"; lists: Int32Array[] };

function tokenList(v: unknown[], where: string): Int32Array {
  const out = new Int32Array(v.length);
  for (let i = 0; i < v.length; i++) {
    const x = v[i];
    if (typeof x !== "number" || !Number.isInteger(x) || x < 0 || x > 0x7fffffff) {
      throw new DataError(`${where}: item ${i} is ${String(x)}, not a token id (an int >= 0)`);
    }
    out[i] = x;
  }
  return out;
}

/**
 * The records of an unpickled dataset: a list (or tuple) whose elements are all texts (str),
 * records (dicts read like JSON Lines records, e.g. FastChat's {"conversations": [{"from",
 * "value"}, ...]}), bare lists of chat turns, or all lists of token ids.
 * @param where prefix of error messages, e.g. the file name
 */
export function pickleRecords(
  value: unknown,
  textField: string = DEFAULT_TEXT_FIELD,
  where = "pickle",
): PickleRecords {
  if (!Array.isArray(value)) {
    throw new DataError(
      `${where}: expected a list of texts, of records (dicts) or of token-id lists, got ${
        value === null ? "None" : typeof value === "object" ? "a dict" : typeof value
      }`,
    );
  }
  const isTokens = (v: unknown) =>
    Array.isArray(v) && v.length > 0 && v.every((x) => typeof x === "number");
  if (value.length > 0 && isTokens(value[0])) {
    return {
      kind: "tokens",
      lists: value.map((v, i) => {
        if (!Array.isArray(v)) {
          throw new DataError(`${where}: element ${i} is not a token-id list like element 0`);
        }
        return tokenList(v, `${where}: element ${i}`);
      }),
    };
  }
  const documents = value.map((v, i) => {
    const at = `${where}: element ${i}`;
    if (typeof v === "string") return v;
    // A bare list of turns reads as a record's conversation (trained on the assistant's turns).
    if (Array.isArray(v)) return recordDocument({ conversations: v }, "conversations", at);
    return recordDocument(v, textField, at);
  });
  return { kind: "documents", documents };
}

/** Documents of a .pkl file of texts or records (see {@link pickleRecords}). */
export async function* readPickle(
  path: string,
  options: ReadOptions = {},
): AsyncGenerator<DataDocument> {
  const records = pickleRecords(await readPickleFile(path), options.textField, path);
  if (records.kind === "tokens") {
    throw new DataError(`${path}: holds token-id lists, not documents; open it with openDataset`);
  }
  yield* records.documents;
  const size = (await Deno.stat(path)).size;
  options.onProgress?.(size, size);
}
