/**
 * Durability and error propagation of saves, through test-only hooks (each run in a process of
 * its own: test files share this process's environment):
 * - DISTFLASH_TEST_SYNC_LOG records every flush to disk: every file of every checkpoint is flushed
 *   before complete.json is written, complete.json before its folder, the folder before the
 *   output folder's rename is flushed; every file of the final model is flushed (the atomic
 *   writer's own flush: nothing else flushes those).
 * - DISTFLASH_TEST_FAIL_SYNC fails one file's flush: the save fails naming it, nothing is counted.
 * - DISTFLASH_TEST_FAIL_HOST_UPDATE fails the offloaded optimizer's host AdamW in the middle of a
 *   step: the run ends with that error, and no checkpoint or model of the half-updated step is
 *   left; `last` resumes the previous checkpoint and continues the uninterrupted run exactly.
 */
import { assert, assertEquals, assertLess } from "./assert.ts";
import { runCli, runIdOf, SAVING_RUN, trainFlags } from "./_util.ts";
import { TEST_FAIL_SYNC_ENV, TEST_SYNC_LOG_ENV } from "../src/io/files.ts";
import { TEST_FAIL_HOST_UPDATE_ENV } from "../src/parallel/zero3.ts";
import { join } from "node:path";

const args = ["train", ...trainFlags({ ...SAVING_RUN, saveFinalModel: true })];
const metrics = (dir: string): { step: number; loss: number }[] =>
  Deno.readTextFileSync(join(dir, "metrics.jsonl")).trim().split("\n").map((l) => JSON.parse(l));
const names = (dir: string) => [...Deno.readDirSync(dir)].map((e) => e.name).sort();

Deno.test("save durability: every file of a checkpoint and of the final model is flushed, in order", async () => {
  const root = await Deno.makeTempDir();
  const out = join(root, "out"), log = join(root, "flushes.log");
  const r = await runCli([...args, "--max-steps", "2", "--output-dir", out], {
    [TEST_SYNC_LOG_ENV]: log,
  });
  assertEquals(r.code, 0, r.stderr);
  const flushed = Deno.readTextFileSync(log).trim().split("\n");
  const runId = runIdOf(out);
  for (const step of [1, 2]) {
    const tmp = join(out, `checkpoint-${step}.tmp-${runId}`);
    const files = names(join(out, `checkpoint-${step}`));
    assert(files.includes("complete.json"), files.join(" "));
    const record = flushed.indexOf(join(tmp, "complete.json"));
    assert(record >= 0, `complete.json of step ${step} not flushed:\n${flushed.join("\n")}`);
    for (const f of files.filter((f) => f !== "complete.json")) {
      const at = flushed.indexOf(join(tmp, f));
      assert(at >= 0 && at < record, `${f} of step ${step} not flushed before complete.json`);
    }
    const folder = flushed.indexOf(tmp);
    assert(folder > record, `the folder of step ${step} not flushed after complete.json`);
    const parent = flushed.indexOf(out, folder);
    assert(parent > folder, `the output folder not flushed after the rename of step ${step}`);
  }
  // The final model: written by the atomic writer alone, which promises each file's flush.
  const finalFiles = ["config.json", "model.safetensors", "trainer_state.json"];
  for (const f of finalFiles) {
    assert(flushed.includes(join(out, f)), `${f} of the final model not flushed`);
  }
  await Deno.remove(root, { recursive: true });
});

Deno.test("save durability: a failed flush fails the save, naming the file, and nothing is counted", async () => {
  const root = await Deno.makeTempDir();
  for (const file of ["optimizer", "complete.json"]) {
    const out = join(root, file);
    const r = await runCli([...args, "--max-steps", "2", "--output-dir", out], {
      [TEST_FAIL_SYNC_ENV]: file,
    });
    assert(r.code !== 0, `${file}: the save did not fail`);
    assert(r.stderr.includes("Input/output error") && r.stderr.includes(file), r.stderr);
    assert(r.stderr.includes("step 1"), r.stderr);
    const left = names(out);
    assert(!left.some((n) => n.startsWith("checkpoint-")), `${file}: ${left.join(" ")}`);
    assert(!left.includes("model.safetensors"), `${file}: ${left.join(" ")}`);
  }
  await Deno.remove(root, { recursive: true });
});

Deno.test("save durability: a failed host optimizer update is an error, never a checkpoint of the half-updated step", async () => {
  const root = await Deno.makeTempDir();
  const offload = ["--fsdp", "full_shard", "--offload-optimizer", "--max-steps", "3"];
  const ref = join(root, "ref");
  const done = await runCli([...args, ...offload, "--output-dir", ref]);
  assertEquals(done.code, 0, done.stderr);
  const reference = metrics(ref);
  // debug-tiny's sharded store has 4 units: update 6 is the second unit of step 2. With a save
  // every step the save awaits it; with saves every 2 steps, the forward of step 3 does.
  for (const saveSteps of ["1", "2"]) {
    const out = join(root, `save-every-${saveSteps}`);
    const r = await runCli(
      [...args, ...offload, "--save-steps", saveSteps, "--output-dir", out],
      { [TEST_FAIL_HOST_UPDATE_ENV]: "6" },
    );
    assert(r.code !== 0, `save every ${saveSteps}: the run did not fail`);
    assert(r.stderr.includes("the host AdamW update failed"), r.stderr);
    const left = names(out);
    const kept = left.filter((n) => n.startsWith("checkpoint-"));
    assertEquals(kept, saveSteps === "1" ? ["checkpoint-1"] : [], `save every ${saveSteps}`);
    assert(!left.includes("model.safetensors"), left.join(" "));
    if (saveSteps === "1") {
      const resumed = await runCli([
        ...args,
        ...offload,
        "--output-dir",
        out,
        "--resume-from-checkpoint",
        "last",
      ]);
      assertEquals(resumed.code, 0, resumed.stderr);
      const after = metrics(out);
      assertEquals(after.map((m) => m.step), [1, 2, 3]);
      for (const s of [1, 2]) assertLess(Math.abs(after[s].loss - reference[s].loss), 1e-6);
    }
  }
  await Deno.remove(root, { recursive: true });
});
