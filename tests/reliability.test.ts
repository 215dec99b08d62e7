/**
 * Runs that never lose data (README "Reliability"): kill -9 in the middle of checkpoint saves
 * (1 rank and 2 full_shard ranks), stray checkpoint names, an output folder that is the model's,
 * symbolic links, two runs on one folder, SIGTERM on one rank and on the launcher, damaged trainer
 * state, and a rendezvous client without the job's secret.
 */
import { assert, assertEquals, assertLess, assertRejects } from "./assert.ts";
import { rng, runIdOf, SAVING_RUN, trainFlags, waitUntil } from "./_util.ts";
import { train } from "../src/train/trainer.ts";
import {
  checkpointName,
  lastCheckpoint,
  parseCheckpointName,
  readCompletion,
  readTrainerState,
  scanCheckpoints,
} from "../src/train/checkpoint.ts";
import { LOCK_FILE, RUN_FILE } from "../src/train/output_dir.ts";
import { freePort } from "../src/launch/launcher.ts";
import { RendezvousError } from "../src/comm/comm.ts";
import { TcpStore } from "../src/comm/store_client.ts";
import { join } from "node:path";
import { hostname } from "node:os";
import { fileURLToPath } from "node:url";

const main = fileURLToPath(new URL("../cli/main.ts", import.meta.url));
const quiet = { log: () => {} };
const base = SAVING_RUN;
const cliArgs = ["train", ...trainFlags(base)];

interface Metric {
  step: number;
  loss: number;
}
async function metrics(dir: string): Promise<Metric[]> {
  const text = await Deno.readTextFile(join(dir, "metrics.jsonl"));
  return text.trim() === "" ? [] : text.trim().split("\n").map((l) => JSON.parse(l));
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Every canonically named checkpoint folder is complete: a crash never leaves a half one. */
function assertCanonicalComplete(out: string, what: string): void {
  for (const e of Deno.readDirSync(out)) {
    if (parseCheckpointName(e.name) === null) continue;
    try {
      readCompletion(join(out, e.name));
    } catch (error) {
      throw new Error(`${what}: ${e.name} is incomplete: ${(error as Error).message}`);
    }
  }
}

/** Waits until `out` holds a complete checkpoint while `procs` run (see waitUntil). */
function waitForCheckpoint(out: string, procs: Deno.ChildProcess[]): Promise<void> {
  return waitUntil(
    () => {
      try {
        return [...Deno.readDirSync(out)].some((e) => /^checkpoint-\d+$/.test(e.name));
      } catch {
        return false; // not created yet
      }
    },
    procs,
    "a checkpoint",
  );
}

/**
 * Kills a saving run at a random moment (every rank at once, as a crashed node), then resumes
 * `last` and checks that the loss curve continues exactly: each resumed step's loss equals the
 * uninterrupted reference's.
 */
async function killAndResume(
  ranks: number,
  extra: string[],
  reference: Metric[],
  seed: number,
): Promise<void> {
  const out = await Deno.makeTempDir();
  const random = rng(seed);
  const port = String(freePort());
  const start = (args: string[], env: Record<string, string>) =>
    Array.from({ length: ranks }, (_, r) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", main, ...cliArgs, ...extra, ...args, "--output-dir", out],
        env: {
          NO_COLOR: "1",
          ...(ranks > 1
            ? {
              RANK: `${r}`,
              WORLD_SIZE: `${ranks}`,
              MASTER_ADDR: "127.0.0.1",
              MASTER_PORT: port,
              DISTFLASH_JOB_SECRET: "reliability-test-secret",
            }
            : {}),
          ...env,
        },
        stdout: "null",
        stderr: "piped",
      }).spawn());
  // Each save pauses 30 ms between its stages: most of the run's time is spent saving.
  const procs = start(["--max-steps", "1000", "--save-total-limit", "2"], {
    DISTFLASH_SAVE_PAUSE_MS: "30",
  });
  await waitForCheckpoint(out, procs);
  await sleep(random() * 400);
  for (const p of procs) {
    try {
      p.kill("SIGKILL");
    } catch { /* it ended already (a rank whose peer was killed first gives up on its own) */ }
  }
  await Promise.all(procs.map((p) => p.output()));
  assertCanonicalComplete(out, `seed ${seed}`);
  // `last` as recovery will leave the folder: a finished save not yet renamed is read where it is.
  const { source } = lastCheckpoint(out, runIdOf(out));
  const step = readTrainerState(source).global_step;
  const upTo = step + 2;
  assert(upTo <= reference.length, `killed too late (step ${step})`);
  // Resume the same way (a fresh port: the killed rank 0 may hold the old one a moment).
  const again = start(["--max-steps", String(upTo), "--resume-from-checkpoint", "last"], {
    MASTER_PORT: String(freePort()),
  });
  const results = await Promise.all(again.map((p) => p.output()));
  results.forEach((r, i) =>
    assertEquals(r.code, 0, `rank ${i}: ${new TextDecoder().decode(r.stderr)}`)
  );
  const after = await metrics(out);
  assertEquals(after.map((m) => m.step), Array.from({ length: upTo }, (_, i) => i + 1));
  for (let s = step; s < upTo; s++) {
    assertLess(Math.abs(after[s].loss - reference[s].loss), 1e-6, `seed ${seed} step ${s + 1}`);
  }
  await Deno.remove(out, { recursive: true });
}

Deno.test("reliability: kill -9 mid-save, 1 rank: last resumes a complete checkpoint exactly", async () => {
  const ref = await Deno.makeTempDir();
  await train({ ...base, maxSteps: 40, saveStrategy: "no", outputDir: ref }, quiet);
  const reference = await metrics(ref);
  for (const seed of [1, 2, 3, 6, 7]) await killAndResume(1, [], reference, seed);
  await Deno.remove(ref, { recursive: true });
});

Deno.test("reliability: kill -9 mid-save, 2 ranks full_shard: last resumes a complete checkpoint exactly", async () => {
  // The reference is an uninterrupted 2-rank run of the same steps.
  const ref = await Deno.makeTempDir();
  const port = String(freePort());
  const procs = [0, 1].map((r) =>
    new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        main,
        ...cliArgs,
        "--fsdp",
        "full_shard",
        "--max-steps",
        "40",
        "--save-strategy",
        "no",
        "--output-dir",
        ref,
      ],
      env: {
        RANK: `${r}`,
        WORLD_SIZE: "2",
        MASTER_ADDR: "127.0.0.1",
        MASTER_PORT: port,
        DISTFLASH_JOB_SECRET: "reliability-test-secret",
      },
      stdout: "null",
      stderr: "null",
    }).output()
  );
  for (const r of await Promise.all(procs)) assertEquals(r.code, 0);
  const reference = await metrics(ref);
  for (const seed of [4, 5]) await killAndResume(2, ["--fsdp", "full_shard"], reference, seed);
  await Deno.remove(ref, { recursive: true });
});

Deno.test("reliability: stray, padded, huge and foreign checkpoint names are never resumed or pruned", async () => {
  const out = await Deno.makeTempDir();
  await train({ ...base, maxSteps: 4, outputDir: out, saveTotalLimit: 2 }, quiet);
  const runId = runIdOf(out);
  // Strays: a padded name, a huge number, another run's complete checkpoint-9, a newest folder
  // without complete.json, and a leftover temporary folder.
  const copy = (from: string, to: string) => {
    Deno.mkdirSync(to);
    for (const e of Deno.readDirSync(from)) Deno.copyFileSync(join(from, e.name), join(to, e.name));
  };
  copy(join(out, "checkpoint-4"), join(out, "checkpoint-0004"));
  copy(join(out, "checkpoint-4"), join(out, "checkpoint-99999999999999999999"));
  copy(join(out, "checkpoint-4"), join(out, "checkpoint-9"));
  const foreign = JSON.parse(Deno.readTextFileSync(join(out, "checkpoint-9", "complete.json")));
  Deno.writeTextFileSync(
    join(out, "checkpoint-9", "complete.json"),
    JSON.stringify({ ...foreign, run_id: "another-run", step: 9 }),
  );
  copy(join(out, "checkpoint-4"), join(out, "checkpoint-12"));
  Deno.removeSync(join(out, "checkpoint-12", "complete.json"));
  assertEquals(parseCheckpointName("checkpoint-0004"), null);
  assertEquals(parseCheckpointName("checkpoint-99999999999999999999"), null);
  assertEquals(parseCheckpointName(checkpointName(7)), 7);
  const { path, skipped } = lastCheckpoint(out, runId);
  assertEquals(path, join(out, "checkpoint-4"));
  const said = skipped.join("\n");
  for (const name of ["checkpoint-12", "checkpoint-9", "checkpoint-0004"]) {
    assert(said.includes(name), `skipped ${name}: ${said}`);
  }
  // Resume with --save-total-limit 1: only this run's older checkpoints go.
  const lines: string[] = [];
  const result = await train(
    { ...base, maxSteps: 6, outputDir: out, saveTotalLimit: 1, resumeFromCheckpoint: "last" },
    { log: (l) => lines.push(l) },
  );
  assertEquals(result.steps, 6);
  assert(lines.some((l) => l.includes("skipped checkpoint-12")), lines.join("\n"));
  const names = [...Deno.readDirSync(out)].map((e) => e.name).filter((n) =>
    n.startsWith("checkpoint-")
  ).sort();
  assertEquals(names, [
    "checkpoint-0004",
    "checkpoint-12",
    "checkpoint-6",
    "checkpoint-9",
    "checkpoint-99999999999999999999",
  ]);
  assertEquals(scanCheckpoints(out, runId).filter((e) => e.usable).map((e) => e.name), [
    "checkpoint-6",
  ]);
  // A fresh run into this folder stops and says how to continue or start over.
  const e = await assertRejects(() => train({ ...base, maxSteps: 2, outputDir: out }, quiet));
  assert(/--resume-from-checkpoint last/.test(e.message), e.message);
  assert(/--overwrite-output-dir/.test(e.message), e.message);
  await train({ ...base, maxSteps: 2, outputDir: out, overwriteOutputDir: true }, quiet);
  assert(runIdOf(out) !== runId, "a new run id");
  assertEquals((await metrics(out)).map((m) => m.step), [1, 2]);
  await Deno.remove(out, { recursive: true });
});

Deno.test("reliability: damaged trainer_state.json is refused with the file's name", async () => {
  const out = await Deno.makeTempDir();
  await train({ ...base, maxSteps: 1, outputDir: out }, quiet);
  const dir = join(out, "checkpoint-1"), path = join(dir, "trainer_state.json");
  const good = Deno.readTextFileSync(path);
  assertEquals(readTrainerState(dir).global_step, 1);
  const cases: [string, RegExp][] = [
    [good.replace(/"global_step": 1/, '"global_step": "abc"'), /global_step must be/],
    [good.replace(/"global_step": 1/, '"global_step": -5'), /global_step must be/],
    [good.replace(/"global_step": 1/, '"global_step": 1.5'), /global_step must be/],
    [good.slice(0, 40), /not valid JSON/],
  ];
  for (const [text, pattern] of cases) {
    Deno.writeTextFileSync(path, text);
    let message = "";
    try {
      readTrainerState(dir);
    } catch (error) {
      message = (error as Error).message;
    }
    assert(pattern.test(message) && message.includes(path), `${text.slice(0, 60)}: ${message}`);
  }
  // Through train, the size record already tells the file changed: resume refuses it too.
  const e = await assertRejects(() =>
    train({ ...base, maxSteps: 3, outputDir: out, resumeFromCheckpoint: dir }, quiet)
  );
  assert(e.message.includes("trainer_state.json"), e.message);
  await Deno.remove(out, { recursive: true });
});

Deno.test("reliability: an output folder that is or holds the model folder is refused, files intact", async () => {
  const root = await Deno.makeTempDir();
  const model = join(root, "model");
  await train(
    { ...base, maxSteps: 1, saveStrategy: "no", saveFinalModel: true, outputDir: model },
    quiet,
  );
  Deno.removeSync(join(model, RUN_FILE)); // now a plain model folder
  Deno.removeSync(join(model, "metrics.jsonl"));
  const before = Deno.readFileSync(join(model, "model.safetensors"));
  for (const outputDir of [model, root]) {
    const e = await assertRejects(() =>
      train({ ...base, model, maxSteps: 1, outputDir, overwriteOutputDir: true }, quiet)
    );
    assert(e.message.includes("the model's folder"), e.message);
  }
  assertEquals(Deno.readFileSync(join(model, "model.safetensors")), before);
  await Deno.remove(root, { recursive: true });
});

Deno.test("reliability: outputs are never written through symbolic links", async () => {
  const root = await Deno.makeTempDir();
  const out = join(root, "out"), target = join(root, "precious.txt");
  Deno.mkdirSync(out);
  Deno.writeTextFileSync(target, "keep me");
  Deno.symlinkSync(target, join(out, "metrics.jsonl"));
  const e = await assertRejects(() => train({ ...base, maxSteps: 1, outputDir: out }, quiet));
  assert(e.message.includes("metrics.jsonl -> ") && e.message.includes("symbolic link"), e.message);
  assertEquals(Deno.readTextFileSync(target), "keep me");
  await Deno.remove(root, { recursive: true });
});

Deno.test("reliability: two runs on one folder: a live lock refuses, a dead one is taken over", async () => {
  const out = await Deno.makeTempDir();
  const lock = join(out, LOCK_FILE);
  // A live holder holds the file lock (as a run's rank 0 does), its pid written in the file.
  const held = Deno.openSync(lock, { read: true, write: true, create: true });
  held.lockSync(true);
  Deno.writeTextFileSync(lock, JSON.stringify({ pid: Deno.pid, host: hostname() }));
  const e = await assertRejects(() => train({ ...base, maxSteps: 1, outputDir: out }, quiet));
  assert(e.message.includes("in use by another run") && e.message.includes(`${Deno.pid}`));
  held.close();
  // The pid of a process that has exited: a crashed run's lock.
  const dead = new Deno.Command("true").spawn();
  await dead.status;
  Deno.writeTextFileSync(lock, JSON.stringify({ pid: dead.pid, host: hostname() }));
  const lines: string[] = [];
  await train({ ...base, maxSteps: 1, outputDir: out }, { log: (l) => lines.push(l) });
  assert(lines.some((l) => l.includes("taking over")), lines.join("\n"));
  assert(!Deno.readDirSync(out).some((x) => x.name === LOCK_FILE), "released at the end");
  // A real second run while the first one trains is refused.
  const first = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", main, ...cliArgs, "--max-steps", "100000", "--save-strategy", "no"]
      .concat(["--output-dir", out, "--overwrite-output-dir"]),
    stdout: "null",
    stderr: "null",
  }).spawn();
  for (let i = 0; i < 400 && !Deno.readDirSync(out).some((x) => x.name === LOCK_FILE); i++) {
    await sleep(25);
  }
  const second = await assertRejects(() =>
    train({ ...base, maxSteps: 1, outputDir: out, overwriteOutputDir: true }, quiet)
  );
  assert(second.message.includes("in use by another run"), second.message);
  first.kill("SIGKILL");
  await first.status;
  await Deno.remove(out, { recursive: true });
});

/**
 * Waits until metrics.jsonl of `out` has logged `step` while `procs` run (a condition, not a
 * time: see waitUntil).
 */
function waitForStep(out: string, step: number, procs: Deno.ChildProcess[]): Promise<void> {
  return waitUntil(
    async () => {
      const text = await Deno.readTextFile(join(out, "metrics.jsonl")).catch(() => "");
      return text.includes(`"step":${step},`);
    },
    procs,
    `step ${step} logged`,
  );
}

Deno.test("reliability: SIGTERM to one rank stops both at the same step with a complete checkpoint", async () => {
  const out = await Deno.makeTempDir();
  const port = String(freePort());
  const procs = [0, 1].map((r) =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", main, ...cliArgs, "--max-steps", "100000", "--save-strategy", "no"]
        .concat(["--fsdp", "full_shard", "--output-dir", out]),
      env: {
        RANK: `${r}`,
        WORLD_SIZE: "2",
        MASTER_ADDR: "127.0.0.1",
        MASTER_PORT: port,
        DISTFLASH_JOB_SECRET: "reliability-test-secret",
      },
      stdout: "null",
      stderr: "piped",
    }).spawn()
  );
  await waitForStep(out, 2, procs);
  procs[1].kill("SIGTERM");
  const results = await Promise.all(procs.map((p) => p.output()));
  const err = results.map((r) => new TextDecoder().decode(r.stderr));
  results.forEach((r, i) => assertEquals(r.code, 143, `rank ${i}: ${err[i]}`));
  // `last` as recovery will leave the folder: a finished save not yet renamed is read where it is.
  const { source } = lastCheckpoint(out, runIdOf(out));
  const step = readTrainerState(source).global_step;
  assert(err[0].includes(`stopped by SIGTERM after step ${step}`), err[0]);
  assertEquals((await metrics(out)).at(-1)!.step, step);
  await Deno.remove(out, { recursive: true });
});

Deno.test("reliability: SIGTERM to the launcher saves on every rank and exits 143", async () => {
  const out = await Deno.makeTempDir();
  const launcher = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", main, ...cliArgs, "--max-steps", "100000", "--save-strategy", "no"]
      .concat(["--fsdp", "full_shard", "--nproc-per-node", "2", "--output-dir", out]),
    env: { NO_COLOR: "1" },
    stdout: "null",
    stderr: "piped",
  }).spawn();
  await waitForStep(out, 2, [launcher]);
  launcher.kill("SIGTERM");
  const status = await launcher.output();
  const err = new TextDecoder().decode(status.stderr);
  assertEquals(status.code, 143, err);
  assert(/resume with --resume-from-checkpoint/.test(err), err);
  const record = readCompletion(lastCheckpoint(out, runIdOf(out)).path);
  assertEquals(record.world_size, 2);
  assert("optimizer.rank1-of-2.safetensors" in record.files, JSON.stringify(record));
  await Deno.remove(out, { recursive: true });
});

Deno.test("reliability: a store client without the job's secret is refused and the job goes on", async () => {
  const secret = "the-right-secret-0123";
  const s0 = await TcpStore.open({ host: "127.0.0.1", port: 0, rank: 0, size: 2, secret });
  const port = s0.server!.port;
  const s1 = await TcpStore.open({ host: "127.0.0.1", port, rank: 1, size: 2, secret });
  try {
    await s0.set("addr/0", "10.0.0.1:1234");
    for (const wrong of ["the-wrong-secret-0123", "x".repeat(20)]) {
      const e = await assertRejects(
        () => TcpStore.connect({ host: "127.0.0.1", port, rank: 1, size: 2, secret: wrong }),
        RendezvousError,
      );
      assert(e.message.includes("secret"), e.message);
    }
    // A raw client: a request without any secret, and a huge frame, get nothing back but
    // a refusal and a closed connection.
    for (const frame of [rawFrame({ op: "set", key: "addr/0", id: 1 }), hugeFrameHeader()]) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      await conn.write(frame);
      const buf = new Uint8Array(4096);
      let text = "";
      for (;;) {
        const n = await conn.read(buf).catch(() => null);
        if (n === null) break;
        text += new TextDecoder().decode(buf.subarray(0, n));
      }
      conn.close();
      assert(!text.includes("10.0.0.1"), text);
    }
    // The job goes on: the key is unchanged, and no rank was reported failed.
    assertEquals(await s1.getText("addr/0"), "10.0.0.1:1234");
    await Promise.all([s0.barrier("after"), s1.barrier("after")]);
    assertEquals(s0.failure, undefined);
    assertEquals(s1.failure, undefined);
  } finally {
    await s1.close();
    await s0.close();
  }
});

function rawFrame(header: Record<string, unknown>): Uint8Array {
  const h = new TextEncoder().encode(JSON.stringify(header));
  const frame = new Uint8Array(8 + h.length);
  const view = new DataView(frame.buffer);
  view.setUint32(0, 4 + h.length, true);
  view.setUint32(4, h.length, true);
  frame.set(h, 8);
  return frame;
}

/** The length prefix of a 1 GiB frame (the rest never comes). */
function hugeFrameHeader(): Uint8Array {
  const frame = new Uint8Array(4);
  new DataView(frame.buffer).setUint32(0, 1 << 30, true);
  return frame;
}
