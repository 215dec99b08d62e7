// Tests of the training-data pipeline (src/data): tokenizers against the Rust `tokenizers`
// library (fixtures from tests/reference/make_tokenizer_fixture.py), the JSONL / JSON / chat /
// Parquet / .npy readers, the packing contract, shuffling, data-parallel sharding and errors.

import assert from "node:assert/strict";
import { join } from "node:path";
import { writeNpy } from "../src/io/npy.ts";
import {
  BYTE_TOKENIZER_VOCAB,
  ByteTokenizer,
  conversationText,
  type DataDocument,
  type Dataset,
  HfTokenizer,
  listDataFiles,
  loadTokenizer,
  openDataset,
  packDocuments,
  permutation,
  readJson,
  readJsonl,
  readParquet,
  recordText,
  renderConversation,
  SequencePacker,
  shardIndices,
  SyntheticDataset,
  TokenDataset,
  type Tokenizer,
} from "../src/data/mod.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const TOK_DIR = join(ROOT, "tests/fixtures/tokenizer");
const DATA_DIR = join(ROOT, "tests/fixtures/data");
const CORPUS = join(ROOT, "examples/corpus/tiny.jsonl");

interface Case {
  text: string;
  ids: number[];
  ids_with_special_tokens: number[];
  decoded: string;
}

async function expectedCases(dir: string): Promise<Case[]> {
  return JSON.parse(await Deno.readTextFile(join(dir, "expected.json"))).cases;
}

/** The documents of a reader, conversations rendered as text. */
async function collect(gen: AsyncIterable<DataDocument>): Promise<string[]> {
  const out: string[] = [];
  for await (const x of gen) out.push(typeof x === "string" ? x : conversationText(x));
  return out;
}

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "distflash-data-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function rejectsWith(p: Promise<unknown>, pattern: RegExp): Promise<void> {
  await assert.rejects(p, (e: Error) => {
    assert.match(e.message, pattern);
    return true;
  });
}

function range(a: number, b: number): number[] {
  return Array.from({ length: b - a }, (_, i) => a + i);
}

// ---------------------------------------------------------------------------------------------
// Tokenizers

Deno.test("tokenizer: Llama-2 style BPE with byte fallback matches the Rust tokenizers ids", async () => {
  const tok = await loadTokenizer(TOK_DIR);
  assert.equal(tok.vocabSize, 256);
  assert.equal(tok.bosId, 1);
  assert.equal(tok.eosId, 2);
  assert.equal(tok.padId, null);
  assert.equal(tok.addBos, true);
  const cases = await expectedCases(TOK_DIR);
  assert.ok(cases.length >= 10);
  for (const c of cases) {
    assert.deepEqual(tok.encode(c.text), c.ids, `encode ${JSON.stringify(c.text)}`);
    assert.equal(tok.decode(c.ids), c.decoded, `decode ${JSON.stringify(c.text)}`);
  }
  // The byte-fallback and unknown-token paths are exercised by the fixture.
  const cafe = cases.find((c) => c.text.startsWith("Café"))!;
  assert.ok(cafe.ids.some((id) => id >= 3 && id < 20), "byte tokens used");
  assert.ok(cases.find((c) => c.text.startsWith("中文"))!.ids.includes(0), "<unk> used");
});

Deno.test("tokenizer: Llama-3 style byte-level BPE matches the Rust tokenizers ids", async () => {
  const dir = join(TOK_DIR, "bytelevel");
  const tok = await loadTokenizer(dir);
  assert.equal(tok.vocabSize, 302);
  assert.equal(tok.bosId, 300);
  assert.equal(tok.eosId, 301); // tokenizer_config.json's eos_token, not config.json's list
  for (const c of await expectedCases(dir)) {
    assert.deepEqual(tok.encode(c.text), c.ids, `encode ${JSON.stringify(c.text)}`);
    assert.equal(tok.decode(c.ids), c.decoded);
  }
});

Deno.test("tokenizer: loadTokenizer accepts the tokenizer.json path itself", async () => {
  const tok = await loadTokenizer(join(TOK_DIR, "tokenizer.json"));
  assert.equal(tok.bosId, 1);
  assert.deepEqual(tok.encode("Hello world"), (await expectedCases(TOK_DIR))[0].ids);
});

Deno.test("tokenizer: special ids from config.json, add_bos_token, and missing files", async () => {
  await withTempDir(async (dir) => {
    const tj = JSON.parse(await Deno.readTextFile(join(TOK_DIR, "bytelevel/tokenizer.json")));
    await Deno.writeTextFile(join(dir, "tokenizer.json"), JSON.stringify(tj));
    // No tokenizer_config.json: ids from config.json (a list: the first one is taken).
    await Deno.writeTextFile(
      join(dir, "config.json"),
      JSON.stringify({ bos_token_id: 300, eos_token_id: [301, 300] }),
    );
    let tok = await loadTokenizer(dir);
    assert.equal(tok.bosId, 300);
    assert.equal(tok.eosId, 301);
    assert.equal(tok.addBos, true);
    await Deno.writeTextFile(join(dir, "tokenizer_config.json"), '{"add_bos_token": false}');
    tok = await loadTokenizer(dir);
    assert.equal(tok.addBos, false);
    // Nothing but the tokenizer: the usual spellings are found.
    tok = new HfTokenizer(tj);
    assert.equal(tok.bosId, 300);
    assert.equal(tok.eosId, 301);
  });
  await withTempDir(async (dir) => {
    await rejectsWith(loadTokenizer(dir), /no tokenizer\.json/);
    await Deno.writeTextFile(join(dir, "tokenizer.model"), "");
    await rejectsWith(loadTokenizer(dir), /SentencePiece tokenizer\.model/);
    await rejectsWith(loadTokenizer(join(dir, "nope")), /no such model folder/);
    await Deno.writeTextFile(join(dir, "tokenizer.json"), "{not json");
    await rejectsWith(loadTokenizer(dir), /tokenizer\.json: invalid JSON/);
  });
});

Deno.test("tokenizer: fractional or negative token ids are refused, naming the token", async () => {
  const tj = JSON.parse(await Deno.readTextFile(join(TOK_DIR, "bytelevel/tokenizer.json")));
  const vocab = tj.model.vocab as Record<string, number>;
  const [first] = Object.keys(vocab);
  const fractional = structuredClone(tj);
  fractional.model.vocab[first] = 1.5;
  assert.throws(
    () => new HfTokenizer(fractional),
    new RegExp(
      `token ${JSON.stringify(first).replace(/[\\^$.*+?()[\]{}|]/g, "\\$&")} has id 1\\.5`,
    ),
  );
  const negative = structuredClone(tj);
  negative.added_tokens[0].id = -1;
  assert.throws(() => new HfTokenizer(negative), /added token .* has id -1, not a non-negative/);
  new HfTokenizer(tj); // the untouched file loads
});

Deno.test("tokenizer: ByteTokenizer layout (0 BOS, 1 EOS, 2 PAD, 3 + byte)", () => {
  const tok = new ByteTokenizer();
  assert.equal(tok.vocabSize, BYTE_TOKENIZER_VOCAB);
  assert.equal(tok.vocabSize, 259);
  assert.deepEqual([tok.bosId, tok.eosId, tok.padId], [0, 1, 2]);
  assert.deepEqual(tok.encode("A\u00e9"), [0x41 + 3, 0xc3 + 3, 0xa9 + 3]);
  assert.deepEqual(tok.encode(""), []);
  const text = "Hello, world! 😀 straße\n";
  const ids = tok.encode(text);
  assert.ok(ids.every((i) => i >= 3 && i < 259));
  assert.equal(tok.decode(ids), text);
  assert.equal(tok.decode([0, ...ids, 1, 2]), text); // specials are skipped
});

// ---------------------------------------------------------------------------------------------
// Readers

Deno.test("readers: JSONL with blank lines, CRLF, BOM, unicode and a custom field", async () => {
  await withTempDir(async (dir) => {
    const p = join(dir, "a.jsonl");
    await Deno.writeTextFile(
      p,
      '\uFEFF{"text": "first"}\r\n\n{"text": "second\\nline", "id": 2}\n  \n{"text": "Café 😀"}',
    );
    assert.deepEqual(await collect(readJsonl(p)), ["first", "second\nline", "Café 😀"]);
    const q = join(dir, "b.jsonl");
    await Deno.writeTextFile(q, '{"body": "x", "text": "ignored"}\n{"body": "y"}\n');
    assert.deepEqual(await collect(readJsonl(q, { textField: "body" })), ["x", "y"]);
  });
});

Deno.test("readers: JSONL lines longer than the read chunk", async () => {
  await withTempDir(async (dir) => {
    const p = join(dir, "long.jsonl");
    const big = "word ".repeat(2_000_000); // 10 MB, more than two 4 MiB chunks
    await Deno.writeTextFile(p, JSON.stringify({ text: big }) + "\n" + '{"text": "tail"}\n');
    const progress: number[][] = [];
    const docs = await collect(readJsonl(p, { onProgress: (d, t) => progress.push([d, t]) }));
    assert.equal(docs.length, 2);
    assert.equal(docs[0], big);
    assert.equal(docs[1], "tail");
    const size = (await Deno.stat(p)).size;
    assert.deepEqual(progress.at(-1), [size, size]);
    for (let i = 1; i < progress.length; i++) assert.ok(progress[i][0] >= progress[i - 1][0]);
  });
});

Deno.test("readers: JSONL errors name the file and line", async () => {
  await withTempDir(async (dir) => {
    const p = join(dir, "bad.jsonl");
    await Deno.writeTextFile(p, '{"text": "ok"}\n\n{"text": "broken"\n');
    await rejectsWith(collect(readJsonl(p)), /bad\.jsonl:3: invalid JSON/);
    await Deno.writeTextFile(p, '{"text": "ok"}\n{"txt": "typo", "id": 1}\n');
    await rejectsWith(
      collect(readJsonl(p)),
      /bad\.jsonl:2: missing field "text" \(nor conversations or messages\); the record has fields "txt", "id"/,
    );
    await Deno.writeTextFile(p, '{"text": 12}\n');
    await rejectsWith(collect(readJsonl(p)), /bad\.jsonl:1: field "text" is a number/);
    await Deno.writeTextFile(p, '["not", "an", "object"]\n');
    await rejectsWith(collect(readJsonl(p)), /bad\.jsonl:1: expected a JSON object, got a list/);
    await Deno.writeFile(p, new Uint8Array([0x7b, 0xff, 0x7d, 0x0a]));
    await rejectsWith(collect(readJsonl(p)), /bad\.jsonl:1: invalid UTF-8/);
    await rejectsWith(
      collect(readJsonl(join(dir, "missing.jsonl"))),
      /missing\.jsonl: cannot open/,
    );
  });
});

Deno.test("readers: JSON array, JSON lines in a .json file, and JSON errors", async () => {
  await withTempDir(async (dir) => {
    const p = join(dir, "a.json");
    await Deno.writeTextFile(p, ' [ {"text": "one"},\n {"text": "two"} ]\n');
    assert.deepEqual(await collect(readJson(p)), ["one", "two"]);
    await Deno.writeTextFile(p, '{"text": "one"}\n{"text": "two"}\n');
    assert.deepEqual(await collect(readJson(p)), ["one", "two"]);
    await Deno.writeTextFile(p, '[{"text": "one"}, {"name": "two"}]');
    await rejectsWith(collect(readJson(p)), /a\.json: element 1: missing field "text"/);
    await Deno.writeTextFile(p, '[{"text": "one"},\n {"text": "two",}]');
    await rejectsWith(collect(readJson(p)), /a\.json: invalid JSON .*line 2/);
  });
});

Deno.test("readers: chat conversations are rendered as USER/ASSISTANT turns", async () => {
  const turns = [
    { from: "system", value: "Be brief." },
    { from: "human", value: "Hi there" },
    { from: "gpt", value: "Hello!\nHow can I help?" },
    { role: "user", content: "Bye" },
    { role: "assistant", content: "Bye." },
    { from: "tool", value: "42" },
  ];
  const expected = "SYSTEM: Be brief.\nUSER: Hi there\nASSISTANT: Hello!\nHow can I help?\n" +
    "USER: Bye\nASSISTANT: Bye.\nTOOL: 42";
  assert.equal(renderConversation(turns), expected);
  assert.equal(recordText({ id: "x", conversations: turns }), expected);
  assert.equal(recordText({ messages: turns.slice(3, 5) }), "USER: Bye\nASSISTANT: Bye.");
  assert.equal(recordText({ chat: turns.slice(1, 2) }, "chat"), "USER: Hi there");
  assert.throws(
    () => recordText({ conversations: [{ from: "human" }] }, "text", "f.jsonl:7"),
    /f\.jsonl:7: "conversations": turn 0 has no "value" or "content" string/,
  );
  assert.throws(
    () => recordText({ conversations: ["hi"] }, "text", "f.jsonl:8"),
    /f\.jsonl:8: "conversations": turn 0 is a string/,
  );
  await withTempDir(async (dir) => {
    const p = join(dir, "chat.jsonl");
    await Deno.writeTextFile(
      p,
      JSON.stringify({ conversations: turns.slice(1, 3) }) + "\n" +
        JSON.stringify({ conversations: [{ from: "human", value: 3 }] }) + "\n",
    );
    await rejectsWith(collect(readJsonl(p)), /chat\.jsonl:2: "conversations": turn 0 has no/);
  });
});

const PARQUET_TEXTS = [
  "The cat meows.",
  "The dog barks at the red ball.",
  "Anna went to the park.",
  "Café über 5€",
  "Line one\nline two",
  "",
  "Let us count: one, two, three.",
  "Today is Monday. Tomorrow is Tuesday.",
  "The owl hoots in the tree.",
  "Zoe felt happy at the end of the day.",
];

Deno.test("readers: Parquet text column (snappy, several row groups; zstd)", async () => {
  const p = join(DATA_DIR, "text_snappy.parquet");
  const progress: number[] = [];
  assert.deepEqual(
    await collect(readParquet(p, { onProgress: (d) => progress.push(d) })),
    PARQUET_TEXTS,
  );
  assert.ok(progress.length >= 3);
  assert.equal(progress.at(-1), (await Deno.stat(p)).size);
  // The zstd file holds the same rows and then a null text in row 10.
  const docs: DataDocument[] = [];
  await rejectsWith(
    (async () => {
      for await (const d of readParquet(join(DATA_DIR, "text_zstd.parquet"))) docs.push(d);
    })(),
    /text_zstd\.parquet: row 10: column "text" is null/,
  );
  assert.deepEqual(docs, PARQUET_TEXTS);
  await rejectsWith(
    collect(readParquet(p, { textField: "content" })),
    /text_snappy\.parquet: no column "content"; columns are "id", "text"/,
  );
});

Deno.test("readers: Parquet chat column", async () => {
  assert.deepEqual(await collect(readParquet(join(DATA_DIR, "chat.parquet"))), [
    "USER: What does the cat say?\nASSISTANT: The cat meows.",
    "SYSTEM: Be brief.\nUSER: Count to three.\nASSISTANT: One, two, three.",
    "USER: Hi",
  ]);
  await withTempDir(async (dir) => {
    const p = join(dir, "fake.parquet");
    await Deno.writeTextFile(p, "this is not parquet");
    await rejectsWith(collect(readParquet(p)), /fake\.parquet: not a readable Parquet file/);
  });
});

// ---------------------------------------------------------------------------------------------
// Packing contract

Deno.test("packing: a .npy file of exactly L+1 tokens is exactly one window", async () => {
  await withTempDir(async (dir) => {
    const L = 8;
    const tokens = Uint16Array.from(range(0, L + 1), (i) => 100 + i * 7);
    const p = join(dir, "one.npy");
    await writeNpy(p, tokens);
    const ds = await openDataset({ dataPath: p, seqLen: L });
    assert.equal(ds.numWindows, 1);
    assert.equal(ds.stats.droppedTokens, 0);
    const w = ds.window(0);
    assert.deepEqual(Array.from(w.inputs), Array.from(tokens.subarray(0, L)));
    assert.deepEqual(Array.from(w.labels), Array.from(tokens.subarray(1)));
    // The first step's batch, whatever the seed or epoch, is that window.
    for (const seed of [0, 1, 1234]) {
      const idx = ds.indices({ epoch: 0, seed });
      assert.deepEqual(Array.from(idx), [0]);
      const b = ds.batch(idx);
      assert.deepEqual(Array.from(b.inputs), Array.from(w.inputs));
      assert.deepEqual(Array.from(b.labels), Array.from(w.labels));
    }
  });
});

Deno.test("packing: .npy dtypes, consecutive windows, trailing partial window dropped", async () => {
  await withTempDir(async (dir) => {
    const L = 5;
    const n = 4 * (L + 1) + 3;
    const values = range(0, n).map((i) => (i * 37 + 11) % 1000);
    const arrays = {
      u2: Uint16Array.from(values),
      i4: Int32Array.from(values),
      u4: Uint32Array.from(values),
      i8: BigInt64Array.from(values, (v) => BigInt(v)),
    };
    for (const [name, arr] of Object.entries(arrays)) {
      const p = join(dir, `${name}.npy`);
      await writeNpy(p, arr);
      const ds = await openDataset({ dataPath: p, seqLen: L });
      assert.equal(ds.numWindows, 4, name);
      assert.equal(ds.stats.droppedTokens, 3);
      assert.equal(ds.stats.tokens, n);
      assert.equal(ds.stats.maxTokenId, Math.max(...values));
      for (let i = 0; i < 4; i++) {
        const w = ds.window(i);
        const span = values.slice(i * (L + 1), (i + 1) * (L + 1));
        assert.deepEqual(Array.from(w.inputs), span.slice(0, L), `${name} window ${i}`);
        assert.deepEqual(Array.from(w.labels), span.slice(1), `${name} window ${i}`);
      }
      assert.throws(() => ds.window(4), /window 4 outside \[0, 4\)/);
    }
    const neg = join(dir, "neg.npy");
    await writeNpy(neg, Int32Array.from([1, 2, -5, 3]));
    await rejectsWith(openDataset({ dataPath: neg, seqLen: 1 }), /neg\.npy: negative token id -5/);
  });
});

Deno.test("packing: documents are BOS doc EOS, back to back, in windows of L+1", () => {
  const tok = new ByteTokenizer();
  const docs = ["ab", "", "xyz", "hello world"];
  const expected: number[] = [];
  for (const d of docs) expected.push(0, ...tok.encode(d), 1);
  const L = 4;
  const packed = packDocuments(docs, tok, L);
  assert.deepEqual(Array.from(packed.tokens), expected);
  assert.equal(packed.documents, 4);
  assert.equal(packed.numWindows, Math.floor(expected.length / (L + 1)));
  assert.equal(packed.droppedTokens, expected.length % (L + 1));
  const ds = new TokenDataset(packed.tokens, L);
  // Concatenating the windows' spans gives back the stream, minus the partial tail.
  const rebuilt: number[] = [];
  for (let i = 0; i < ds.numWindows; i++) {
    const w = ds.window(i);
    assert.deepEqual(Array.from(w.inputs.subarray(1)), Array.from(w.labels.subarray(0, L - 1)));
    rebuilt.push(w.inputs[0], ...w.labels);
  }
  assert.deepEqual(rebuilt, expected.slice(0, ds.numWindows * (L + 1)));
});

Deno.test("packing: EOS between documents with a Hugging Face tokenizer", async () => {
  const tok = await loadTokenizer(TOK_DIR);
  const packer = new SequencePacker(tok);
  packer.addText("The cat meows.");
  packer.addText("The dog barks.");
  packer.addTokens([7, 8]); // pre-tokenised ids go in verbatim
  const a = tok.encode("The cat meows.");
  const b = tok.encode("The dog barks.");
  assert.deepEqual(Array.from(packer.view()), [1, ...a, 2, 1, ...b, 2, 7, 8]);
  assert.equal(packer.numDocuments, 2);
  // Without BOS (add_bos_token false), only EOS separates documents.
  const noBos = new SequencePacker({ bosId: 1, eosId: 2, addBos: false });
  noBos.addDocument([5, 6]);
  noBos.addDocument([7]);
  assert.deepEqual(Array.from(noBos.view()), [5, 6, 2, 7, 2]);
  assert.throws(() => noBos.addText("x"), /needs a tokenizer/);
});

// ---------------------------------------------------------------------------------------------
// Order and sharding

function assertPermutation(p: Uint32Array, n: number): void {
  assert.equal(p.length, n);
  const seen = new Uint8Array(n);
  for (const x of p) {
    assert.ok(x < n && seen[x] === 0, `value ${x}`);
    seen[x] = 1;
  }
}

Deno.test("order: deterministic permutations that change with epoch and seed", () => {
  const ds = new TokenDataset(Int32Array.from(range(0, 101 * 3)), 2);
  assert.equal(ds.numWindows, 101);
  const a = ds.order(0, 42);
  assertPermutation(a, 101);
  assert.deepEqual(a, ds.order(0, 42));
  assert.deepEqual(a, new TokenDataset(Int32Array.from(range(0, 303)), 2).order(0, 42));
  assert.notDeepEqual(a, ds.order(1, 42));
  assert.notDeepEqual(a, ds.order(0, 43));
  assert.notDeepEqual(Array.from(a), range(0, 101));
  // Pinned values: the same on every platform and every run.
  assert.deepEqual(Array.from(permutation(8, 7)), [6, 7, 3, 1, 4, 0, 2, 5]);
  assert.deepEqual(Array.from(new SyntheticDataset(1000, 6, 1, 2).window(1).inputs), [
    116,
    396,
    780,
    633,
    469,
    794,
  ]);
  assertPermutation(permutation(1, 3), 1);
  assertPermutation(permutation(0, 3), 0);
  assert.deepEqual(Array.from(ds.indices({ shuffle: false })), range(0, 101));
});

Deno.test("sharding: data-parallel ranks are disjoint and cover the epoch", () => {
  const ds = new TokenDataset(Int32Array.from(range(0, 103 * 4)), 3);
  const n = ds.numWindows;
  assert.equal(n, 103);
  for (const worldSize of [1, 2, 3, 4, 8, 103, 200]) {
    for (const dropRemainder of [true, false]) {
      const order = ds.order(5, 9);
      const seen = new Set<number>();
      const counts: number[] = [];
      for (let rank = 0; rank < worldSize; rank++) {
        const idx = ds.indices({ epoch: 5, seed: 9, rank, worldSize, dropRemainder });
        counts.push(idx.length);
        for (const i of idx) {
          assert.ok(!seen.has(i), `window ${i} on two ranks`);
          seen.add(i);
        }
        // Every worldSize-th entry of the shared order, starting at the rank.
        assert.deepEqual(idx, shardIndices(order, rank, worldSize, dropRemainder));
      }
      if (dropRemainder) {
        assert.ok(counts.every((c) => c === Math.floor(n / worldSize)));
        assert.equal(seen.size, n - (n % worldSize));
        for (let k = n - (n % worldSize); k < n; k++) assert.ok(!seen.has(order[k]));
      } else {
        assert.equal(seen.size, n);
      }
    }
  }
  assert.throws(() => shardIndices(new Uint32Array(4), 2, 2), /rank must be in \[0, 2\)/);
  assert.throws(() => shardIndices(new Uint32Array(4), 0, 0), /worldSize must be a positive/);
});

// ---------------------------------------------------------------------------------------------
// Synthetic data and openDataset

Deno.test("synthetic: deterministic random tokens in range, labels shifted by one", async () => {
  const a = new SyntheticDataset(300, 16, 7, 10);
  const b = new SyntheticDataset(300, 16, 7, 10);
  const c = new SyntheticDataset(300, 16, 8, 10);
  assert.equal(a.numWindows, 10);
  for (let i = 0; i < 10; i++) {
    const w = a.window(i);
    assert.deepEqual(w, b.window(i));
    assert.notDeepEqual(w, c.window(i));
    assert.deepEqual(Array.from(w.inputs.subarray(1)), Array.from(w.labels.subarray(0, 15)));
    for (const x of [...w.inputs, ...w.labels]) assert.ok(x >= 0 && x < 300);
  }
  assert.notDeepEqual(a.window(0), a.window(1));
  const ds = await openDataset({ synthetic: true, vocabSize: 256, seqLen: 32, seed: 3 });
  assert.ok(ds instanceof SyntheticDataset);
  assert.equal(ds.seqLen, 32);
  assert.equal(ds.stats.maxTokenId, 255);
  const viaTok = await openDataset({ synthetic: true, tokenizer: new ByteTokenizer(), seqLen: 4 });
  assert.equal(viaTok.stats.maxTokenId, 258);
  // Roughly uniform: every token of a small vocabulary appears.
  const big = new SyntheticDataset(4, 1000, 1, 1).window(0);
  for (let t = 0; t < 4; t++) assert.ok(big.inputs.includes(t));
});

Deno.test("openDataset: the bundled corpus with the fixture tokenizer, with progress", async () => {
  const tok = await loadTokenizer(TOK_DIR);
  const progress: number[][] = [];
  const L = 64;
  const ds = await openDataset({
    dataPath: CORPUS,
    tokenizer: tok,
    seqLen: L,
    onProgress: (d, t) => progress.push([d, t]),
  });
  const lines = (await Deno.readTextFile(CORPUS)).trim().split("\n");
  assert.equal(ds.stats.documents, lines.length);
  assert.ok(ds.numWindows > 100);
  assert.ok(ds.stats.maxTokenId < 256);
  assert.equal(ds.numWindows, Math.floor(ds.stats.tokens / (L + 1)));
  const size = (await Deno.stat(CORPUS)).size;
  assert.deepEqual(progress.at(-1), [size, size]);
  // The stream starts BOS, first document, EOS.
  const first = tok.encode(JSON.parse(lines[0]).text);
  const stream = (ds as TokenDataset).tokens;
  assert.deepEqual(Array.from(stream.subarray(0, first.length + 3)), [1, ...first, 2, 1]);
  assert.match(ds.describe(), /tiny\.jsonl: \d+ windows of 64\+1 tokens, \d+ documents/);
});

Deno.test("openDataset: a folder of mixed files, read in sorted order, metadata skipped", async () => {
  await withTempDir(async (dir) => {
    const tok = new ByteTokenizer();
    await Deno.mkdir(join(dir, "sub"));
    await Deno.writeTextFile(join(dir, "b.jsonl"), '{"text": "bb"}\n');
    await Deno.writeTextFile(join(dir, "a.json"), '[{"text": "a"}]');
    await writeNpy(join(dir, "sub", "c.npy"), Int32Array.from([200, 201, 202]));
    await Deno.writeTextFile(join(dir, "README.md"), "# data");
    await Deno.writeTextFile(join(dir, "dataset_info.json"), "{}");
    await Deno.writeTextFile(join(dir, ".hidden.jsonl"), "garbage");
    const { files, skipped } = await listDataFiles(dir);
    assert.deepEqual(files.map((f) => f.slice(dir.length + 1)), ["a.json", "b.jsonl", "sub/c.npy"]);
    assert.deepEqual(skipped, ["README.md", "dataset_info.json"]);
    const ds = await openDataset({ dataPath: dir, tokenizer: tok, seqLen: 2 }) as TokenDataset;
    const b = "b".charCodeAt(0) + 3;
    assert.deepEqual(
      Array.from(ds.tokens),
      [0, "a".charCodeAt(0) + 3, 1, 0, b, b, 1, 200, 201, 202],
    );
    assert.equal(ds.numWindows, 3);
    assert.equal(ds.stats.documents, 2);
    assert.deepEqual(ds.stats.skippedFiles, ["README.md", "dataset_info.json"]);
    assert.match(ds.describe(), /2 files skipped \(README\.md, dataset_info\.json\)/);
  });
});

Deno.test("openDataset: parquet and chat parquet through the fixture tokenizer", async () => {
  const tok: Tokenizer = await loadTokenizer(TOK_DIR);
  const ds = await openDataset({
    dataPath: join(DATA_DIR, "text_snappy.parquet"),
    tokenizer: tok,
    seqLen: 4,
  }) as TokenDataset;
  const expected: number[] = [];
  for (const t of PARQUET_TEXTS) expected.push(1, ...tok.encode(t), 2);
  assert.deepEqual(Array.from(ds.tokens), expected);
  const chat = await openDataset({
    dataPath: join(DATA_DIR, "chat.parquet"),
    tokenizer: tok,
    seqLen: 4,
  });
  assert.equal(chat.stats.documents, 3);
});

Deno.test("openDataset: errors", async () => {
  await withTempDir(async (dir) => {
    const txt = join(dir, "notes.txt");
    await Deno.writeTextFile(txt, "hello");
    await rejectsWith(
      openDataset({ dataPath: txt, seqLen: 4, tokenizer: new ByteTokenizer() }),
      /notes\.txt: unsupported data file type "\.txt"; supported: \.jsonl, \.json, \.parquet, \.npy, \.pkl, or a folder/,
    );
    await rejectsWith(
      openDataset({ dataPath: dir, seqLen: 4 }),
      /no data files in this folder; supported: \.jsonl, \.json, \.parquet, \.npy/,
    );
    await rejectsWith(
      openDataset({ dataPath: join(dir, "nope.jsonl"), seqLen: 4 }),
      /no such file/,
    );
    const j = join(dir, "d.jsonl");
    await Deno.writeTextFile(j, '{"text": "hi"}\n');
    await rejectsWith(
      openDataset({ dataPath: j, seqLen: 4 }),
      /d\.jsonl: text data needs a tokenizer/,
    );
    await rejectsWith(
      openDataset({ dataPath: j, seqLen: 8, tokenizer: new ByteTokenizer() }),
      /4 tokens, fewer than one training window of 8\+1 tokens/,
    );
    await rejectsWith(
      openDataset({ dataPath: j, seqLen: 4, synthetic: true, vocabSize: 10 }),
      /either a data path .* or synthetic data, not both/,
    );
    await rejectsWith(openDataset({ synthetic: true, seqLen: 4 }), /needs a vocabulary size/);
    await rejectsWith(openDataset({ seqLen: 4 }), /no training data/);
    await rejectsWith(
      openDataset({ dataPath: j, seqLen: 0, tokenizer: new ByteTokenizer() }),
      /sequence length must be a positive integer/,
    );
    await Deno.writeTextFile(j, '{"text": "hi"}\n{"text": "ok"\n');
    await rejectsWith(
      openDataset({ dataPath: j, seqLen: 1, tokenizer: new ByteTokenizer() }),
      /d\.jsonl:2: invalid JSON/,
    );
  });
});

Deno.test("dataset: batch() lays windows out row-major", () => {
  const ds: Dataset = new TokenDataset(Int32Array.from(range(0, 12)), 3);
  const b = ds.batch([2, 0]);
  assert.equal(b.batchSize, 2);
  assert.deepEqual(Array.from(b.inputs), [8, 9, 10, 0, 1, 2]);
  assert.deepEqual(Array.from(b.labels), [9, 10, 11, 1, 2, 3]);
});
