/**
 * Checkpoint content is verified on resume (README "Reliability"): complete.json records every
 * file's SHA-256 at save; a flipped byte in any file (the optimizer state here) is refused naming
 * the file; a checkpoint saved before checksums existed still resumes, with a note.
 */
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { SAVING_RUN } from "./_util.ts";
import { train } from "../src/train/trainer.ts";
import { createHash } from "node:crypto";
import { join } from "node:path";

Deno.test("checksums: complete.json records each file's SHA-256; a flipped byte in the optimizer state is refused", async () => {
  const out = await Deno.makeTempDir();
  await train({ ...SAVING_RUN, maxSteps: 2, outputDir: out }, { log: () => {} });
  const ckpt = join(out, "checkpoint-2");
  const record = JSON.parse(await Deno.readTextFile(join(ckpt, "complete.json")));
  assertEquals(Object.keys(record.sha256).sort(), Object.keys(record.files).sort());
  for (const name of Object.keys(record.files)) {
    const bytes = await Deno.readFile(join(ckpt, name));
    assertEquals(record.sha256[name], createHash("sha256").update(bytes).digest("hex"), name);
  }
  // One byte of the optimizer state's data (past the header), flipped in place: same size.
  const optimizer = join(ckpt, "optimizer.safetensors");
  const bytes = await Deno.readFile(optimizer);
  const header = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  bytes[8 + header + 100] ^= 0x10;
  await Deno.writeFile(optimizer, bytes);
  const resume = { ...SAVING_RUN, maxSteps: 4, outputDir: out, resumeFromCheckpoint: "last" };
  const e = await assertRejects(() => train(resume, { log: () => {} }));
  assert(e.message.includes(optimizer), e.message);
  assert(e.message.includes("differs from what was saved"), e.message);
  // Restored, it resumes.
  bytes[8 + header + 100] ^= 0x10;
  await Deno.writeFile(optimizer, bytes);
  await train({ ...resume, maxSteps: 3 }, { log: () => {} });
  await Deno.remove(out, { recursive: true });
});

Deno.test("checksums: a checkpoint without checksums (older distflash) resumes with a note", async () => {
  const out = await Deno.makeTempDir();
  await train({ ...SAVING_RUN, maxSteps: 2, outputDir: out }, { log: () => {} });
  const path = join(out, "checkpoint-2", "complete.json");
  const record = JSON.parse(await Deno.readTextFile(path));
  delete record.sha256;
  await Deno.writeTextFile(path, JSON.stringify(record, null, 2) + "\n");
  const lines: string[] = [];
  await train(
    { ...SAVING_RUN, maxSteps: 3, outputDir: out, resumeFromCheckpoint: "last" },
    { log: (line: string) => lines.push(line) },
  );
  assert(
    lines.some((l) => l.includes("no checksums") && l.includes("checkpoint-2")),
    lines.join("\n"),
  );
  await Deno.remove(out, { recursive: true });
});
