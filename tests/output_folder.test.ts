/**
 * The output folder holds nothing lost and nothing leaked (README "Reliability"): the lock dies
 * with the process that holds it (kill -9, a zombie, a reused pid), and files that are not the
 * run's own are never overwritten or deleted.
 */
import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { runIdOf, SAVING_RUN } from "./_util.ts";
import { train } from "../src/train/trainer.ts";
import { readCompletion } from "../src/train/checkpoint.ts";
import { checkOutputDir, claimOutputDir, LOCK_FILE } from "../src/train/output_dir.ts";
import { resolveTrainOptions } from "../src/train/resolve_options.ts";
import { join } from "node:path";
import { hostname } from "node:os";
import { fileURLToPath } from "node:url";

const holder = fileURLToPath(new URL("./workers/lock_holder.ts", import.meta.url));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const quiet = { log: () => {} };
const base = SAVING_RUN;
const freshPlan = { runId: null, resumeDir: null, resumeSource: null, notes: [] };

/**
 * "zombie" once every thread of process `pid` has exited but its /proc entry stays (its parent has
 * not reaped it), "gone" once reaped, else "running" (a killed process's threads take a moment).
 */
function procState(pid: number): "zombie" | "gone" | "running" {
  try {
    const status = Deno.readTextFileSync(`/proc/${pid}/status`);
    const zombie = /^State:\s+Z/m.test(status) && /^Threads:\s+1$/m.test(status);
    return zombie ? "zombie" : "running";
  } catch {
    return "gone";
  }
}

/** Reads `child`'s stdout until a line matches `pattern`; returns the match. */
async function readUntil(
  child: Deno.ChildProcess,
  pattern: RegExp,
): Promise<RegExpMatchArray> {
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`ended before ${pattern}: ${text}`);
      text += value;
      const m = text.match(pattern);
      if (m) return m;
    }
  } finally {
    reader.releaseLock();
  }
}

Deno.test("output folder: the lock dies with its holder (kill -9, zombie), a live one refuses with its pid and host", async () => {
  const out = await Deno.makeTempDir();
  // The holder's parent execs `sleep`, which never reaps it: killed, it stays a zombie, as a
  // killed run's ranks do until PID 1 reaps them (indefinitely where PID 1 does not).
  const parent = new Deno.Command("sh", {
    args: ["-c", `"$0" run -A "$1" "$2" & exec sleep 600`, Deno.execPath(), holder, out],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  try {
    const pid = Number((await readUntil(parent, /held (\d+)/))[1]);
    // A live holder: refused, naming its pid and host.
    for (const resume of [undefined, "last"]) {
      const e = assertThrows(() =>
        checkOutputDir({
          outputDir: out,
          modelDir: null,
          resumeFromCheckpoint: resume,
          overwriteOutputDir: true,
        })
      );
      assert(e.message.includes("in use by another run"), e.message);
      assert(e.message.includes(`pid ${pid} on ${hostname()}`), e.message);
    }
    const taken = assertThrows(() => claimOutputDir(out, freshPlan, true, () => {}));
    assert(taken.message.includes(`pid ${pid}`), taken.message);
    // Killed: a zombie at once (its /proc entry stays), and the lock is free at once.
    Deno.kill(pid, "SIGKILL");
    for (let i = 0; i < 400 && procState(pid) === "running"; i++) await sleep(25);
    assertEquals(procState(pid), "zombie", "the killed holder stays a zombie");
    const plan = checkOutputDir({ outputDir: out, modelDir: null, overwriteOutputDir: true });
    assertEquals(plan.resumeDir, null);
    const lines: string[] = [];
    const lock = claimOutputDir(out, plan, true, (l) => lines.push(l));
    assert(lines.some((l) => l.includes("taking over")), lines.join("\n"));
    // The new holder's text names this process, and it refuses others while it holds the lock.
    const text = JSON.parse(Deno.readTextFileSync(join(out, LOCK_FILE)));
    assertEquals([text.pid, text.host, text.run_id], [Deno.pid, hostname(), lock.runId]);
    const second = assertThrows(() =>
      checkOutputDir({ outputDir: out, modelDir: null, overwriteOutputDir: true })
    );
    assert(second.message.includes(`pid ${Deno.pid}`), second.message);
    lock.release();
    assert(!Deno.readDirSync(out).some((x) => x.name === LOCK_FILE), "released");
  } finally {
    parent.kill("SIGKILL");
    await parent.status;
    await parent.stdout.cancel().catch(() => {});
  }
  await Deno.remove(out, { recursive: true });
});

Deno.test("output folder: a lock file naming a live pid that holds no lock (a reused pid) is taken over", () => {
  const out = Deno.makeTempDirSync();
  // This very process is alive, but does not hold the lock: the pid was reused.
  Deno.writeTextFileSync(
    join(out, LOCK_FILE),
    JSON.stringify({ pid: Deno.pid, host: hostname(), run_id: "gone" }),
  );
  const plan = checkOutputDir({ outputDir: out, modelDir: null, overwriteOutputDir: false });
  const lines: string[] = [];
  const lock = claimOutputDir(out, plan, false, (l) => lines.push(l));
  assert(lines.some((l) => l.includes("taking over")), lines.join("\n"));
  lock.release();
  Deno.removeSync(out, { recursive: true });
});

/** A copy of the checkpoint folder `from` at `to`, its complete.json naming run `runId`, step `step`. */
function copyCheckpoint(from: string, to: string, runId: string, step: number): void {
  Deno.mkdirSync(to);
  for (const e of Deno.readDirSync(from)) Deno.copyFileSync(join(from, e.name), join(to, e.name));
  const record = JSON.parse(Deno.readTextFileSync(join(to, "complete.json")));
  Deno.writeTextFileSync(
    join(to, "complete.json"),
    JSON.stringify({ ...record, run_id: runId, step }),
  );
}

/** Every file under `dir` (recursively) and its bytes, to compare before and after. */
function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string, prefix: string) => {
    for (const e of Deno.readDirSync(d)) {
      if (e.isDirectory) walk(join(d, e.name), `${prefix}${e.name}/`);
      else out[`${prefix}${e.name}`] = [...Deno.readFileSync(join(d, e.name))].join(",");
    }
  };
  walk(dir, "");
  return out;
}

Deno.test("output folder: a save never replaces a checkpoint-N this run did not write", async () => {
  const out = await Deno.makeTempDir();
  await train({ ...base, maxSteps: 2, outputDir: out }, quiet);
  const runId = runIdOf(out), third = join(out, "checkpoint-3");
  const resume = { ...base, maxSteps: 3, outputDir: out, resumeFromCheckpoint: "last" };
  const refused = async (what: string) => {
    const before = Deno.lstatSync(third).isDirectory
      ? snapshot(third)
      : Deno.readTextFileSync(third);
    const e = await assertRejects(() => train(resume, quiet));
    assert(e.message.includes(`${third} already exists`), `${what}: ${e.message}`);
    assert(e.message.includes("--overwrite-output-dir"), `${what}: ${e.message}`);
    const after = Deno.lstatSync(third).isDirectory
      ? snapshot(third)
      : Deno.readTextFileSync(third);
    assertEquals(after, before, `${what} untouched`);
    assert(!Deno.readDirSync(out).some((x) => x.name.includes(".tmp-")), "nothing left behind");
  };
  // Another run's complete checkpoint (README: neither resumed nor pruned; nor replaced).
  copyCheckpoint(join(out, "checkpoint-2"), third, "another-run", 3);
  await refused("another run's checkpoint");
  Deno.removeSync(third, { recursive: true });
  // A user's folder and a user's file under the name.
  Deno.mkdirSync(third);
  Deno.writeTextFileSync(join(third, "notes.txt"), "my notes");
  await refused("a user's folder");
  Deno.removeSync(third, { recursive: true });
  Deno.writeTextFileSync(third, "my notes");
  await refused("a user's file");
  // --overwrite-output-dir lets the run replace it.
  await train({ ...resume, overwriteOutputDir: true }, quiet);
  assertEquals(readCompletion(third).run_id, runId);
  // This run's own checkpoint is replaced as before (resuming an older one saves step 3 again).
  const again = await train(
    { ...resume, resumeFromCheckpoint: join(out, "checkpoint-2") },
    quiet,
  );
  assertEquals(again.steps, 3);
  assertEquals(readCompletion(third).run_id, runId);
  await Deno.remove(out, { recursive: true });
});

Deno.test("output folder: a fresh run refuses a folder of files that are not a run's, unless --overwrite-output-dir", async () => {
  const root = await Deno.makeTempDir();
  // An HF model folder (not the model trained), a run's checkpoint folder given as --output-dir,
  // and an earlier run's folder with only its metrics.
  const model = join(root, "model"), run = join(root, "run"), metricsOnly = join(root, "metrics");
  await train({ ...base, maxSteps: 1, saveFinalModel: true, outputDir: run }, quiet);
  Deno.mkdirSync(model);
  for (const name of ["config.json", "model.safetensors"]) {
    Deno.copyFileSync(join(run, name), join(model, name));
  }
  Deno.mkdirSync(metricsOnly);
  Deno.copyFileSync(join(run, "metrics.jsonl"), join(metricsOnly, "metrics.jsonl"));
  const cases: [string, string, RegExp][] = [
    [model, "config.json", /a model folder/],
    [join(run, "checkpoint-1"), "complete.json", /a checkpoint folder/],
    [metricsOnly, "metrics.jsonl", /run\.json is gone/],
  ];
  for (const [outputDir, named, kind] of cases) {
    const before = snapshot(outputDir);
    const e = await assertRejects(() => train({ ...base, maxSteps: 1, outputDir }, quiet));
    assert(e.message.includes(join(outputDir, named)), e.message);
    assert(kind.test(e.message) && e.message.includes("--overwrite-output-dir"), e.message);
    assertEquals(snapshot(outputDir), before, `${outputDir} untouched`);
  }
  // A folder with files a run never writes (a Slurm log, notes) is still a fresh run's.
  const other = join(root, "other");
  Deno.mkdirSync(other);
  Deno.writeTextFileSync(join(other, "slurm-1.out"), "job log");
  await train({ ...base, maxSteps: 1, saveFinalModel: true, outputDir: other }, quiet);
  assertEquals(Deno.readTextFileSync(join(other, "slurm-1.out")), "job log");
  // --overwrite-output-dir: the run goes ahead and writes over them.
  await train({
    ...base,
    maxSteps: 1,
    saveFinalModel: true,
    outputDir: model,
    overwriteOutputDir: true,
  }, quiet);
  assert(Deno.readDirSync(model).some((x) => x.name === "run.json"));
  await Deno.remove(root, { recursive: true });
});

Deno.test("output folder: --overwrite-output-dir deletes only the folder's run's own checkpoints", async () => {
  const out = await Deno.makeTempDir();
  await train({ ...base, maxSteps: 2, outputDir: out }, quiet);
  const earlier = runIdOf(out);
  // Not the run's own: a user's checkpoint-best/ and notes, another run's complete checkpoint-7,
  // a padded copy; the run's own leftover of an interrupted save goes with its checkpoints.
  Deno.mkdirSync(join(out, "checkpoint-best"));
  Deno.writeTextFileSync(join(out, "checkpoint-best", "weights.bin"), "best");
  Deno.writeTextFileSync(join(out, "checkpoint-notes.txt"), "notes");
  copyCheckpoint(join(out, "checkpoint-2"), join(out, "checkpoint-7"), "another-run", 7);
  copyCheckpoint(join(out, "checkpoint-2"), join(out, "checkpoint-0002"), earlier, 2);
  Deno.mkdirSync(join(out, `checkpoint-3.tmp-${earlier}`));
  Deno.mkdirSync(join(out, "checkpoint-4.tmp-another-run"));
  const kept = ["checkpoint-best", "checkpoint-notes.txt", "checkpoint-7", "checkpoint-0002"]
    .concat(["checkpoint-4.tmp-another-run"]);
  const before = Object.fromEntries(
    kept.map((n) => [n, Deno.lstatSync(join(out, n)).isDirectory ? snapshot(join(out, n)) : {}]),
  );
  const lines: string[] = [];
  await train(
    { ...base, maxSteps: 1, outputDir: out, overwriteOutputDir: true },
    { log: (l) => lines.push(l) },
  );
  const deleted = lines.filter((l) => l.startsWith("--overwrite-output-dir: deleted"));
  const names = (list: string[]) => list.map((l) => l.slice(l.lastIndexOf("/") + 1)).sort();
  assertEquals(names(deleted), [
    "checkpoint-1",
    "checkpoint-2",
    `checkpoint-3.tmp-${earlier}`,
    "metrics.jsonl",
    "run.json",
  ]);
  for (const n of kept) {
    const path = join(out, n);
    assertEquals(Deno.lstatSync(path).isDirectory ? snapshot(path) : {}, before[n], `${n} kept`);
  }
  assertEquals(Deno.readTextFileSync(join(out, "checkpoint-notes.txt")), "notes");
  assert(runIdOf(out) !== earlier, "a new run");
  assertEquals(readCompletion(join(out, "checkpoint-1")).run_id, runIdOf(out));
  assert(!Deno.readDirSync(out).some((x) => x.name === "checkpoint-2"), "the earlier run's went");
  await Deno.remove(out, { recursive: true });
});

Deno.test("output folder: --overwrite-output-dir deletes the earlier run's event files in runs/, not a user's", async () => {
  const out = await Deno.makeTempDir();
  await train({ ...base, maxSteps: 2, outputDir: out, reportTo: "tensorboard" }, quiet);
  const runs = join(out, "runs");
  const written = [...Deno.readDirSync(runs)].map((e) => e.name);
  assertEquals(written.length, 1, written.join(", "));
  // As an earlier run in another second and process names it (this process would reuse the name).
  const earlierEvents = ["events.out.tfevents.1700000000.somehost.4242.distflash"];
  Deno.renameSync(join(runs, written[0]), join(runs, earlierEvents[0]));
  Deno.writeTextFileSync(join(runs, "notes.txt"), "mine");
  Deno.writeTextFileSync(join(runs, "events.out.tfevents.1.other-tool"), "theirs");
  const lines: string[] = [];
  await train(
    { ...base, maxSteps: 1, outputDir: out, reportTo: "tensorboard", overwriteOutputDir: true },
    { log: (l) => lines.push(l) },
  );
  assert(
    lines.includes(`--overwrite-output-dir: deleted ${join(runs, earlierEvents[0])}`),
    lines.join("\n"),
  );
  const now = [...Deno.readDirSync(runs)].map((e) => e.name).sort();
  assert(!now.includes(earlierEvents[0]), "the earlier run's curve went");
  assertEquals(now.filter((n) => n.endsWith(".distflash")).length, 1, "this run's own file");
  assertEquals(Deno.readTextFileSync(join(runs, "notes.txt")), "mine");
  assertEquals(Deno.readTextFileSync(join(runs, "events.out.tfevents.1.other-tool")), "theirs");
  await Deno.remove(out, { recursive: true });
});

Deno.test("output folder: writes never follow a symbolic training_args.json or runs/", async () => {
  const root = await Deno.makeTempDir();
  const out = join(root, "out"), target = join(root, "precious.json"), dir = join(root, "tb");
  Deno.mkdirSync(out);
  Deno.mkdirSync(dir);
  Deno.writeTextFileSync(target, "keep me");
  for (const [name, to] of [["training_args.json", target], ["runs", dir]]) {
    Deno.symlinkSync(to, join(out, name));
    const e = await assertRejects(() =>
      train({ ...base, maxSteps: 1, outputDir: out, reportTo: "tensorboard" }, quiet)
    );
    assert(
      e.message.includes(`${name} -> ${to}`) && e.message.includes("symbolic link"),
      e.message,
    );
    Deno.removeSync(join(out, name));
  }
  assertEquals(Deno.readTextFileSync(target), "keep me");
  assertEquals([...Deno.readDirSync(dir)], [], "nothing written into the linked runs/");
  await Deno.remove(root, { recursive: true });
});

Deno.test("options: --seed beyond 2^53-1 is refused when parsed (its checkpoints could never resume)", () => {
  for (const seed of ["9007199254740992", "9007199254740993", "1e300", 2 ** 53, -(2 ** 53)]) {
    const e = assertThrows(() =>
      resolveTrainOptions({ model: "debug-tiny", synthetic: true, seed })
    );
    assert(e.message.startsWith("--seed:"), e.message);
    assert(
      e.message.includes("2^53-1") || e.message.includes("must be >= 0"),
      `${seed}: ${e.message}`,
    );
  }
  const e = assertThrows(() =>
    resolveTrainOptions({ model: "debug-tiny", synthetic: true, seed: "9007199254740993" })
  );
  assert(e.message.includes("9007199254740993 is beyond 2^53-1"), e.message);
  assertEquals(
    resolveTrainOptions({ model: "debug-tiny", synthetic: true, seed: "9007199254740991" }).options
      .seed,
    2 ** 53 - 1,
  );
});

Deno.test("output folder: an earlier run's folder holding only checkpoints (run.json gone) refuses a fresh run", async () => {
  const out = await Deno.makeTempDir();
  try {
    // checkpoint-7 only: a fresh run would not reach step 7's save before mixing its files in.
    Deno.mkdirSync(join(out, "checkpoint-7"));
    Deno.writeTextFileSync(join(out, "checkpoint-7", "trainer_state.json"), "{}");
    const e = await assertRejects(() =>
      train({ ...SAVING_RUN, maxSteps: 1, outputDir: out }, { log: () => {} })
    );
    assert(e.message.includes("holds an earlier run (checkpoint-7)"), e.message);
    assertEquals([...Deno.readDirSync(out)].map((d) => d.name), ["checkpoint-7"]);
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});
