/**
 * Chat data trains exactly the assistant's turns (FastChat's convention, src/data/chat.ts), as a
 * property over generated data (fast-check): conversations of system, user and assistant turns in
 * any order and at every position (both record shapes, `conversations` with from/value and
 * `messages` with role/content), empty turns, non-ASCII text, plain-text records between them,
 * and window lengths from 1 token up, so that windows cut the stream at every boundary. The
 * expected per-token mask is computed here from the rule alone with the byte tokenizer (one id per
 * UTF-8 byte, ids = bytes + 3): BOS, role prefixes, the "\n" between turns and every
 * non-assistant turn ignored; an assistant's text trained; the EOS trained when the assistant
 * spoke last; every token of a plain-text record trained.
 */
import fc from "fast-check";
import { assertEquals } from "./assert.ts";
import { join } from "node:path";
import { ByteTokenizer, IGNORED_LABEL, openDataset } from "../src/data/mod.ts";

const BOS = 0, EOS = 1;
const bytes = (s: string) => Array.from(new TextEncoder().encode(s), (b) => b + 3);

type Role = "system" | "user" | "assistant";
const PRINTED: Record<Role, string> = { system: "SYSTEM", user: "USER", assistant: "ASSISTANT" };
const SHAREGPT: Record<Role, string> = { system: "system", user: "human", assistant: "gpt" };

type Record_ =
  | { kind: "chat"; shape: "conversations" | "messages"; turns: { role: Role; text: string }[] }
  | { kind: "text"; text: string };

const text = fc.string({
  unit: fc.constantFrom("a", "b", " ", "\n", "é", "語", ":"),
  maxLength: 6,
});
const record: fc.Arbitrary<Record_> = fc.oneof(
  fc.record({
    kind: fc.constant("chat" as const),
    shape: fc.constantFrom("conversations" as const, "messages" as const),
    turns: fc.array(
      fc.record({ role: fc.constantFrom<Role>("system", "user", "assistant"), text }),
      { minLength: 1, maxLength: 5 },
    ),
  }),
  fc.record({ kind: fc.constant("text" as const), text: text.filter((t) => t.trim() !== "") }),
);

function line(r: Record_): string {
  if (r.kind === "text") return JSON.stringify({ text: r.text });
  if (r.shape === "messages") {
    return JSON.stringify({ messages: r.turns.map((t) => ({ role: t.role, content: t.text })) });
  }
  return JSON.stringify({
    conversations: r.turns.map((t) => ({ from: SHAREGPT[t.role], value: t.text })),
  });
}

/** The token stream and, per token, whether it is trained, from the rule alone. */
function expectedStream(records: Record_[]): { ids: number[]; trained: boolean[] } {
  const ids: number[] = [], trained: boolean[] = [];
  const push = (part: number[], t: boolean) => {
    ids.push(...part);
    trained.push(...part.map(() => t));
  };
  for (const r of records) {
    if (r.kind === "text") {
      push([BOS, ...bytes(r.text), EOS], true);
      continue;
    }
    push([BOS], false);
    r.turns.forEach((t, i) => {
      push(bytes(`${i > 0 ? "\n" : ""}${PRINTED[t.role]}: `), false);
      push(bytes(t.text), t.role === "assistant");
    });
    push([EOS], r.turns.at(-1)!.role === "assistant");
  }
  return { ids, trained };
}

Deno.test("chat properties: exactly the assistant's turns are trained, every window cut", async () => {
  const dir = await Deno.makeTempDir();
  let n = 0;
  try {
    await fc.assert(
      fc.asyncProperty(
        fc.array(record, { minLength: 1, maxLength: 4 }),
        fc.integer({ min: 1, max: 40 }),
        async (records, L) => {
          const { ids, trained } = expectedStream(records);
          fc.pre(ids.length >= L + 1);
          const path = join(dir, `chat-${n++}.jsonl`);
          await Deno.writeTextFile(path, records.map(line).join("\n") + "\n");
          const ds = await openDataset({
            dataPath: path,
            tokenizer: new ByteTokenizer(),
            seqLen: L,
          });
          // Windows are disjoint stretches of L + 1 tokens (src/data/packing.ts); a partial tail is dropped.
          assertEquals(ds.numWindows, Math.floor(ids.length / (L + 1)));
          for (let w = 0; w < ds.numWindows; w++) {
            const win = ds.window(w);
            const at = w * (L + 1);
            assertEquals(Array.from(win.inputs), ids.slice(at, at + L), `window ${w} inputs`);
            const labels = ids.slice(at + 1, at + L + 1).map((id, i) =>
              trained[at + 1 + i] ? id : IGNORED_LABEL
            );
            assertEquals(Array.from(win.labels), labels, `window ${w} labels`);
          }
        },
      ),
      { numRuns: 300, seed: 2026 },
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
