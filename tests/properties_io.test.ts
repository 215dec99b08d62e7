// Properties of the safetensors writer and reader (src/io/safetensors.ts) and the JSON Lines and
// JSON readers (src/data/readers.ts) over generated inputs. Safetensors files are also decoded by
// a reader written here from the format's definition (8-byte length, JSON header padded with
// spaces, contiguous data), sharing no code with src/io. Every cut of a file, every header length
// beyond the file, invalid UTF-8 in a name, any changed offsets and any corrupted header byte are
// refused with an Error; a malformed JSONL line is reported with its line number.

import { assert, assertEquals } from "./assert.ts";
import { fc, INVALID_UTF8, runs, unicodeText, VARINT_BOUNDARIES } from "./_properties.ts";
import { join } from "node:path";
import { dtypeBytes, DTYPES } from "../src/io/dtype.ts";
import type { DType } from "../src/io/dtype.ts";
import {
  MAX_HEADER_BYTES,
  SafetensorsFile,
  type TensorToWrite,
  writeSafetensors,
} from "../src/io/safetensors.ts";
import { type DataDocument, DataError, readJson, readJsonl } from "../src/data/readers.ts";

const TMP = await Deno.makeTempDir({ prefix: "distflash-properties-" });
addEventListener("unload", () => Deno.removeSync(TMP, { recursive: true }));
let fileNo = 0;
const tmpFile = (ext: string) => join(TMP, `f${fileNo++}${ext}`);

/** Opens and fully reads a safetensors file: throws what the reader throws. */
async function openAll(path: string): Promise<void> {
  const f = await SafetensorsFile.open(path);
  try {
    for (const n of f.names()) await f.readBytes(n);
  } finally {
    f.close();
  }
}

/** Expects `fn` to reject with an Error (not a non-Error); returns its message. */
async function refused(fn: () => Promise<unknown>, what: string): Promise<string> {
  try {
    await fn();
  } catch (e) {
    assert(e instanceof Error, `${what}: threw a non-Error ${String(e)}`);
    return e.message;
  }
  throw new Error(`${what}: was accepted`);
}

// ---------------------------------------------------------------------------------------------
// Safetensors: generators and the independent reader

interface Tensor {
  name: string;
  dtype: DType;
  shape: number[];
  data: Uint8Array;
}

/** Names: any Unicode text, integer-like names ("0", "10"), and names JavaScript treats specially. */
const tensorName = fc.oneof(
  unicodeText(12),
  fc.nat(1000).map(String),
  fc.constantFrom("__proto__", "constructor", "toString", "a.b", "model.layers.0.mlp", "\u0000"),
).filter((n) => n.length > 0 && n !== "__metadata__");

const tensor: fc.Arbitrary<Tensor> = fc.record({
  name: tensorName,
  dtype: fc.constantFrom(...DTYPES),
  shape: fc.array(fc.nat(3), { maxLength: 3 }),
}).chain((t) => {
  const n = t.shape.reduce((a, b) => a * b, 1) * dtypeBytes(t.dtype);
  return fc.uint8Array({ minLength: n, maxLength: n }).map((data) => ({ ...t, data }));
});

const tensors = fc.uniqueArray(tensor, { selector: (t) => t.name, maxLength: 6 });
const metadata = fc.option(fc.dictionary(unicodeText(8), unicodeText(8), { maxKeys: 3 }));

const toWrite = (ts: Tensor[]): TensorToWrite[] =>
  ts.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, data: t.data }));

/** Decodes a safetensors file as the format's definition says, checking the writer's layout. */
function decodeSafetensors(bytes: Uint8Array) {
  let n = 0n;
  for (let i = 7; i >= 0; i--) n = n * 256n + BigInt(bytes[i]);
  const headerLen = Number(n);
  assertEquals(headerLen % 8, 0, "the data starts 8-byte aligned");
  const header = bytes.subarray(8, 8 + headerLen);
  const text = new TextDecoder("utf-8", { fatal: true }).decode(header);
  const json = text.trimEnd();
  assertEquals(text.slice(json.length), " ".repeat(text.length - json.length), "space padding");
  assert(text.length - json.length < 8, "at most 7 bytes of padding");
  return {
    header: JSON.parse(json) as Record<string, unknown>,
    data: bytes.subarray(8 + headerLen),
    headerLen,
  };
}

// ---------------------------------------------------------------------------------------------
// Safetensors properties

Deno.test("io properties: safetensors write -> read is byte-exact, names in the order written", async () => {
  await fc.assert(
    fc.asyncProperty(tensors, metadata, async (ts, meta) => {
      const path = tmpFile(".safetensors");
      await writeSafetensors(path, toWrite(ts), meta);
      // The file as the format defines it: tensors back to back in the order given.
      const { header, data } = decodeSafetensors(await Deno.readFile(path));
      let off = 0;
      for (const t of ts) {
        const entry = header[t.name] as Record<string, unknown>;
        assertEquals(entry, {
          dtype: t.dtype,
          shape: t.shape,
          data_offsets: [off, off + t.data.length],
        });
        assertEquals(data.subarray(off, off + t.data.length), t.data);
        off += t.data.length;
      }
      assertEquals(off, data.length);
      const want = meta === null ? null : { format: "pt", ...meta };
      assertEquals(header.__metadata__ ?? null, want);
      assertEquals(Object.keys(header).length, ts.length + (want ? 1 : 0));
      // ...and as SafetensorsFile reads it.
      const f = await SafetensorsFile.open(path);
      try {
        assertEquals(f.names(), ts.map((t) => t.name));
        assertEquals(f.metadata === null ? null : { ...f.metadata }, want);
        for (const t of ts) {
          const info = f.info(t.name);
          assertEquals([info.dtype, info.shape, info.byteLength], [
            t.dtype,
            t.shape,
            t.data.length,
          ]);
          assertEquals(await f.readBytes(t.name), t.data);
        }
      } finally {
        f.close();
      }
    }),
    runs(80),
  );
});

Deno.test("io properties: a safetensors file cut anywhere, or with bytes appended, is refused", async () => {
  await fc.assert(
    fc.asyncProperty(tensors.filter((ts) => ts.some((t) => t.data.length > 0)), async (ts) => {
      const path = tmpFile(".safetensors");
      await writeSafetensors(path, toWrite(ts), null);
      const bytes = await Deno.readFile(path);
      const cut = tmpFile(".safetensors");
      for (let n = 0; n < bytes.length; n++) {
        await Deno.writeFile(cut, bytes.subarray(0, n));
        await refused(() => openAll(cut), `cut at ${n} of ${bytes.length}`);
      }
      // And bytes after the data (the tensors must cover the data buffer exactly).
      for (const extra of [1, 7, 8]) {
        await Deno.writeFile(cut, Uint8Array.from([...bytes, ...new Uint8Array(extra)]));
        await refused(() => openAll(cut), `${extra} bytes appended`);
      }
    }),
    runs(8),
  );
});

Deno.test("io properties: a header length beyond the file is refused", async () => {
  await fc.assert(
    fc.asyncProperty(
      tensors,
      fc.oneof(
        fc.constantFrom(...VARINT_BOUNDARIES.map(BigInt), 2n ** 63n, 2n ** 64n - 1n),
        fc.constantFrom(BigInt(MAX_HEADER_BYTES), BigInt(MAX_HEADER_BYTES) + 1n),
        fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
        fc.nat(4096).map(BigInt),
        fc.integer({ min: -3, max: 9 }).map((beyond) => ({ beyond })), // just past the end
      ),
      async (ts, arg) => {
        const path = tmpFile(".safetensors");
        await writeSafetensors(path, toWrite(ts), null);
        const bytes = await Deno.readFile(path);
        const length = typeof arg === "bigint" ? arg : BigInt(bytes.length - 8 + arg.beyond);
        fc.pre(length > BigInt(bytes.length - 8));
        new DataView(bytes.buffer).setBigUint64(0, length, true);
        await Deno.writeFile(path, bytes);
        const message = await refused(() => openAll(path), `header length ${length}`);
        assert(message.includes("header length"), message);
      },
    ),
    runs(60),
  );
});

Deno.test("io properties: invalid UTF-8 in a tensor name is refused", async () => {
  await fc.assert(
    fc.asyncProperty(
      unicodeText(8),
      fc.constantFrom(...INVALID_UTF8),
      unicodeText(8),
      async (before, invalid, after) => {
        const enc = (s: string) => new TextEncoder().encode(s);
        const key = [...enc(JSON.stringify(before).slice(0, -1)), ...invalid];
        const rest = enc(
          JSON.stringify(after).slice(1) + ':{"dtype":"U8","shape":[1],' +
            '"data_offsets":[0,1]}}',
        );
        const header = Uint8Array.from([0x7b, ...key, ...rest]);
        const bytes = new Uint8Array(8 + header.length + 1);
        new DataView(bytes.buffer).setBigUint64(0, BigInt(header.length), true);
        bytes.set(header, 8);
        const path = tmpFile(".safetensors");
        await Deno.writeFile(path, bytes);
        const message = await refused(() => openAll(path), "invalid UTF-8");
        assert(message.includes("UTF-8"), message);
      },
    ),
    runs(60),
  );
});

Deno.test("io properties: moving any non-empty tensor's data_offsets is refused", async () => {
  await fc.assert(
    fc.asyncProperty(
      tensors.filter((ts) => ts.some((t) => t.data.length > 0)),
      fc.nat(),
      fc.integer({ min: -9, max: 9 }),
      fc.integer({ min: -9, max: 9 }),
      async (ts, pick, dBegin, dEnd) => {
        fc.pre(dBegin !== 0 || dEnd !== 0);
        const nonEmpty = ts.filter((t) => t.data.length > 0);
        const victim = nonEmpty[pick % nonEmpty.length].name;
        const path = tmpFile(".safetensors");
        await writeSafetensors(path, toWrite(ts), null);
        const { header, data } = decodeSafetensors(await Deno.readFile(path));
        const entry = header[victim] as { data_offsets: [number, number] };
        const [b, e] = entry.data_offsets;
        fc.pre(b + dBegin >= 0 && e + dEnd >= 0);
        entry.data_offsets = [b + dBegin, e + dEnd];
        const json = new TextEncoder().encode(JSON.stringify(header));
        const bytes = new Uint8Array(8 + json.length + data.length);
        new DataView(bytes.buffer).setBigUint64(0, BigInt(json.length), true);
        bytes.set(json, 8);
        bytes.set(data, 8 + json.length);
        await Deno.writeFile(path, bytes);
        await refused(() => openAll(path), `${victim} moved by ${dBegin}, ${dEnd}`);
      },
    ),
    runs(80),
  );
});

Deno.test("io properties: a corrupted header byte is refused or read consistently, never a crash", async () => {
  await fc.assert(
    fc.asyncProperty(tensors, fc.nat(), fc.integer({ min: 1, max: 255 }), async (ts, at, xor) => {
      const path = tmpFile(".safetensors");
      await writeSafetensors(path, toWrite(ts), null);
      const bytes = await Deno.readFile(path);
      const { headerLen } = decodeSafetensors(bytes);
      bytes[8 + (at % headerLen)] ^= xor;
      await Deno.writeFile(path, bytes);
      let f: SafetensorsFile;
      try {
        f = await SafetensorsFile.open(path);
      } catch (e) {
        assert(e instanceof Error, `threw a non-Error ${String(e)}`);
        return;
      }
      // A name's character may change and still be valid: then every tensor must still read
      // within the file, with its dtype and shape's byte count.
      try {
        for (const info of f.tensors()) {
          const got = await f.readBytes(info.name);
          assertEquals(got.length, info.shape.reduce((a, b) => a * b, 1) * dtypeBytes(info.dtype));
        }
      } finally {
        f.close();
      }
    }),
    runs(80),
  );
});

// ---------------------------------------------------------------------------------------------
// JSON Lines and JSON

/** Text with what JSON must escape: newlines, CR, quotes, backslashes, NUL, U+2028, a BOM. */
const text = fc.oneof(
  unicodeText(30),
  fc.array(
    fc.oneof(
      unicodeText(4),
      fc.constantFrom("\n", "\r", "\r\n", '"', "\\", "\u0000", "\u2028", "\ufeff", "\t", "é", "😀"),
    ),
    { maxLength: 8 },
  ).map((parts) => parts.join("")),
);

const ROLES: Record<string, string> = {
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

/** A record and the document the reader must give for it. */
const record: fc.Arbitrary<{ json: unknown; doc: DataDocument }> = fc.oneof(
  fc.record({ t: text, extra: fc.option(text) }).map(({ t, extra }) => ({
    json: extra === null ? { text: t } : { id: extra, text: t },
    doc: t,
  })),
  fc.tuple(
    fc.constantFrom("conversations", "messages"),
    fc.array(
      fc.tuple(fc.constantFrom(...Object.keys(ROLES), "Tool", "narrator"), text, fc.boolean()),
      { maxLength: 4 },
    ),
  ).map(([field, turns]) => ({
    json: {
      [field]: turns.map(([role, value, openai]) =>
        openai ? { role, content: value } : { from: role, value }
      ),
    },
    doc: turns.map(([role, value]) => ({
      role: ROLES[role.toLowerCase()] ?? role.toUpperCase(),
      text: value,
    })),
  })),
);

/** Lines of a JSONL file: each record's JSON, blank lines between, LF or CRLF endings. */
const jsonlFile = fc.record({
  records: fc.array(fc.record({ r: record, blanks: fc.nat(2), crlf: fc.boolean() }), {
    maxLength: 12,
  }),
  bom: fc.boolean(),
  finalNewline: fc.boolean(),
});

function jsonlLines(
  records: { r: { json: unknown }; blanks: number; crlf: boolean }[],
): { lines: string[]; lineOf: number[] } {
  const lines: string[] = [];
  const lineOf: number[] = [];
  for (const { r, blanks, crlf } of records) {
    for (let i = 0; i < blanks; i++) lines.push(crlf ? "  \r" : "");
    lineOf.push(lines.length + 1);
    lines.push(JSON.stringify(r.json) + (crlf ? "\r" : ""));
  }
  return { lines, lineOf };
}

async function collect(gen: AsyncGenerator<DataDocument>): Promise<DataDocument[]> {
  const out: DataDocument[] = [];
  for await (const d of gen) out.push(d);
  return out;
}

Deno.test("io properties: JSONL records of any text round-trip", async () => {
  await fc.assert(
    fc.asyncProperty(jsonlFile, async ({ records, bom, finalNewline }) => {
      const { lines } = jsonlLines(records);
      const path = tmpFile(".jsonl");
      await Deno.writeTextFile(
        path,
        (bom ? "\ufeff" : "") + lines.join("\n") + (finalNewline && lines.length ? "\n" : ""),
      );
      assertEquals(await collect(readJsonl(path)), records.map(({ r }) => r.doc));
    }),
    runs(150),
  );
});

Deno.test("io properties: JSON arrays of records of any text round-trip", async () => {
  await fc.assert(
    fc.asyncProperty(fc.array(record, { maxLength: 10 }), fc.boolean(), async (rs, bom) => {
      const path = tmpFile(".json");
      await Deno.writeTextFile(path, (bom ? "\ufeff" : "") + JSON.stringify(rs.map((r) => r.json)));
      assertEquals(await collect(readJson(path)), rs.map((r) => r.doc));
    }),
    runs(100),
  );
});

/** Lines that are no record, and what the error must say about them. */
const badLine = fc.oneof(
  fc.constantFrom("{", '{"text": }', "not json", '{"text": "a"} x', "[1, 2", "{'text': 'a'}")
    .map((l) => ({ bytes: new TextEncoder().encode(l), says: "invalid JSON" })),
  fc.constantFrom("3", '"text"', "null", "[]", "true")
    .map((l) => ({ bytes: new TextEncoder().encode(l), says: "expected a JSON object" })),
  fc.constantFrom('{"txt": "a"}', '{"text": 3}', '{"text": null}', '{"conversations": [3]}')
    .map((l) => ({ bytes: new TextEncoder().encode(l), says: "" })),
  fc.tuple(text, fc.constantFrom(...INVALID_UTF8)).map(([t, bad]) => {
    const good = new TextEncoder().encode(JSON.stringify({ text: t }));
    return {
      bytes: Uint8Array.from([...good.subarray(0, 9), ...bad, ...good.subarray(9)]),
      says: "invalid UTF-8",
    };
  }),
);

Deno.test("io properties: a malformed JSONL line is reported with its line number", async () => {
  await fc.assert(
    fc.asyncProperty(jsonlFile, badLine, fc.nat(), async ({ records }, bad, where) => {
      const { lines, lineOf } = jsonlLines(records);
      // The bad line goes before record `at` (or last); its number counts blank lines too.
      const at = where % (records.length + 1);
      const lineNo = at < records.length ? lineOf[at] - records[at].blanks : lines.length + 1;
      const enc = new TextEncoder();
      const before = lines.slice(0, lineNo - 1).map((l) => l + "\n").join("");
      const after = lines.slice(lineNo - 1).map((l) => "\n" + l).join("");
      const path = tmpFile(".jsonl");
      await Deno.writeFile(
        path,
        Uint8Array.from([...enc.encode(before), ...bad.bytes, ...enc.encode(after)]),
      );
      let error: unknown;
      const docs: DataDocument[] = [];
      try {
        for await (const d of readJsonl(path)) docs.push(d);
      } catch (e) {
        error = e;
      }
      assert(error instanceof DataError, `line ${lineNo} was read (${String(error)})`);
      assert(error.message.startsWith(`${path}:${lineNo}: `), error.message);
      assert(error.message.includes(bad.says), error.message);
      // Every record before it was read.
      assertEquals(docs, records.slice(0, at).map(({ r }) => r.doc));
    }),
    runs(150),
  );
});

Deno.test("io properties: JSONL lines longer than the 4 MiB read chunk, split inside a character", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.nat(3),
      fc.constantFrom("é", "€", "😀"),
      fc.array(record, { maxLength: 3 }),
      async (shift, ch, rest) => {
        // Pad the first record so that `ch`'s bytes straddle byte 4 MiB of the file.
        const chunk = 1 << 22;
        const prefix = '{"text":"';
        const pad = "a".repeat(
          chunk - prefix.length - 1 - (shift % new TextEncoder().encode(ch).length),
        );
        const first = pad + ch + "z";
        const path = tmpFile(".jsonl");
        const body = [JSON.stringify({ text: first }), ...rest.map((r) => JSON.stringify(r.json))];
        await Deno.writeTextFile(path, body.join("\n") + "\n");
        assertEquals(await collect(readJsonl(path)), [first, ...rest.map((r) => r.doc)]);
      },
    ),
    runs(4),
  );
});

/** Rewrites a safetensors file with `edit` applied to its parsed header (data unchanged). */
async function rewriteHeader(path: string, edit: (h: Record<string, unknown>) => void) {
  const { header, data } = decodeSafetensors(await Deno.readFile(path));
  edit(header);
  const json = new TextEncoder().encode(JSON.stringify(header));
  const bytes = new Uint8Array(8 + json.length + data.length);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(json.length), true);
  bytes.set(json, 8);
  bytes.set(data, 8 + json.length);
  await Deno.writeFile(path, bytes);
}

type Entry = { dtype: DType; shape: number[]; data_offsets: [number, number] };

Deno.test("io properties: a dtype or shape of another byte count than the offsets is refused", async () => {
  await fc.assert(
    fc.asyncProperty(
      tensors.filter((ts) => ts.length > 0),
      fc.nat(),
      fc.constantFrom(...DTYPES),
      fc.array(fc.nat(4), { maxLength: 3 }),
      async (ts, pick, dtype, shape) => {
        const t = ts[pick % ts.length];
        fc.pre(shape.reduce((a, b) => a * b, 1) * dtypeBytes(dtype) !== t.data.length);
        const path = tmpFile(".safetensors");
        await writeSafetensors(path, toWrite(ts), null);
        await rewriteHeader(path, (h) => Object.assign(h[t.name] as Entry, { dtype, shape }));
        const message = await refused(() => openAll(path), `${t.name} as ${dtype} [${shape}]`);
        assert(message.includes("needs"), message);
      },
    ),
    runs(60),
  );
});

Deno.test("io properties: an entry sharing another tensor's bytes is refused", async () => {
  await fc.assert(
    fc.asyncProperty(
      tensors.filter((ts) => ts.some((t) => t.data.length > 0)),
      fc.nat(),
      async (ts, pick) => {
        const nonEmpty = ts.filter((t) => t.data.length > 0);
        const t = nonEmpty[pick % nonEmpty.length];
        const path = tmpFile(".safetensors");
        await writeSafetensors(path, toWrite(ts), null);
        const alias = "alias of " + t.name;
        fc.pre(!ts.some((x) => x.name === alias));
        await rewriteHeader(path, (h) => (h[alias] = { ...(h[t.name] as Entry) }));
        const message = await refused(() => openAll(path), `alias of ${t.name}`);
        assert(message.includes("overlaps"), message);
      },
    ),
    runs(40),
  );
});
