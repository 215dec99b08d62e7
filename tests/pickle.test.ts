// The pickle reader (src/data/pickle.ts) against Python's own pickle.load: fixtures and the
// values Python read back from tests/reference/make_pickle_fixture.py. Also: pickles that would
// import or call code are refused, and a .pkl dataset packs to exactly the tokens of the same
// records written as JSON Lines (the same reader path).

import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { join } from "node:path";
import { ByteTokenizer, DataError, type Dataset, openDataset } from "../src/data/mod.ts";
import { parsePickle, pickleRecords, readPickleFile } from "../src/data/pickle.ts";

const DIR = new URL("./fixtures/pickle/", import.meta.url).pathname;
const expected = JSON.parse(await Deno.readTextFile(join(DIR, "expected.json"))) as Record<
  string,
  unknown
>;

function throwsWith(fn: () => unknown, text: string): void {
  const e = assertThrows(fn, DataError);
  assert(e.message.includes(text), `expected "${text}" in: ${e.message}`);
}

async function rejectsWith(fn: () => Promise<unknown>, text: string): Promise<void> {
  const e = await assertRejects(fn, DataError);
  assert(e.message.includes(text), `expected "${text}" in: ${e.message}`);
}

/** The JSON form the reference script writes (see its docstring). */
function toJson(v: unknown): unknown {
  if (v instanceof Uint8Array) {
    return { bytes: Array.from(v, (b) => b.toString(16).padStart(2, "0")).join("") };
  }
  if (typeof v === "bigint") return { int: v.toString() };
  if (Array.isArray(v)) return v.map(toJson);
  if (v !== null && typeof v === "object") {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, toJson(x)]));
  }
  return v;
}

/** Sets come out as lists in insertion order; Python's JSON form sorts them. */
function sortSets(name: string, v: unknown): unknown {
  if (name !== "mixed.p5.pkl") return v;
  const list = v as unknown[];
  return list.map((x, i) => (i === 19 || i === 20 ? [...(x as string[])].sort() : x));
}

for (const name of ["texts.p2.pkl", "chat.p4.pkl", "tokens.p3.pkl", "mixed.p5.pkl"]) {
  Deno.test(`pickle: ${name} reads as Python reads it`, async () => {
    const value = await readPickleFile(join(DIR, name));
    assertEquals(
      JSON.stringify(sortSets(name, toJson(value))),
      JSON.stringify(expected[name]),
    );
  });
}

Deno.test("pickle: -0.0 keeps its sign, a memoised list stays one object", async () => {
  const mixed = await readPickleFile(join(DIR, "mixed.p5.pkl")) as unknown[];
  assert(Object.is(mixed[8], -0), "-0.0 keeps its sign");
  const dict = mixed[21] as Record<string, unknown[][]>;
  // The same list pickled twice comes back as one object (through the memo), as in Python.
  assert(dict.k[0] === dict.k[1], "a memoised list is one object");
  assertEquals(Object.getPrototypeOf(dict), null);
});

Deno.test("pickle: code is refused, never run", async () => {
  await rejectsWith(() => readPickleFile(join(DIR, "evil.pkl")), "imports or calls Python code");
  await rejectsWith(() => readPickleFile(join(DIR, "numpy.pkl")), "uses GLOBAL");
  // Each refused opcode by itself, after a protocol header.
  for (const [op, name] of [[0x52, "REDUCE"], [0x62, "BUILD"], [0x81, "NEWOBJ"], [0x93, "STACK"]]) {
    throwsWith(
      () => parsePickle(new Uint8Array([0x80, 4, 0x4e, op as number]), "x.pkl"),
      `uses ${name}`,
    );
  }
});

Deno.test("pickle: malformed input says where", () => {
  // A BINUNICODE of 10 bytes with 3 present.
  throwsWith(
    () => parsePickle(new Uint8Array([0x80, 2, 0x58, 10, 0, 0, 0, 0x61, 0x62, 0x63]), "t.pkl"),
    "t.pkl: truncated pickle",
  );
  throwsWith(() => parsePickle(new Uint8Array([0x80, 2, 0x68, 5, 0x2e])), "memo key 5");
  throwsWith(() => parsePickle(new Uint8Array([0x80, 2, 0x4e, 0x4e, 0x61, 0x2e])), "not a list");
  throwsWith(() => pickleRecords({ text: "x" }, "text", "d.pkl"), "d.pkl: expected a");
  throwsWith(() => pickleRecords([[1, 2], [3, -1]], "text", "d.pkl"), "element 1: item 1 is -1");
});

function tokens(ds: Dataset): number[] {
  const out: number[] = [];
  for (let i = 0; i < ds.numWindows; i++) out.push(...ds.window(i).inputs);
  return out;
}

Deno.test("pickle: a .pkl dataset packs like the same records in JSON Lines", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const tokenizer = new ByteTokenizer();
    for (const name of ["train_chat.pkl", "texts.p2.pkl"]) {
      const records = (expected[name] as unknown[]).map((r) =>
        typeof r === "string" ? { text: r } : r
      );
      const jsonl = join(tmp, name + ".jsonl");
      await Deno.writeTextFile(jsonl, records.map((r) => JSON.stringify(r)).join("\n"));
      const a = await openDataset({ dataPath: join(DIR, name), tokenizer, seqLen: 16 });
      const b = await openDataset({ dataPath: jsonl, tokenizer, seqLen: 16 });
      assert(a.numWindows > 2, `${name}: ${a.numWindows} windows`);
      assertEquals(a.numWindows, b.numWindows);
      assertEquals(tokens(a), tokens(b), name);
      assertEquals(a.stats.documents, b.stats.documents);
    }
    // Token-id lists go in as they are, concatenated (as .npy files are).
    const ds = await openDataset({ dataPath: join(DIR, "tokens.p3.pkl"), seqLen: 7 });
    const flat = (expected["tokens.p3.pkl"] as number[][]).flat();
    const got = tokens(ds);
    for (let w = 0; w < ds.numWindows; w++) {
      assertEquals(got.slice(w * 7, w * 7 + 7), flat.slice(w * 8, w * 8 + 7), `window ${w}`);
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
