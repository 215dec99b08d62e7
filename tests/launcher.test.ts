/**
 * The rank launcher (failure handling, logs, Ctrl-C), the rank environment (torchrun and Slurm
 * variables) and the rendezvous store.
 */
import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import {
  distflashCommand,
  firstFailure,
  launch,
  type LaunchResult,
  rankEnv,
  type RankExit,
  stoppedByLauncher,
} from "../src/launch/launcher.ts";
import { COMM_FAILURE_EXIT_CODE, RendezvousError } from "../src/comm/comm.ts";
import {
  expandSlurmNodelist,
  parseRankEnv,
  parseSlurmTasksPerNode,
  RankEnvError,
} from "../src/comm/env.ts";
import { TcpStore } from "../src/comm/store_client.ts";

/** The rendezvous secret of the in-process stores. */
const secret = "launcher-test-secret";

const WORKER = new URL("./workers/comm_worker.ts", import.meta.url).pathname;
const workerCommand = [Deno.execPath(), "run", "-A", WORKER];

function alive(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

async function runJob(
  P: number,
  args: string[],
  graceMs = 3000,
): Promise<{ result: LaunchResult; lines: string[]; ms: number; dir: string }> {
  const dir = await Deno.makeTempDir({ prefix: "distflash-launch-" });
  const lines: string[] = [];
  const t0 = performance.now();
  const result = await launch({
    nprocPerNode: P,
    args,
    command: workerCommand,
    outputDir: dir,
    graceMs,
    output: { stdout: () => {}, stderr: () => {} },
    report: (l) => lines.push(l),
    handleSignals: false,
  });
  return { result, lines, ms: performance.now() - t0, dir };
}

function checkStopped(job: Awaited<ReturnType<typeof runJob>>, P: number): void {
  for (const r of job.result.ranks) assert(!alive(r.pid), `rank ${r.rank} (pid ${r.pid}) is gone`);
  for (let r = 0; r < P; r++) {
    assert(Deno.statSync(`${job.dir}/logs/rank${r}.log`).isFile, `rank${r}.log exists`);
  }
}

Deno.test("launcher: a rank exiting 3 mid-run stops the job, naming it", async () => {
  const job = await runJob(3, ["fail-exit", "3"]);
  try {
    assertEquals(job.result.code, 3);
    assertEquals(job.result.failed?.rank, 1);
    const text = job.lines.join("\n");
    assert(text.includes("rank 1 failed (exit code 3)"), text);
    assert(text.includes("rank 1: failing on purpose"), `the log tail is shown: ${text}`);
    assert(job.ms < 10_000, `took ${job.ms} ms`);
    checkStopped(job, 3);
  } finally {
    await Deno.remove(job.dir, { recursive: true });
  }
});

Deno.test("launcher: a rank killed by a signal stops the job, naming the signal", async () => {
  const job = await runJob(3, ["fail-kill"]);
  try {
    assert(job.result.code !== 0);
    assertEquals(job.result.failed?.rank, 1);
    assertEquals(job.result.failed?.signal, "SIGKILL");
    assert(job.lines.join("\n").includes("rank 1 failed (signal SIGKILL)"));
    checkStopped(job, 3);
  } finally {
    await Deno.remove(job.dir, { recursive: true });
  }
});

Deno.test("launcher: a rank that died by itself is blamed even if a peer's exit was seen first", () => {
  // The race a fast machine hit: rank 1 SIGKILLs itself, rank 2 sees the broken connection and
  // exits first, the launcher then SIGTERMs every rank it has not reaped yet, rank 1 included.
  const exit = (rank: number, code: number, signal: string | null, sent: string[]): RankExit => ({
    rank,
    localRank: rank,
    pid: 1000 + rank,
    code,
    signal,
    stopped: stoppedByLauncher(signal, new Set(sent)),
    logPath: `rank${rank}.log`,
  });
  const observed = [
    exit(2, COMM_FAILURE_EXIT_CODE, null, []),
    exit(1, 137, "SIGKILL", ["SIGTERM"]),
    exit(0, 143, "SIGTERM", ["SIGTERM"]),
  ];
  assertEquals(observed.map((e) => e.stopped), [false, false, true]);
  assertEquals(firstFailure(observed)?.rank, 1);
  // After the grace period the launcher's own SIGKILL is a stop, not a failure.
  assert(stoppedByLauncher("SIGKILL", new Set(["SIGTERM", "SIGKILL"])));
  assertEquals(firstFailure([exit(0, 137, "SIGKILL", ["SIGTERM", "SIGKILL"])]), undefined);
  // Only peers that saw a death: the first of them is named.
  assertEquals(
    firstFailure([
      exit(2, COMM_FAILURE_EXIT_CODE, null, []),
      exit(0, COMM_FAILURE_EXIT_CODE, null, []),
    ])
      ?.rank,
    2,
  );
});

Deno.test("launcher: ranks busy elsewhere get SIGTERM, then SIGKILL after the grace period", async () => {
  const plain = await runJob(3, ["fail-stuck"]);
  const stubborn = await runJob(3, ["fail-stuck", "--ignore-term"], 800);
  try {
    for (const job of [plain, stubborn]) {
      assertEquals(job.result.code, 3);
      assertEquals(job.result.failed?.rank, 1);
      checkStopped(job, 3);
      for (const r of job.result.ranks.filter((r) => r.rank !== 1)) assert(r.stopped);
    }
    assert(plain.result.ranks.filter((r) => r.rank !== 1).every((r) => r.signal === "SIGTERM"));
    assert(stubborn.result.ranks.filter((r) => r.rank !== 1).every((r) => r.signal === "SIGKILL"));
    assert(plain.ms < 8_000, `took ${plain.ms} ms`);
  } finally {
    await Deno.remove(plain.dir, { recursive: true });
    await Deno.remove(stubborn.dir, { recursive: true });
  }
});

Deno.test("launcher: SIGINT stops every rank and exits 130", async () => {
  const dir = await Deno.makeTempDir({ prefix: "distflash-int-" });
  try {
    const launcher = new Deno.Command(workerCommand[0], {
      args: [...workerCommand.slice(1), "launcher", dir, "2"],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    // Wait until both ranks have started and written their pids.
    const pids: number[] = [];
    for (let i = 0; i < 200 && pids.length < 2; i++) {
      await new Promise((r) => setTimeout(r, 50));
      pids.length = 0;
      for (const r of [0, 1]) {
        try {
          const m = /pid (\d+)/.exec(Deno.readTextFileSync(`${dir}/logs/rank${r}.log`));
          if (m) pids.push(Number(m[1]));
        } catch { /* not yet */ }
      }
    }
    assertEquals(pids.length, 2, "both ranks started");
    launcher.kill("SIGINT");
    const out = await launcher.output();
    const err = new TextDecoder().decode(out.stderr);
    assertEquals(out.code, 130, err);
    assert(err.includes("Ctrl-C (SIGINT); asking 2 ranks to stop"), err);
    assert(new TextDecoder().decode(out.stdout).includes("pid "), "rank 0's output is shown");
    for (const pid of pids) assert(!alive(pid), `rank pid ${pid} is gone`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("launcher: rank environment and command", () => {
  const env = rankEnv(
    {
      nprocPerNode: 4,
      nnodes: 2,
      nodeRank: 1,
      masterAddr: "10.0.0.1",
      masterPort: 29400,
      env: { NCCL_NVLS_ENABLE: "1", FOO: "bar" },
    },
    2,
  );
  assertEquals(
    [env.RANK, env.WORLD_SIZE, env.LOCAL_RANK, env.LOCAL_WORLD_SIZE, env.GROUP_RANK],
    ["6", "8", "2", "4", "1"],
  );
  assertEquals([env.MASTER_ADDR, env.MASTER_PORT, env.DISTFLASH_LAUNCHED], [
    "10.0.0.1",
    "29400",
    "1",
  ]);
  assertEquals(env.NCCL_NVLS_ENABLE, "0", "multicast stays off whatever the caller passed");
  assertEquals(env.TORCH_SYMM_MEM_DISABLE_MULTICAST, "1");
  assertEquals(env.NVSHMEM_DISABLE_NVLS, "1");
  assertEquals(env.FOO, "bar");
  const cores = navigator.hardwareConcurrency;
  if (Deno.env.get("OMP_NUM_THREADS") === undefined) {
    assertEquals(
      env.OMP_NUM_THREADS,
      String(Math.max(1, Math.floor(cores / 4))),
      "a share of cores",
    );
  }
  const mine = rankEnv({
    nprocPerNode: 4,
    nnodes: 1,
    nodeRank: 0,
    masterAddr: "127.0.0.1",
    masterPort: 1,
    env: { OMP_NUM_THREADS: "3" },
  }, 0);
  assertEquals(mine.OMP_NUM_THREADS, "3", "the caller's OMP_NUM_THREADS wins");
  // The ranks' view of it round-trips.
  const parsed = parseRankEnv(env);
  assertEquals([parsed.rank, parsed.worldSize, parsed.localRank, parsed.nodeRank], [6, 8, 2, 1]);
  const cmd = distflashCommand(["train", "--x"]);
  assertEquals(cmd[0], Deno.execPath());
  assert(cmd.includes("run") && cmd.some((a) => a.endsWith("cli/main.ts")), cmd.join(" "));
  assertEquals(cmd.slice(-2), ["train", "--x"]);
});

Deno.test("launcher: invalid options are refused", async () => {
  const base = { args: [], outputDir: "/tmp/unused", handleSignals: false };
  await assertRejects(() => launch({ ...base, nprocPerNode: 0 }), RangeError);
  await assertRejects(
    () => launch({ ...base, nprocPerNode: 1, nnodes: 2, nodeRank: 2 }),
    RangeError,
  );
  await assertRejects(() => launch({ ...base, nprocPerNode: 1, nnodes: 2 }), RangeError);
});

Deno.test("rank env: torchrun variables", () => {
  const e = parseRankEnv({
    RANK: "3",
    WORLD_SIZE: "8",
    LOCAL_RANK: "3",
    LOCAL_WORLD_SIZE: "4",
    MASTER_ADDR: "node1",
    MASTER_PORT: "1234",
  });
  assertEquals(e, {
    rank: 3,
    worldSize: 8,
    localRank: 3,
    localWorldSize: 4,
    nodeRank: 0,
    masterAddr: "node1",
    masterPort: 1234,
    source: "torchrun",
  });
  // Defaults: one node, 127.0.0.1:29500.
  const d = parseRankEnv({ RANK: "1", WORLD_SIZE: "2" });
  assertEquals([d.localRank, d.localWorldSize, d.masterAddr, d.masterPort], [
    1,
    2,
    "127.0.0.1",
    29500,
  ]);
  // torchrun wins over Slurm (torchrun started by srun).
  assertEquals(parseRankEnv({ RANK: "0", WORLD_SIZE: "2", SLURM_PROCID: "1" }).rank, 0);
  // No variables: a single process on any free port.
  assertEquals(parseRankEnv({}), {
    rank: 0,
    worldSize: 1,
    localRank: 0,
    localWorldSize: 1,
    nodeRank: 0,
    masterAddr: "127.0.0.1",
    masterPort: 0,
    source: "single",
  });
});

Deno.test("rank env: Slurm variables", () => {
  const e = parseRankEnv({
    SLURM_PROCID: "5",
    SLURM_NTASKS: "8",
    SLURM_LOCALID: "1",
    SLURM_NODEID: "2",
    SLURM_TASKS_PER_NODE: "2(x4)",
    SLURM_JOB_NODELIST: "gpu[07-10],login1",
    SLURM_JOB_ID: "123456",
  });
  assertEquals(
    [e.rank, e.worldSize, e.localRank, e.localWorldSize, e.nodeRank, e.source],
    [5, 8, 1, 2, 2, "slurm"],
  );
  assertEquals(e.masterAddr, "gpu07");
  assertEquals(e.masterPort, 20000 + (123456 % 20000));
  const m = parseRankEnv({
    SLURM_PROCID: "0",
    SLURM_NTASKS: "2",
    SLURM_LOCALID: "0",
    SLURM_NTASKS_PER_NODE: "2",
    SLURM_NODELIST: "a1",
    MASTER_ADDR: "10.1.1.1",
    MASTER_PORT: "4000",
  });
  assertEquals([m.localWorldSize, m.masterAddr, m.masterPort], [2, "10.1.1.1", 4000]);
  assertEquals(expandSlurmNodelist("n[1-3,05],x,y[9-10]-ib"), [
    "n1",
    "n2",
    "n3",
    "n05",
    "x",
    "y9-ib",
    "y10-ib",
  ]);
  assertEquals(expandSlurmNodelist("gpu[001-002]"), ["gpu001", "gpu002"]);
  assertEquals(parseSlurmTasksPerNode("2(x3),1"), [2, 2, 2, 1]);
});

Deno.test("rank env: bad values are named", () => {
  const cases: [Record<string, string>, RegExp][] = [
    [{ RANK: "2", WORLD_SIZE: "2" }, /RANK=2 is not below WORLD_SIZE=2/],
    [{ RANK: "x", WORLD_SIZE: "2" }, /RANK="x" is not a non-negative integer/],
    [{ RANK: "0" }, /WORLD_SIZE is not set/],
    [{ RANK: "0", WORLD_SIZE: "0" }, /WORLD_SIZE="0" is not a positive integer/],
    [{ RANK: "0", WORLD_SIZE: "2", LOCAL_RANK: "2", LOCAL_WORLD_SIZE: "2" }, /local rank 2/],
    [{ RANK: "0", WORLD_SIZE: "2", MASTER_PORT: "70000" }, /MASTER_PORT=70000 is not a port/],
    [{ RANK: "0", WORLD_SIZE: "2", MASTER_PORT: "-1" }, /MASTER_PORT/],
    [{ SLURM_PROCID: "0", SLURM_NTASKS: "2" }, /SLURM_LOCALID is not set/],
    [{ SLURM_PROCID: "3", SLURM_NTASKS: "2", SLURM_LOCALID: "0" }, /SLURM_PROCID=3/],
    [
      { SLURM_PROCID: "0", SLURM_NTASKS: "2", SLURM_LOCALID: "0", SLURM_TASKS_PER_NODE: "2(y3)" },
      /SLURM_TASKS_PER_NODE/,
    ],
  ];
  for (const [env, pattern] of cases) {
    const error = assertThrows(() => parseRankEnv(env), RankEnvError);
    assert(pattern.test(error.message), `${JSON.stringify(env)}: ${error.message}`);
  }
});

Deno.test("rendezvous: nothing listening gives an error naming the address", async () => {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  const t0 = performance.now();
  const error = await assertRejects(
    () => TcpStore.connect({ host: "127.0.0.1", port, rank: 1, size: 2, timeoutMs: 600, secret }),
    RendezvousError,
  );
  assert(error.message.includes(`127.0.0.1:${port}`), error.message);
  assert(/MASTER_ADDR/.test(error.message), error.message);
  const ms = performance.now() - t0;
  assert(ms >= 500 && ms < 3000, `gave up after ${ms} ms`);
});

Deno.test("rendezvous: set/get/add/barrier, key timeouts, failure notices", async () => {
  const s0 = await TcpStore.open({
    host: "127.0.0.1",
    port: 0,
    rank: 0,
    size: 3,
    timeoutMs: 5000,
    secret,
  });
  const port = s0.server!.port;
  const s1 = await TcpStore.open({
    host: "127.0.0.1",
    port,
    rank: 1,
    size: 3,
    timeoutMs: 5000,
    secret,
  });
  const s2 = await TcpStore.open({
    host: "127.0.0.1",
    port,
    rank: 2,
    size: 3,
    timeoutMs: 5000,
    secret,
  });
  try {
    const waiting = s1.getText("k"); // before it is set
    await s0.set("k", "value");
    assertEquals(await waiting, "value");
    assertEquals(new TextDecoder().decode(await s2.get("k")), "value");
    assertEquals(await s2.tryGet("missing"), undefined);
    assertEquals(await s1.add("n", 2), 2);
    assertEquals(await s2.add("n", 3), 5);
    let passed = 0;
    const b = [s0, s1].map((s) => s.barrier("b").then(() => passed++));
    await new Promise((r) => setTimeout(r, 50));
    assertEquals(passed, 0, "the barrier waits for the third rank");
    await Promise.all([...b, s2.barrier("b")]);
    assertEquals(passed, 2);
    await Promise.all([s0, s1, s2].map((s) => s.barrier("b"))); // a name can be reused
    const error = await assertRejects(() => s1.get("never", 200), RendezvousError);
    assert(error.message.includes(`"never"`) && error.message.includes(`127.0.0.1:${port}`));
    // A rank whose connection drops without a goodbye is reported to the others.
    const seen: number[] = [];
    s0.onFailure((f) => seen.push(f.rank));
    s2.abort();
    for (let i = 0; i < 50 && !s1.failure; i++) await new Promise((r) => setTimeout(r, 20));
    assertEquals(s1.failure?.rank, 2);
    assertEquals(seen, [2]);
  } finally {
    await s1.close();
    s2.abort();
    await s0.close();
  }
});
