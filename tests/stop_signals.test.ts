/**
 * Stopping a run by signal however it was started (README "Reliability"): one Ctrl-C through
 * `deno task distflash train --nproc-per-node 2` reaches the whole process group (`deno task`, the
 * launcher and both ranks) and is forwarded as well, yet it is one request: finish the step, save,
 * say how to resume. SIGTERM while the ranks are still starting says that nothing was saved.
 */
import { assert, assertEquals } from "./assert.ts";
import { runIdOf, SAVING_RUN, trainFlags } from "./_util.ts";
import { lastCheckpoint, readTrainerState } from "../src/train/checkpoint.ts";
import { LOCK_FILE } from "../src/train/output_dir.ts";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const main = join(root, "cli", "main.ts");
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const twoRanks = [
  "train",
  ...trainFlags(SAVING_RUN),
  ...["--max-steps", "100000", "--save-strategy", "no", "--fsdp", "full_shard"],
  ...["--nproc-per-node", "2", "--master-port", "0"],
];

async function waitFor(what: string, ready: () => boolean): Promise<void> {
  for (let i = 0; i < 2400; i++) { // up to 120 s: a loaded machine starts ranks slowly
    if (ready()) return;
    await sleep(50);
  }
  throw new Error(`${what} never happened`);
}

const logged = (out: string, step: number) => {
  try {
    return Deno.readTextFileSync(join(out, "metrics.jsonl")).includes(`"step":${step},`);
  } catch {
    return false;
  }
};

/**
 * Sends `signal` to every process of group `pgid`, as a terminal does on Ctrl-C; false when the
 * group has ended.
 */
async function killGroup(pgid: number, signal: string): Promise<boolean> {
  const status = await new Deno.Command("sh", {
    args: ["-c", `kill -${signal} -${pgid}`],
    stderr: "null",
  }).output();
  return status.code === 0;
}

Deno.test({
  name: "stop signals: Ctrl-C to the process group of `deno task distflash train` saves the stop",
  sanitizeResources: false,
  async fn() {
    const out = await Deno.makeTempDir({ prefix: "distflash-ctrl-c-" });
    // setsid: the task, the launcher and the ranks in a process group of their own, as a
    // terminal's foreground job; the shell it starts prints its pid, the group's id.
    let pgid = 0;
    const task = new Deno.Command("setsid", {
      args: [
        "sh",
        "-c",
        'echo "$$"; exec "$0" "$@"',
        Deno.execPath(),
        "task",
        "distflash",
        ...twoRanks,
        "--output-dir",
        out,
      ],
      cwd: root,
      env: { NO_COLOR: "1" },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const stdout = task.stdout.pipeThrough(new TextDecoderStream()).getReader();
    pgid = Number((await stdout.read()).value?.split("\n")[0]);
    assert(pgid > 0, `process group ${pgid}`);
    const rest = (async () => {
      while (!(await stdout.read()).done) { /* rank 0's output */ }
    })();
    try {
      await waitFor("step 2", () => logged(out, 2));
      assert(await killGroup(pgid, "INT"), "the job is running");
      // A quick second press (or a forwarded copy arriving late) is the same Ctrl-C, if the
      // job is still saving by then.
      await sleep(100);
      await killGroup(pgid, "INT");
      const [status, err] = await Promise.all([
        task.status,
        new Response(task.stderr).text(),
        rest,
      ]);
      assertEquals(status.code, 130, err);
      const { path, source } = lastCheckpoint(out, runIdOf(out));
      const step = readTrainerState(source).global_step;
      assert(step >= 2, `checkpoint at step ${step}`);
      assert(
        err.includes(`stopped by Ctrl-C after step ${step}; resume with --resume-from-checkpoint`),
        err,
      );
      assert(err.includes(path.split("/").at(-1)!), err);
      assert(!err.includes("SIGKILL)"), err);
      assert(!existsSync(join(out, LOCK_FILE)), "the lock is gone");
    } finally {
      try {
        Deno.kill(-pgid, "SIGKILL");
      } catch { /* ended */ }
      await Deno.remove(out, { recursive: true });
    }
  },
});

Deno.test("stop signals: SIGTERM while the ranks are starting says nothing was saved", async () => {
  const out = await Deno.makeTempDir({ prefix: "distflash-term-start-" });
  const launcher = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", main, ...twoRanks, "--output-dir", out],
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  try {
    // The launcher creates the ranks' logs as it starts them: they are not training yet.
    await waitFor("rank 1's start", () => existsSync(join(out, "logs", "rank1.log")));
    launcher.kill("SIGTERM");
    const status = await launcher.output();
    const err = new TextDecoder().decode(status.stderr);
    assertEquals(status.code, 143, err);
    assert(!err.includes("to save a checkpoint"), err);
    assert(err.includes("were still starting"), err);
    assert(err.includes("nothing was saved"), err);
    const saved = [...Deno.readDirSync(out)].filter((e) => e.name.startsWith("checkpoint-"));
    assertEquals(saved, []);
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});
