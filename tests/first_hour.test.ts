// Small things a new user notices (issue 25, section 5): a Hugging Face hub id given as --model is
// answered with how to download it, the run header says when document masking is on, and the
// ranks' Deno messages carry no colour when the output is not a terminal.

import { assert, assertEquals } from "./assert.ts";
import { join } from "node:path";
import { runCli } from "./_util.ts";
import { hubDownloadHint } from "../src/model/hf.ts";
import { rankEnv } from "../src/launch/launcher.ts";

Deno.test("--model with a hub id says how to download the folder", async () => {
  const r = await runCli(["train", "--model", "meta-llama/Llama-2-7b-hf", "--synthetic"]);
  assertEquals(r.code, 1, r.stderr);
  assert(
    r.stderr.includes(
      "huggingface-cli download meta-llama/Llama-2-7b-hf --local-dir Llama-2-7b-hf",
    ) && r.stderr.includes("then --model Llama-2-7b-hf"),
    r.stderr,
  );
  // Not a hub id: a typo'd preset or a path keeps the plain message.
  assertEquals(hubDownloadHint("llama-2-7"), undefined);
  assertEquals(hubDownloadHint("./models/x"), undefined);
  assertEquals(hubDownloadHint("/abs/folder"), undefined);
  assert(hubDownloadHint("TinyLlama/TinyLlama-1.1B-Chat-v1.0")?.includes("--local-dir"));
  const plain = await runCli(["train", "--model", "llama-2-7", "--synthetic"]);
  assert(plain.stderr.includes("neither a model folder nor a preset"), plain.stderr);
});

Deno.test("the run header says when document masking is on", async () => {
  const out = await Deno.makeTempDir({ prefix: "distflash-docmask-" });
  try {
    const args = (mask: string, dir: string) => [
      "train",
      "--model",
      "debug-tiny",
      "--synthetic",
      "--max-steps",
      "1",
      "--model-max-length",
      "16",
      "--device",
      "cpu",
      "--save-strategy",
      "no",
      "--attention-mask",
      mask,
      "--output-dir",
      join(out, dir),
    ];
    const doc = await runCli(args("document", "doc"));
    assertEquals(doc.code, 0, doc.stderr);
    // The run's log lines go to stderr.
    const header = doc.stderr.split("\n").find((l) => l.startsWith("distflash train:")) ?? "";
    assert(header.includes("document masking on"), `${doc.stdout}\n${doc.stderr}`);
    const causal = await runCli(args("causal", "causal"));
    assertEquals(causal.code, 0, causal.stderr);
    assert(causal.stderr.includes("distflash train:"), causal.stderr);
    assert(!causal.stderr.includes("document masking"), causal.stderr);
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("ranks get NO_COLOR when the launcher's output is not a terminal", () => {
  const env = rankEnv({
    nprocPerNode: 2,
    nnodes: 1,
    nodeRank: 0,
    masterAddr: "127.0.0.1",
    masterPort: 1,
  }, 0);
  // The test runner's stdout is a pipe (deno test), or a terminal when run by hand.
  assertEquals(env.NO_COLOR, Deno.stdout.isTerminal() ? undefined : "1");
  // The caller's choice wins.
  const mine = rankEnv({
    nprocPerNode: 2,
    nnodes: 1,
    nodeRank: 0,
    masterAddr: "127.0.0.1",
    masterPort: 1,
    env: { NO_COLOR: "" },
  }, 0);
  assertEquals(mine.NO_COLOR, "");
});
