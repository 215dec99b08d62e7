/** The benchmark commands run end to end on CPU ranks (their numbers mean nothing there). */
import { assert, assertEquals } from "./assert.ts";
import { parseHfConfig } from "../src/model/hf_config.ts";
import { presetConfig } from "../src/model/presets.ts";
import { paramCount } from "../src/model/config.ts";
import { runCli } from "./_util.ts";
import { join } from "node:path";
import { type AttnBenchRow, benchDocumentStarts } from "../src/bench/attn.ts";

Deno.test("bench attn: one rank and DistAttn over 3 CPU ranks print a row per variant", async () => {
  const out = await Deno.makeTempDir();
  // Small CPU problems, one repetition, no PyTorch peer.
  const benchAttn = (...args: string[]) =>
    runCli([
      "bench",
      "attn",
      ...args,
      "--heads",
      "2",
      "--head-dim",
      "16",
      "--device",
      "cpu",
      "--no-baseline",
      "--reps",
      "1",
      "--warmup",
      "0",
      "--output-dir",
      out,
    ]);
  const one = await benchAttn("--seq", "64");
  assertEquals(one.code, 0, one.stderr);
  assert(/^64\s+1\s+single/m.test(one.stdout), one.stdout);
  const three = await benchAttn("--nproc-per-node", "3", "--seq", "96");
  assertEquals(three.code, 0, three.stderr);
  // Rank 0's GPU alone on the whole sequence first: each distributed row gives its share of it.
  assert(/^96\s+1\s+single/m.test(three.stdout), three.stdout);
  for (const variant of ["balanced", "unbalanced", "no-overlap", "zigzag"]) {
    assert(new RegExp(`^96\\s+3\\s+${variant}.*\\d%$`, "m").test(three.stdout), three.stdout);
  }
  const bad = await runCli(["bench", "attn", "--variants", "striped"]);
  assert(bad.code !== 0 && bad.stderr.includes("--variants"), bad.stderr);
  await Deno.remove(out, { recursive: true });
});

Deno.test("bench attn --attention-mask document: causal and document rows, the visible-pair ratio, flags", async () => {
  const out = await Deno.makeTempDir();
  // deno-fmt-ignore
  const r = await runCli([
    "bench", "attn", "--seq", "512", "--attention-mask", "document", "--doc-length", "8",
    "--heads", "2", "--head-dim", "16", "--device", "cpu", "--no-baseline", "--reps", "3",
    "--warmup", "1", "--output-dir", out,
  ]);
  assertEquals(r.code, 0, r.stderr);
  const rows = JSON.parse(await Deno.readTextFile(join(out, "attn_p1.json"))) as AttnBenchRow[];
  assertEquals(rows.map((x) => x.mask), ["causal", "document"]);
  // The visible pairs by brute force over the documents every rank packs the sequence with.
  const starts = benchDocumentStarts(512, 8);
  const docOf = (p: number) => starts.filter((s) => s <= p).length;
  let pairs = 0;
  for (let p = 0; p < 512; p++) for (let s = 0; s <= p; s++) if (docOf(s) === docOf(p)) pairs++;
  assertEquals(rows[1].visiblePairs, pairs);
  assertEquals(rows[0].visiblePairs, (512 * 513) / 2);
  assertEquals(rows[1].documents, starts.length);
  const ratio = (rows[0].visiblePairs / rows[1].visiblePairs).toFixed(2);
  assert(r.stdout.includes(`attention work ratio ${ratio}x`), r.stdout);
  // No timing assertion: CI's timings are noise (tests run in parallel). That the kernels get the
  // documents is asserted by tests/documents_model.test.ts against transformers.
  for (
    const [args, flag] of <[string[], string][]> [
      [["--attention-mask", "document"], "--doc-length"],
      [["--doc-length", "8"], "--attention-mask document"],
      [["--attention-mask", "documents", "--doc-length", "8"], "--attention-mask"],
      [["--attention-mask", "document", "--doc-length", "0"], "--doc-length"],
    ]
  ) {
    const bad = await runCli(["bench", "attn", "--device", "cpu", ...args]);
    assert(bad.code !== 0 && bad.stderr.includes(flag), bad.stderr);
  }
  await Deno.remove(out, { recursive: true });
});

Deno.test("bench attn --sliding-window: a window row, its visible pairs by counting, its speedup line", async () => {
  const out = await Deno.makeTempDir();
  // deno-fmt-ignore
  const r = await runCli([
    "bench", "attn", "--seq", "300", "--sliding-window", "64", "--heads", "2", "--head-dim", "16",
    "--device", "cpu", "--no-baseline", "--reps", "1", "--warmup", "0", "--output-dir", out,
  ]);
  assertEquals(r.code, 0, r.stderr);
  const rows = JSON.parse(await Deno.readTextFile(join(out, "attn_p1.json"))) as AttnBenchRow[];
  assertEquals(rows.map((x) => x.mask), ["causal", "window"]);
  // Query p sees keys max(0, p - 63) ..= p.
  let pairs = 0;
  for (let p = 0; p < 300; p++) pairs += Math.min(p + 1, 64);
  assertEquals(rows[1].visiblePairs, pairs);
  const ratio = (rows[0].visiblePairs / pairs).toFixed(2);
  assert(
    r.stdout.includes(`sliding window: speedup`) && r.stdout.includes(`ratio ${ratio}x`),
    r.stdout,
  );
  for (const bad of ["0", "-3", "1.5", "many"]) {
    const b = await runCli(["bench", "attn", "--device", "cpu", "--sliding-window", bad]);
    assert(b.code !== 0 && b.stderr.includes("--sliding-window"), b.stderr);
  }
  await Deno.remove(out, { recursive: true });
});

Deno.test("bench train: tokens/s and MFU of a small run over 2 CPU ranks with full_shard", async () => {
  const out = await Deno.makeTempDir();
  const r = await runCli([
    "bench",
    "train",
    "--model",
    "debug-tiny",
    "--model-max-length",
    "32",
    "--nproc-per-node",
    "2",
    "--max-steps",
    "2",
    "--output-dir",
    out,
  ]);
  assertEquals(r.code, 0, r.stderr);
  assert(/bench train: debug-tiny .* tokens\/s, MFU/.test(r.stdout), r.stdout);
  assert(r.stderr.includes("full_shard (ZeRO-3)"), r.stderr);
  // The peer's model: the same config, as the config.json transformers reads.
  const peer = parseHfConfig(
    JSON.parse(await Deno.readTextFile(join(out, "baseline_config.json"))),
    "baseline_config.json",
  );
  assertEquals(paramCount(peer), paramCount(presetConfig("debug-tiny")));
  assertEquals(peer.numLayers, presetConfig("debug-tiny").numLayers);
  await Deno.remove(out, { recursive: true });
});

Deno.test("bench train runs again in its own folder, and never writes into another run's", async () => {
  const out = await Deno.makeTempDir();
  const args = ["bench", "train", "--model", "debug-tiny", "--model-max-length", "32"];
  try {
    for (const attempt of [1, 2]) {
      const r = await runCli([...args, "--max-steps", "2", "--output-dir", out, "--no-baseline"]);
      assertEquals(r.code, 0, `attempt ${attempt}: ${r.stderr}`);
    }
    // A folder with someone else's files (here a training run's metrics) is left alone.
    const foreign = await Deno.makeTempDir();
    await Deno.writeTextFile(`${foreign}/metrics.jsonl`, '{"step":1}\n');
    const r = await runCli([...args, "--max-steps", "2", "--output-dir", foreign, "--no-baseline"]);
    assert(r.code !== 0 && r.stderr.includes("did not write"), r.stderr);
    assertEquals(await Deno.readTextFile(`${foreign}/metrics.jsonl`), '{"step":1}\n');
    await Deno.remove(foreign, { recursive: true });
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("scripts/host_overhead.ts counts a step's native calls against a stub library", async () => {
  const script = new URL("../scripts/host_overhead.ts", import.meta.url).pathname;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script, "--model", "debug-tiny", "--tokens", "64", "--steps", "1"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
  assert(/\d+ native calls per step \(df_gemm \d+/.test(text), text);
  assert(/TypeScript per step: [\d.]+ ms/.test(text), text);
});

Deno.test("scripts/check_trained_checkpoint.ts runs on the CPU up to the transformers comparison", async () => {
  // A GPU-only script once wrote logits for a 256-token vocabulary after debug-tiny grew to 259: CI
  // runs everything of it but the Python comparison.
  const script = new URL("../scripts/check_trained_checkpoint.ts", import.meta.url).pathname;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script, "--no-transformers"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
  assert(text.includes("reference written"), text);
});
