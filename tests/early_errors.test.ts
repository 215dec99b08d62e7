/**
 * Errors that name the flag to change, found before any rank starts (README "Reliability"): an
 * unresolvable --master-addr, an output folder that cannot be written, data files whose first
 * record lacks the text field (named as --text-field); and `plot` on a metrics.jsonl whose last
 * line a full disk cut short.
 */
import { assert, assertEquals } from "./assert.ts";
import { runCli, SAVING_RUN, trainFlags } from "./_util.ts";
import { train } from "../src/train/trainer.ts";
import { readRunRecords } from "../src/train/plot.ts";
import { existsSync } from "node:fs";
import { join } from "node:path";

const tiny = { ...SAVING_RUN, maxSteps: 1 };
const two = ["--nproc-per-node", "2"];

Deno.test("early errors: --master-addr that does not resolve is named by the launcher", async () => {
  const out = await Deno.makeTempDir();
  const r = await runCli([
    "train",
    ...trainFlags(tiny),
    ...two,
    ...["--master-addr", "999.1.1.1", "--output-dir", out],
  ]);
  assertEquals(r.code, 1, r.stderr);
  assert(r.stderr.includes("--master-addr 999.1.1.1: not an address"), r.stderr);
  assert(!existsSync(join(out, "logs")), "no rank was started");
  await Deno.remove(out, { recursive: true });
});

Deno.test("early errors: an output folder that cannot be written names --output-dir", async () => {
  // Nobody may create folders in /sys (EPERM, even as root; EACCES otherwise).
  const out = "/sys/distflash-early-errors-test";
  let message = "";
  try {
    await train({ ...tiny, outputDir: out }, { log: () => {} });
  } catch (error) {
    message = (error as Error).message;
  }
  assert(message.startsWith(`--output-dir ${out}: cannot write there`), message);
  const r = await runCli(["train", ...trainFlags(tiny), ...two, "--output-dir", out]);
  assertEquals(r.code, 1, r.stderr);
  assert(r.stderr.includes(`--output-dir ${out}: cannot create`), r.stderr);
});

Deno.test("early errors: a data file without the text field is refused by the launcher, naming --text-field", async () => {
  const dir = await Deno.makeTempDir();
  const data = join(dir, "data.jsonl"), out = join(dir, "out");
  await Deno.writeTextFile(data, '{"body": "hello"}\n{"body": "world"}\n');
  const r = await runCli([
    "train",
    ...trainFlags({ ...tiny, synthetic: false, dataPath: data }),
    ...two,
    "--output-dir",
    out,
  ]);
  assertEquals(r.code, 1, r.stderr);
  assert(r.stderr.includes(`${data}:1: missing field "text"`), r.stderr);
  assert(r.stderr.includes("--text-field"), r.stderr);
  assert(!r.stderr.includes("textField option"), r.stderr);
  assert(!existsSync(join(out, "logs")), "no rank was started");
  await Deno.remove(dir, { recursive: true });
});

Deno.test("early errors: plot skips a metrics.jsonl line cut short at the end, with a note", async () => {
  const dir = await Deno.makeTempDir();
  const lines = [1, 2].map((step) => JSON.stringify({ step, loss: 5 - step }));
  const metrics = join(dir, "metrics.jsonl");
  // A full disk stopped the third append in the middle.
  await Deno.writeTextFile(metrics, lines.join("\n") + '\n{"step": 3, "lo');
  const notes: string[] = [];
  const records = await readRunRecords(dir, (n) => notes.push(n));
  assertEquals(records.map((r) => r.step), [1, 2]);
  assert(notes.length === 1 && notes[0].includes(`${metrics}:3`), notes.join("\n"));
  const r = await runCli(["plot", dir]);
  assertEquals(r.code, 0, r.stderr);
  assert(r.stderr.includes("cut short"), r.stderr);
  assert(existsSync(join(dir, "curves.svg")));
  // A bad line that is not the last is still an error.
  await Deno.writeTextFile(metrics, '{"step": 1, "lo\n' + lines[1] + "\n");
  const bad = await runCli(["plot", dir]);
  assertEquals(bad.code, 1, bad.stderr);
  assert(bad.stderr.includes(`${metrics}:1: not JSON`), bad.stderr);
  await Deno.remove(dir, { recursive: true });
});
