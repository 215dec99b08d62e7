/**
 * Chat data trains on the assistant's replies only (FastChat's convention): the labels of a
 * packed conversation against a mask written out by hand here, segment by segment, with the
 * byte tokenizer (one id per byte, so the expected ids are the bytes of the text plus 3).
 * tests/train_reference.test.ts checks the same pipeline with a BPE tokenizer against the
 * windows of the Python reference.
 */
import { assertEquals } from "./assert.ts";
import { join } from "node:path";
import { ByteTokenizer, IGNORED_LABEL, openDataset, TokenDataset } from "../src/data/mod.ts";

const BOS = 0, EOS = 1;
const bytes = (s: string) => Array.from(new TextEncoder().encode(s), (b) => b + 3);

Deno.test("chat data: labels only the assistant's replies and the EOS after a final reply", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "chat.jsonl");
    await Deno.writeTextFile(
      path,
      JSON.stringify({
        conversations: [
          { from: "human", value: "Hi" },
          { from: "gpt", value: "Hello" },
          { from: "human", value: "Bye" },
          { from: "gpt", value: "Ok." },
        ],
      }) + "\n" +
        JSON.stringify({ text: "plain" }) + "\n" +
        JSON.stringify({
          messages: [{ role: "assistant", content: "Yo" }, { role: "user", content: "?" }],
        }) + "\n",
    );
    // The stream, segment by segment: [text or special id, trained].
    const segments: [string | number, boolean][] = [
      [BOS, false],
      ["USER: Hi", false],
      ["\nASSISTANT: ", false],
      ["Hello", true],
      ["\nUSER: Bye", false],
      ["\nASSISTANT: ", false],
      ["Ok.", true],
      [EOS, true], // the assistant spoke last
      [BOS, true], // a text document: every token trained
      ["plain", true],
      [EOS, true],
      [BOS, false],
      ["ASSISTANT: ", false],
      ["Yo", true],
      ["\nUSER: ?", false],
      [EOS, false], // the user spoke last
    ];
    const ids: number[] = [], trained: boolean[] = [];
    for (const [s, t] of segments) {
      const part = typeof s === "number" ? [s] : bytes(s);
      ids.push(...part);
      trained.push(...part.map(() => t));
    }
    const L = ids.length - 1; // one window holding the whole stream
    const ds = await openDataset({ dataPath: path, tokenizer: new ByteTokenizer(), seqLen: L });
    assertEquals(ds.numWindows, 1);
    const w = ds.window(0);
    assertEquals(Array.from(w.inputs), ids.slice(0, L));
    assertEquals(
      Array.from(w.labels),
      ids.slice(1).map((id, i) => (trained[i + 1] ? id : IGNORED_LABEL)),
    );
    assertEquals(IGNORED_LABEL, -100);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("chat data: `distflash tokenize` refuses it (a .npy file cannot hold the mask)", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "chat.jsonl");
    await Deno.writeTextFile(
      path,
      JSON.stringify({
        conversations: [{ from: "human", value: "Hi" }, { from: "gpt", value: "Hello" }],
      }),
    );
    const main = new URL("../cli/main.ts", import.meta.url).pathname;
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        main,
        "tokenize",
        "--model",
        "debug-tiny",
        "--data-path",
        path,
        "--output",
        join(dir, "t.npy"),
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assertEquals(out.code !== 0, true, stderr);
    assertEquals(
      /chat conversations, which train on the assistant's turns only/.test(stderr),
      true,
      stderr,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("chat data: token datasets without a mask label every token", () => {
  const ds = new TokenDataset(Int32Array.from([5, 6, 7, 8, 9]), 4);
  assertEquals(Array.from(ds.window(0).labels), [6, 7, 8, 9]);
  const masked = new TokenDataset(
    Int32Array.from([5, 6, 7, 8, 9]),
    4,
    {},
    Uint8Array.from([1, 1, 0, 1, 0]),
  );
  assertEquals(Array.from(masked.window(0).labels), [6, -100, 8, -100]);
});
