// Properties of the pickle reader (src/data/pickle.ts) over generated inputs. Nested values (None,
// bool, int of any size, float, str, bytes, bytearray, list, tuple, dict, set, frozenset) are
// pickled by a minimal writer written here from pickletools' opcode table, choosing at random among
// every encoding the reader supports (each int opcode, text and binary forms, short and 8-byte
// lengths, APPEND vs APPENDS batches vs LIST, memo PUT/GET/MEMOIZE, FRAME, and no-op noise such
// as DUP POP), and must read back equal. Every cut of a pickle, every byte replaced, every opcode
// that imports or calls code and every unknown opcode is refused with a DataError.

import { assert, assertEquals } from "./assert.ts";
import { fc, INVALID_UTF8, runs, unicodeText } from "./_properties.ts";
import { DataError } from "../src/data/readers.ts";
import { parsePickle } from "../src/data/pickle.ts";

// ---------------------------------------------------------------------------------------------
// Python values, as generated

type Py =
  | { k: "none" }
  | { k: "bool"; v: boolean }
  | { k: "int"; v: bigint }
  | { k: "float"; v: number }
  | { k: "str"; v: string }
  | { k: "bytes"; v: Uint8Array; bytearray: boolean }
  | { k: "list" | "tuple" | "set" | "frozenset"; items: Item[] }
  | { k: "dict"; entries: [Node, Node][] };

/** A node with its encoding choices: which opcode, whether memoised, what no-op noise around it. */
type Node = Py & { how: number; memo: number; noise: number };
/** A container item; `twice` writes it again as a memo GET right after. */
type Item = { node: Node; twice: boolean };

// ---------------------------------------------------------------------------------------------
// The minimal pickle writer (little-endian lengths, BINFLOAT big-endian, as pickletools says)

const OP = {
  MARK: 0x28,
  STOP: 0x2e,
  POP: 0x30,
  POP_MARK: 0x31,
  DUP: 0x32,
  FLOAT: 0x46,
  INT: 0x49,
  BININT: 0x4a,
  BININT1: 0x4b,
  LONG: 0x4c,
  BININT2: 0x4d,
  NONE: 0x4e,
  BINSTRING: 0x54,
  SHORT_BINSTRING: 0x55,
  BINUNICODE: 0x58,
  APPEND: 0x61,
  BINGET: 0x68,
  GET: 0x67,
  LONG_BINGET: 0x6a,
  LIST: 0x6c,
  PUT: 0x70,
  BINPUT: 0x71,
  LONG_BINPUT: 0x72,
  SETITEM: 0x73,
  TUPLE: 0x74,
  SETITEMS: 0x75,
  EMPTY_DICT: 0x7d,
  APPENDS: 0x65,
  DICT: 0x64,
  EMPTY_LIST: 0x5d,
  EMPTY_TUPLE: 0x29,
  BINFLOAT: 0x47,
  BINBYTES: 0x42,
  SHORT_BINBYTES: 0x43,
  PROTO: 0x80,
  TUPLE1: 0x85,
  TUPLE2: 0x86,
  TUPLE3: 0x87,
  NEWTRUE: 0x88,
  NEWFALSE: 0x89,
  LONG1: 0x8a,
  LONG4: 0x8b,
  SHORT_BINUNICODE: 0x8c,
  BINUNICODE8: 0x8d,
  BINBYTES8: 0x8e,
  EMPTY_SET: 0x8f,
  ADDITEMS: 0x90,
  FROZENSET: 0x91,
  MEMOIZE: 0x94,
  FRAME: 0x95,
  BYTEARRAY8: 0x96,
} as const;

/** Opcodes that import or call code, by name (pickletools). */
const CODE_OPS: Record<string, number> = {
  GLOBAL: 0x63,
  STACK_GLOBAL: 0x93,
  REDUCE: 0x52,
  BUILD: 0x62,
  INST: 0x69,
  OBJ: 0x6f,
  NEWOBJ: 0x81,
  NEWOBJ_EX: 0x92,
  EXT1: 0x82,
  EXT2: 0x83,
  EXT4: 0x84,
  PERSID: 0x50,
  BINPERSID: 0x51,
  NEXT_BUFFER: 0x97,
  READONLY_BUFFER: 0x98,
};

const le = (v: bigint, n: number) =>
  Array.from({ length: n }, (_, i) => Number((v >> BigInt(8 * i)) & 0xffn));
const utf8 = (s: string) => [...new TextEncoder().encode(s)];
const ascii = (s: string) => Array.from(s, (c) => c.charCodeAt(0));

/** Two's-complement little-endian bytes of v, minimal (none for 0), plus `pad` sign bytes. */
function longBytes(v: bigint, pad: number): number[] {
  const out: number[] = [];
  const done = (x: bigint) =>
    (x === 0n && out.at(-1)! < 0x80) || (x === -1n && out.at(-1)! >= 0x80);
  for (let x = v; v !== 0n;) {
    out.push(Number(x & 0xffn));
    x >>= 8n;
    if (done(x)) break;
  }
  for (let i = 0; i < pad; i++) out.push(v < 0n ? 0xff : 0);
  return out;
}

/** Python's repr of a float, as protocol 0's FLOAT writes it. */
function floatRepr(x: number): string {
  if (Number.isNaN(x)) return "nan";
  if (x === Infinity) return "inf";
  if (x === -Infinity) return "-inf";
  if (Object.is(x, -0)) return "-0.0";
  return String(x);
}

class Writer {
  readonly out: number[] = [];
  /** Offset of every opcode written. */
  readonly ops: number[] = [];
  #memo = 0;

  op(code: number, ...args: number[]): void {
    this.ops.push(this.out.length);
    this.out.push(code, ...args);
  }

  /** Stores the top of the stack in the next memo slot, by one of the four opcodes. */
  put(how: number): number {
    const i = this.#memo++;
    const kinds = [
      ...(i < 256 ? [() => this.op(OP.BINPUT, i)] : []),
      () => this.op(OP.LONG_BINPUT, ...le(BigInt(i), 4)),
      () => this.op(OP.PUT, ...ascii(`${i}\n`)),
      () => this.op(OP.MEMOIZE),
    ];
    kinds[how % kinds.length]();
    return i;
  }

  get(i: number, how: number): void {
    const kinds = [
      ...(i < 256 ? [() => this.op(OP.BINGET, i)] : []),
      () => this.op(OP.LONG_BINGET, ...le(BigInt(i), 4)),
      () => this.op(OP.GET, ...ascii(`${i}\n`)),
    ];
    kinds[how % kinds.length]();
  }

  /** Writes `n`; returns its memo slot when it was memoised. */
  value(n: Node): number | undefined {
    if (n.noise === 1) {
      this.op(OP.BININT1, n.how & 0xff);
      this.op(OP.POP);
    }
    if (n.noise === 2) [OP.MARK, OP.NONE, OP.NEWTRUE, OP.POP_MARK].forEach((o) => this.op(o));
    let slot: number | undefined;
    const memo = () => (n.memo >= 4 ? (slot = this.put(n.memo)) : undefined);
    const h = n.how;
    switch (n.k) {
      case "none":
        this.op(OP.NONE);
        break;
      case "bool":
        if (h % 2) this.op(n.v ? OP.NEWTRUE : OP.NEWFALSE);
        else this.op(OP.INT, ...ascii(n.v ? "01\n" : "00\n")); // protocol 0's bools
        break;
      case "int":
        this.int(n.v, h);
        break;
      case "float": {
        if (h % 2) {
          const b = new Uint8Array(8);
          new DataView(b.buffer).setFloat64(0, n.v, false);
          this.op(OP.BINFLOAT, ...b);
        } else this.op(OP.FLOAT, ...ascii(`${floatRepr(n.v)}\n`));
        break;
      }
      case "str":
        this.str(n.v, h);
        break;
      case "bytes": {
        const b = [...n.v];
        const len = BigInt(b.length);
        if (n.bytearray) this.op(OP.BYTEARRAY8, ...le(len, 8), ...b);
        else if (h % 3 === 0 && b.length < 256) this.op(OP.SHORT_BINBYTES, b.length, ...b);
        else if (h % 3 === 1) this.op(OP.BINBYTES, ...le(len, 4), ...b);
        else this.op(OP.BINBYTES8, ...le(len, 8), ...b);
        break;
      }
      case "list":
      case "set":
        if (n.k === "list" && h % 3 === 0) {
          this.op(OP.MARK);
          this.items(n.items);
          this.op(OP.LIST);
          break;
        }
        this.op(n.k === "list" ? OP.EMPTY_LIST : OP.EMPTY_SET);
        memo();
        this.batches(n.items, h, n.k === "list" ? OP.APPENDS : OP.ADDITEMS, OP.APPEND);
        return slot;
      case "frozenset":
        this.op(OP.MARK);
        this.items(n.items);
        this.op(OP.FROZENSET);
        break;
      case "tuple": {
        const len = n.items.length + n.items.filter((i) => i.twice).length;
        if (len === 0 && h % 2) this.op(OP.EMPTY_TUPLE);
        else if (len >= 1 && len <= 3 && h % 2) {
          this.items(n.items);
          this.op([OP.TUPLE1, OP.TUPLE2, OP.TUPLE3][len - 1]);
        } else {
          this.op(OP.MARK);
          this.items(n.items);
          this.op(OP.TUPLE);
        }
        break;
      }
      case "dict":
        if (h % 3 === 0) {
          this.op(OP.MARK);
          for (const [k, v] of n.entries) [k, v].forEach((x) => this.value(x));
          this.op(OP.DICT);
          break;
        }
        this.op(OP.EMPTY_DICT);
        memo();
        if (h % 3 === 1) {
          for (const [k, v] of n.entries) {
            this.value(k);
            this.value(v);
            this.op(OP.SETITEM);
          }
        } else {
          this.op(OP.MARK);
          for (const [k, v] of n.entries) [k, v].forEach((x) => this.value(x));
          this.op(OP.SETITEMS);
        }
        return slot;
    }
    memo();
    if (n.noise === 3) [OP.DUP, OP.POP].forEach((o) => this.op(o));
    return slot;
  }

  /** Items on the stack in order, each `twice` one again through the memo. */
  items(items: Item[]): void {
    for (const { node, twice } of items) {
      const slot = this.value(node) ?? (twice ? this.put(node.how) : undefined);
      if (twice) this.get(slot!, node.how >> 2);
    }
  }

  /** Appends to the list or set on the stack: one APPEND each, or MARK ... APPENDS batches. */
  batches(items: Item[], how: number, many: number, one: number): void {
    if (many === OP.APPENDS && how % 2) {
      for (const { node, twice } of items) {
        const slot = this.value(node) ?? (twice ? this.put(node.how) : undefined);
        this.op(one);
        if (twice) {
          this.get(slot!, node.how >> 2);
          this.op(one);
        }
      }
      return;
    }
    const size = 1 + (how % 4); // batches of 1 to 4 items (and an empty one first when how % 8 > 3)
    if (how % 8 > 3) this.op(OP.MARK), this.op(many);
    for (let i = 0; i < items.length; i += size) {
      this.op(OP.MARK);
      this.items(items.slice(i, i + size));
      this.op(many);
    }
  }

  int(v: bigint, h: number): void {
    const kinds: (() => void)[] = [
      () => this.op(OP.LONG1, ...((b) => [b.length, ...b])(longBytes(v, h % 2))),
      () => this.op(OP.LONG4, ...((b) => [...le(BigInt(b.length), 4), ...b])(longBytes(v, h % 3))),
      () => this.op(OP.INT, ...ascii(`${v}\n`)),
      () => this.op(OP.LONG, ...ascii(`${v}L\n`)),
    ];
    if (v >= 0n && v < 256n) kinds.push(() => this.op(OP.BININT1, Number(v)));
    if (v >= 0n && v < 65536n) kinds.push(() => this.op(OP.BININT2, ...le(v, 2)));
    if (v >= -(2n ** 31n) && v < 2n ** 31n) kinds.push(() => this.op(OP.BININT, ...le(v, 4)));
    if (longBytes(v, 0).length > 255) kinds.shift(); // LONG1 holds at most 255 bytes
    kinds[h % kinds.length]();
  }

  str(s: string, h: number): void {
    const b = utf8(s);
    const len = BigInt(b.length);
    const latin1 = [...s].every((c) => c.codePointAt(0)! < 256);
    const kinds: (() => void)[] = [
      () => this.op(OP.BINUNICODE, ...le(len, 4), ...b),
      () => this.op(OP.BINUNICODE8, ...le(len, 8), ...b),
    ];
    if (b.length < 256) kinds.push(() => this.op(OP.SHORT_BINUNICODE, b.length, ...b));
    if (latin1) {
      const l = Array.from(s, (c) => c.charCodeAt(0));
      kinds.push(() => this.op(OP.BINSTRING, ...le(BigInt(l.length), 4), ...l));
      if (l.length < 256) kinds.push(() => this.op(OP.SHORT_BINSTRING, l.length, ...l));
    }
    kinds[h % kinds.length]();
  }
}

/** A whole pickle: PROTO, maybe a FRAME, the value, STOP. */
function pickle(root: Node, proto: number, frame: boolean): { bytes: Uint8Array; ops: number[] } {
  const body = new Writer();
  body.value(root);
  body.op(OP.STOP);
  const head = new Writer();
  head.op(OP.PROTO, proto);
  if (frame) head.op(OP.FRAME, ...le(BigInt(body.out.length), 8));
  const ops = [...head.ops, ...body.ops.map((o) => o + head.out.length)];
  return { bytes: Uint8Array.from([...head.out, ...body.out]), ops };
}

// ---------------------------------------------------------------------------------------------
// What the reader promises each value reads as

function expected(n: Py): unknown {
  switch (n.k) {
    case "none":
      return null;
    case "bool":
    case "float":
    case "str":
      return n.v;
    case "int":
      return n.v >= BigInt(Number.MIN_SAFE_INTEGER) && n.v <= BigInt(Number.MAX_SAFE_INTEGER)
        ? Number(n.v)
        : n.v;
    case "bytes":
      return n.v;
    case "list":
    case "tuple":
    case "set":
    case "frozenset":
      return n.items.flatMap(({ node, twice }) =>
        twice ? [expected(node), expected(node)] : [expected(node)]
      );
    case "dict": {
      // A dict with no prototype; int keys as decimal text; a later equal key replaces the value.
      const d = Object.create(null);
      for (const [k, v] of n.entries) {
        const key = String((k as { v: unknown }).v);
        Object.defineProperty(d, key, {
          value: expected(v),
          enumerable: true,
          writable: true,
          configurable: true,
        });
      }
      return d;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Generators

const bigIntAcross = fc.oneof(
  fc.constantFrom(
    ...[0n, 1n, 127n, 128n, 255n, 256n, 32767n, 32768n, 65535n, 65536n, 2n ** 31n, 2n ** 32n]
      .flatMap((b) => [b - 1n, b, -b, -b - 1n]),
    2n ** 53n - 1n,
    2n ** 53n,
    -(2n ** 53n) + 1n,
    -(2n ** 53n),
    2n ** 63n,
    -(2n ** 63n),
  ),
  fc.integer().map(BigInt),
  fc.bigInt({ min: -(2n ** 80n), max: 2n ** 80n }),
  fc.bigInt({ min: -(2n ** 2100n), max: 2n ** 2100n }), // more than LONG1's 255 bytes
);

const choices = { how: fc.nat(1 << 20), memo: fc.nat(7), noise: fc.nat(6) };
const node = <T extends Py>(py: fc.Arbitrary<T>) =>
  fc.record({ py, ...choices }).map(({ py, how, memo, noise }) => ({ ...py, how, memo, noise }));

const leaves = {
  none: node(fc.constant({ k: "none" as const })),
  bool: node(fc.boolean().map((v) => ({ k: "bool" as const, v }))),
  int: node(bigIntAcross.map((v) => ({ k: "int" as const, v }))),
  float: node(
    fc.oneof(fc.double(), fc.constantFrom(NaN, Infinity, -Infinity, -0, 5e-324, 1e21, 1e-7))
      .map((v) => ({ k: "float" as const, v })),
  ),
  str: node(
    fc.oneof(unicodeText(40), fc.string({ unit: "binary-ascii", maxLength: 40 })).map((v) => ({
      k: "str" as const,
      v,
    })),
  ),
  bytes: node(
    fc.record({ v: fc.uint8Array({ maxLength: 40 }), bytearray: fc.boolean() }).map((b) => ({
      k: "bytes" as const,
      ...b,
    })),
  ),
};

const { tree } = fc.letrec<{ tree: Node; item: Item }>((tie) => ({
  tree: fc.oneof(
    { maxDepth: 4, depthIdentifier: "pickle" },
    fc.oneof(...Object.values(leaves)),
    node(
      fc.record({
        k: fc.constantFrom("list" as const, "tuple" as const, "set" as const, "frozenset" as const),
        items: fc.array(tie("item"), { maxLength: 6 }),
      }),
    ),
    node(
      fc.record({
        k: fc.constant("dict" as const),
        entries: fc.array(fc.tuple(fc.oneof(leaves.str, leaves.int), tie("tree")), {
          maxLength: 6,
        }),
      }),
    ),
  ) as fc.Arbitrary<Node>,
  item: fc.record({ node: tie("tree"), twice: fc.boolean() }) as fc.Arbitrary<Item>,
}));

const pickled = fc.record({
  root: tree,
  proto: fc.integer({ min: 2, max: 5 }),
  frame: fc.boolean(),
})
  .map(({ root, proto, frame }) => ({ root, ...pickle(root, proto, frame && proto >= 4) }));

/** Runs the reader; anything thrown must be a DataError. */
function read(bytes: Uint8Array): { value?: unknown; error?: DataError } {
  try {
    return { value: parsePickle(bytes) };
  } catch (e) {
    if (!(e instanceof DataError)) throw new Error(`not a DataError: ${String(e)}`);
    return { error: e };
  }
}

// ---------------------------------------------------------------------------------------------
// Properties

Deno.test("pickle properties: generated values read back equal, through every encoding", () => {
  fc.assert(
    fc.property(pickled, ({ root, bytes }) => {
      assertEquals(parsePickle(bytes), expected(root));
    }),
    runs(1000),
  );
});

Deno.test("pickle properties: every cut of a pickle is refused with a DataError", () => {
  fc.assert(
    fc.property(pickled, ({ bytes }) => {
      for (let cut = 0; cut < bytes.length; cut++) {
        const { error } = read(bytes.subarray(0, cut));
        assert(error, `a pickle cut at ${cut} of ${bytes.length} bytes was read`);
      }
    }),
    runs(40),
  );
});

Deno.test("pickle properties: a replaced byte gives a DataError or a value, never another error", () => {
  fc.assert(
    fc.property(pickled, fc.nat(), fc.integer({ min: 1, max: 255 }), ({ bytes }, at, xor) => {
      const bad = bytes.slice();
      bad[at % bad.length] ^= xor;
      read(bad);
    }),
    runs(500),
  );
});

Deno.test("pickle properties: an opcode that imports or calls code is refused wherever it is", () => {
  fc.assert(
    fc.property(
      pickled,
      fc.nat(),
      fc.constantFrom(...Object.keys(CODE_OPS)),
      ({ bytes, ops }, at, name) => {
        // GLOBAL's own arguments ("module\nname\n") follow it, as Python writes them.
        const insert = [CODE_OPS[name], ...(name === "GLOBAL" ? ascii("os\nsystem\n") : [])];
        const where = ops[at % ops.length];
        const bad = Uint8Array.from([
          ...bytes.subarray(0, where),
          ...insert,
          ...bytes.subarray(where),
        ]);
        const { error } = read(bad);
        assert(error, `${name} at ${where} was read`);
        assert(error.message.includes(`uses ${name} `), error.message);
      },
    ),
    runs(300),
  );
});

/** Every opcode the reader understands (pickletools' data opcodes of protocols 0 to 5). */
const SUPPORTED = new Set<number>(Object.values(OP));

Deno.test("pickle properties: every byte that is no supported opcode is refused at any opcode", () => {
  const unsupported = Array.from({ length: 256 }, (_, b) => b).filter((b) => !SUPPORTED.has(b));
  fc.assert(
    fc.property(pickled, fc.nat(), fc.constantFrom(...unsupported), ({ bytes, ops }, at, op) => {
      const where = ops[at % ops.length];
      const bad = Uint8Array.from([...bytes.subarray(0, where), op, ...bytes.subarray(where)]);
      const { error } = read(bad);
      assert(error, `opcode 0x${op.toString(16)} at ${where} was read`);
      const name = Object.entries(CODE_OPS).find(([, c]) => c === op)?.[0];
      const want = name
        ? `uses ${name} `
        : `unsupported pickle opcode 0x${op.toString(16).padStart(2, "0")}`;
      assert(error.message.includes(want), error.message);
    }),
    runs(400),
  );
});

Deno.test("pickle properties: invalid UTF-8 in a str is refused", () => {
  fc.assert(
    fc.property(
      unicodeText(10),
      fc.constantFrom(...INVALID_UTF8),
      unicodeText(10),
      fc.constantFrom(OP.BINUNICODE, OP.SHORT_BINUNICODE, OP.BINUNICODE8),
      (before, invalid, after, op) => {
        const b = [...utf8(before), ...invalid, ...utf8(after)];
        const len = op === OP.SHORT_BINUNICODE
          ? [b.length]
          : le(BigInt(b.length), op === OP.BINUNICODE ? 4 : 8);
        const { error } = read(Uint8Array.from([OP.PROTO, 4, op, ...len, ...b, OP.STOP]));
        assert(error?.message.includes("invalid UTF-8"), error?.message);
      },
    ),
    runs(200),
  );
});

Deno.test("pickle properties: protocols above 5 are refused", () => {
  fc.assert(
    fc.property(fc.integer({ min: 6, max: 255 }), (proto) => {
      const { error } = read(Uint8Array.from([OP.PROTO, proto, OP.NONE, OP.STOP]));
      assert(error?.message.includes("protocol above 5"), error?.message);
    }),
    runs(50),
  );
});

Deno.test("pickle properties: one APPENDS (or ADDITEMS) of any length reads whole", () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 400_000 }), fc.boolean(), (n, set) => {
      const out = [OP.PROTO, 4, set ? OP.EMPTY_SET : OP.EMPTY_LIST, OP.MARK];
      for (let i = 0; i < n; i++) out.push(OP.BININT1, i & 0xff);
      out.push(set ? OP.ADDITEMS : OP.APPENDS, OP.STOP);
      const list = parsePickle(Uint8Array.from(out)) as number[];
      assertEquals(list.length, n);
      assert(list.every((x, i) => x === (i & 0xff)));
    }),
    runs(6),
  );
});

Deno.test("pickle properties: FLOAT text and memo keys that are no numbers are refused", () => {
  // Text Python's float() and int() refuse (or that Python never writes): no silent 0 or NaN.
  const notFloat = fc.oneof(
    fc.constantFrom("", "0x10", "1_0", "1e", "e5", ".", "--1", "infinite", "1.5.2", "NaNa"),
    fc.string({ unit: "binary-ascii", maxLength: 6 }).filter((s) =>
      !s.includes("\n") &&
      !/^\s*[-+]?(\d+\.?\d*(e[-+]?\d+)?|\.\d+(e[-+]?\d+)?|inf|infinity|nan)\s*$/i.test(s)
    ),
  );
  fc.assert(
    fc.property(notFloat, (s) => {
      const { error } = read(Uint8Array.from([OP.PROTO, 2, OP.FLOAT, ...ascii(`${s}\n`), OP.STOP]));
      assert(error?.message.includes("bad float"), `FLOAT ${JSON.stringify(s)}: ${error?.message}`);
    }),
    runs(200),
  );
  const notKey = fc.string({ unit: "binary-ascii", maxLength: 4 }).filter((s) =>
    !s.includes("\n") && !/^\d+$/.test(s)
  );
  fc.assert(
    fc.property(notKey, fc.boolean(), (s, get) => {
      const head = [OP.PROTO, 2, OP.NONE, OP.PUT, ...ascii("0\n")];
      const op = get ? [OP.GET, ...ascii(`${s}\n`), OP.POP] : [OP.PUT, ...ascii(`${s}\n`)];
      const { error } = read(Uint8Array.from([...head, ...op, OP.STOP]));
      assert(error?.message.includes("bad memo key"), `${JSON.stringify(s)}: ${error?.message}`);
    }),
    runs(200),
  );
});

Deno.test("pickle properties: a value or MARK left on the stack at STOP is refused", () => {
  fc.assert(
    fc.property(pickled, fc.constantFrom(OP.NONE, OP.MARK, OP.NEWTRUE), ({ bytes, ops }, extra) => {
      // Before the first opcode after PROTO (and FRAME), or just before STOP.
      for (
        const where of [
          ops.find((o) => bytes[o] !== OP.PROTO && bytes[o] !== OP.FRAME)!,
          bytes.length - 1,
        ]
      ) {
        const bad = Uint8Array.from([...bytes.subarray(0, where), extra, ...bytes.subarray(where)]);
        const { error } = read(bad);
        assert(error, `0x${extra.toString(16)} left at ${where} was read`);
      }
    }),
    runs(200),
  );
});
