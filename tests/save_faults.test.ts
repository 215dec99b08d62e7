/**
 * Saves that fail on a full disk (README "Reliability"), through the test-only fault hook
 * DISTFLASH_TEST_FAIL_WRITE of the atomic writer: the error names the file, the step and the
 * folder; the unfinished folder is removed and never counted; the previous checkpoint stays and
 * `--resume-from-checkpoint last` continues the loss curve exactly; on 2 ranks the healthy rank
 * stops within seconds.
 */
import { assert, assertEquals, assertLess } from "./assert.ts";
import { runCli, runIdOf, SAVING_RUN, trainFlags } from "./_util.ts";
import { train } from "../src/train/trainer.ts";
import { lastCheckpoint, scanCheckpoints } from "../src/train/checkpoint.ts";
import { TEST_FAIL_WRITE_ENV } from "../src/io/files.ts";
import { freePort } from "../src/launch/launcher.ts";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const main = fileURLToPath(new URL("../cli/main.ts", import.meta.url));
const quiet = { log: () => {} };
const base = SAVING_RUN;

const baseArgs = ["train", ...trainFlags(base)];
/** The 2-rank runs: full_shard, 4 steps. */
const cliArgs = [...baseArgs, "--fsdp", "full_shard", "--max-steps", "4"];

interface Metric {
  step: number;
  loss: number;
}
const metrics = (dir: string): Metric[] =>
  Deno.readTextFileSync(join(dir, "metrics.jsonl")).trim().split("\n").map((l) => JSON.parse(l));

/** Keeps checkpoints 1 and 2 of a finished 4-step run: the state of a run saved up to step 2. */
function rewindToStep2(out: string): void {
  for (const step of [3, 4]) Deno.removeSync(join(out, `checkpoint-${step}`), { recursive: true });
}

/**
 * After the failed save of step 3: nothing of it is left (no folder, no temporary file), the
 * complete checkpoints 1 and 2 stay, and `last` is checkpoint-2.
 */
function assertFailedSaveLeftNothing(out: string, what: string): void {
  const names = [...Deno.readDirSync(out)].map((e) => e.name);
  assert(!names.some((n) => n.startsWith("checkpoint-3")), `${what}: ${names.join(" ")}`);
  assert(!names.some((n) => n.includes(".tmp-")), `${what}: ${names.join(" ")}`);
  const runId = runIdOf(out);
  const usable = scanCheckpoints(out, runId).filter((e) => e.usable).map((e) => e.name).sort();
  assertEquals(usable, ["checkpoint-1", "checkpoint-2"], what);
  assertEquals(lastCheckpoint(out, runId).path, join(out, "checkpoint-2"), what);
}

/** The resumed steps 3 and 4 have the uninterrupted run's losses. */
function assertContinuesExactly(out: string, reference: Metric[], what: string): void {
  const after = metrics(out);
  assertEquals(after.map((m) => m.step), [1, 2, 3, 4], what);
  for (const s of [2, 3]) {
    assertLess(Math.abs(after[s].loss - reference[s].loss), 1e-6, `${what}: step ${s + 1}`);
  }
}

Deno.test("save faults, 1 rank: a full disk on any checkpoint file fails cleanly, last resumes exactly", async () => {
  const out = await Deno.makeTempDir();
  await train({ ...base, maxSteps: 4, outputDir: out }, quiet);
  const reference = metrics(out);
  // Every kind of file a checkpoint holds, through each of the writers that save them.
  const files = ["model.safetensors", "optimizer", "config.json", "trainer_state", "complete.json"];
  for (const file of files) {
    rewindToStep2(out);
    const folder = join(out, `checkpoint-3.tmp-${runIdOf(out)}`);
    // In a process of its own: test files run in parallel threads of this one and share its
    // environment, so setting the hook here would fail their saves too.
    const failed = await runCli(
      [...baseArgs, "--max-steps", "4", "--output-dir", out, "--resume-from-checkpoint", "last"],
      { [TEST_FAIL_WRITE_ENV]: file },
    );
    assert(failed.code !== 0, `${file}: the save did not fail`);
    const said = failed.stderr;
    assert(said.includes("step 3") && said.includes(folder), `${file}: ${said}`);
    assert(said.includes(`${folder}/${file}`) && said.includes("No space left"), said);
    assertFailedSaveLeftNothing(out, file);
    await train({ ...base, maxSteps: 4, outputDir: out, resumeFromCheckpoint: "last" }, quiet);
    assertContinuesExactly(out, reference, file);
  }
  await Deno.remove(out, { recursive: true });
});

interface RankResult {
  code: number;
  stderr: string;
  /** When the rank exited (performance.now()). */
  endedAt: number;
}

/** Runs 2 full_shard ranks on `out`; `faultOnRank1` sets the fault hook for rank 1 only. */
function twoRanks(out: string, extra: string[], faultOnRank1?: string): Promise<RankResult[]> {
  const port = String(freePort());
  return Promise.all([0, 1].map(async (r) => {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", main, ...cliArgs, ...extra, "--output-dir", out],
      env: {
        NO_COLOR: "1",
        RANK: `${r}`,
        WORLD_SIZE: "2",
        MASTER_ADDR: "127.0.0.1",
        MASTER_PORT: port,
        DISTFLASH_JOB_SECRET: "save-faults-test-secret",
        ...(r === 1 && faultOnRank1 ? { [TEST_FAIL_WRITE_ENV]: faultOnRank1 } : {}),
      },
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const result = await child.output();
    const endedAt = performance.now();
    return { code: result.code, stderr: new TextDecoder().decode(result.stderr), endedAt };
  }));
}

Deno.test("save faults, 2 ranks full_shard: one rank's optimizer shard fails, the other stops, last resumes exactly", async () => {
  const out = await Deno.makeTempDir();
  const first = await twoRanks(out, []);
  first.forEach((r, i) => assertEquals(r.code, 0, `rank ${i}: ${r.stderr}`));
  const reference = metrics(out);
  rewindToStep2(out);
  const folder = join(out, `checkpoint-3.tmp-${runIdOf(out)}`);
  const resume = ["--resume-from-checkpoint", "last"];
  const [rank0, rank1] = await twoRanks(out, resume, "optimizer");
  assertEquals(rank1.code, 1, rank1.stderr);
  const file = join(folder, "optimizer.rank1-of-2.safetensors");
  assert(rank1.stderr.includes(file) && rank1.stderr.includes("step 3"), rank1.stderr);
  assert(rank1.stderr.includes("No space left"), rank1.stderr);
  // The healthy rank does not hang: it fails as soon as its peer gave up.
  assert(rank0.code !== 0, rank0.stderr);
  assertLess(Math.abs(rank0.endedAt - rank1.endedAt), 10_000, rank0.stderr);
  assert(rank0.stderr.includes("step 3") && rank0.stderr.includes(folder), rank0.stderr);
  assertFailedSaveLeftNothing(out, "2 ranks");
  const again = await twoRanks(out, resume);
  again.forEach((r, i) => assertEquals(r.code, 0, `rank ${i}: ${r.stderr}`));
  assertContinuesExactly(out, reference, "2 ranks");
  await Deno.remove(out, { recursive: true });
});
