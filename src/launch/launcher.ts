/**
 * The rank launcher behind `distflash ... --nproc-per-node N`: starts one process per local rank
 * running the same command, watches them, and stops the whole job when one fails.
 *
 * - Command: from source, `<deno> run -A [--config deno.json] cli/main.ts <args>`; from a
 *   `deno compile` binary, `<binary> <args>`.
 * - Environment of each rank: the launcher's own, NO_COLOR=1 when the launcher's stdout is not a
 *   terminal, then `env`, then RANK, WORLD_SIZE, LOCAL_RANK,
 *   LOCAL_WORLD_SIZE, GROUP_RANK/NODE_RANK, MASTER_ADDR, MASTER_PORT, DISTFLASH_LAUNCHED=1 (so
 *   the rank does not launch again), DISTFLASH_LAUNCHER_PID and DISTFLASH_JOB_SECRET (the
 *   rendezvous store's secret: the launcher's own DISTFLASH_JOB_SECRET or _FILE when set, else,
 *   for a single-node job, a fresh random one; a multi-node job must set one); OMP_NUM_THREADS, unless set, is
 *   the node's cores divided by the local ranks; NCCL_NVLS_ENABLE=0,
 *   TORCH_SYMM_MEM_DISABLE_MULTICAST=1 and NVSHMEM_DISABLE_NVLS=1 are always set (NVLink
 *   multicast stays off).
 * - Output: every rank's stdout and stderr go to `<outputDir>/logs/rank<R>.log`; rank 0's are
 *   also passed through unchanged.
 * - Failure: when a rank exits non-zero or is killed, the others get SIGTERM, then SIGKILL after
 *   `graceMs`; the launcher reports "rank R failed (exit code X)" or "(signal S)" with the last
 *   lines of that rank's log and returns non-zero. When several ranks fail, the one reported is
 *   one that did not exit with COMM_FAILURE_EXIT_CODE (a rank that only saw a peer die), if any.
 * - Port: with no `masterPort` or 0 (`train --master-port 0`; the CLI's default is 29500, as
 *   torchrun's) the launcher chooses a free one (`choosePort`), but it is free only
 *   until rank 0 listens on it; when another process took it meanwhile, a rank exits with
 *   MASTER_PORT_TAKEN_EXIT_CODE (rank 0 cannot listen, or a rank reached the other process's store
 *   and was refused) and the launcher stops this node's ranks and starts them all again on a new
 *   port, with a note, up to PORT_ATTEMPTS times. Safe: the ranks write nothing before they meet
 *   (the output folder is claimed after the rendezvous). The CLI's default port (`portIsDefault`)
 *   is retried the same way on one node (two jobs on one machine both start with 29500); a port
 *   the user gave is never retried.
 * - SIGINT/SIGTERM to the launcher are forwarded to every rank as the same signal: ranks that are
 *   training finish the step, save a checkpoint and exit (130 after Ctrl-C, 143 after SIGTERM);
 *   ranks still starting (no stop handler yet) end without saving, and the launcher says so. They
 *   get SIGKILL after `stopGraceMs`, or at once on a second signal that comes after a pause: a
 *   signal within SIGNAL_REPEAT_MS of the first is the same one (Ctrl-C reaches the launcher twice
 *   under `deno task`, from the terminal and forwarded). The launcher then returns 130 after
 *   SIGINT, 143 after SIGTERM.
 *
 * @module
 */
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { existsSync } from "node:fs";
import { lookup } from "node:dns/promises";
import { compiledRoot } from "../../ffi/loader.ts";
import { COMM_FAILURE_EXIT_CODE, envSeconds, MASTER_PORT_TAKEN_EXIT_CODE } from "../comm/comm.ts";
import { jobSecret, newJobSecret } from "../comm/job_secret.ts";
import { SIGNAL_REPEAT_MS, signalName } from "./stop_signal.ts";

/** Always present in the ranks' environment: NVLink multicast (NVLS) stays off. */
export const MULTICAST_OFF_ENV: Readonly<Record<string, string>> = Object.freeze({
  NCCL_NVLS_ENABLE: "0",
  TORCH_SYMM_MEM_DISABLE_MULTICAST: "1",
  NVSHMEM_DISABLE_NVLS: "1",
});

export interface LaunchOptions {
  /** Rank processes on this node. */
  nprocPerNode: number;
  /** Number of nodes (default 1). */
  nnodes?: number;
  /** This node's index (default 0). */
  nodeRank?: number;
  /** Rendezvous host (default 127.0.0.1). */
  masterAddr?: string;
  /** Rendezvous port; 0 (the default) picks a free one (single node only). */
  masterPort?: number;
  /**
   * `masterPort` is the CLI's default (29500), not a port the user named: on one node, when
   * another job holds it, the ranks start again on a free port as for 0.
   */
  portIsDefault?: boolean;
  /** Arguments of each rank's command. */
  args: string[];
  /** Logs go to `<outputDir>/logs/rank<R>.log`. */
  outputDir: string;
  /** Extra environment for the ranks. */
  env?: Record<string, string>;
  /** Program to run instead of distflash itself (argv prefix; `args` follow). */
  command?: string[];
  /** Time between SIGTERM and SIGKILL when stopping ranks after a failure (default 5000 ms). */
  graceMs?: number;
  /**
   * Time between SIGTERM and SIGKILL when the launcher itself was signalled: the ranks save a
   * checkpoint meanwhile (default DISTFLASH_STOP_GRACE_S, else 600 s).
   */
  stopGraceMs?: number;
  /** Global ranks whose output is passed through (default [0]). */
  showRanks?: number[];
  /** Lines of a failed rank's log to print (default 20). */
  tailLines?: number;
  /** Where passed-through output goes (default: this process's stdout/stderr). */
  output?: { stdout: (bytes: Uint8Array) => void; stderr: (bytes: Uint8Array) => void };
  /** The launcher's own messages (default: console.error). */
  report?: (line: string) => void;
  /** Stop the ranks on SIGINT/SIGTERM to the launcher (default true). */
  handleSignals?: boolean;
  /** Chooses the port when `masterPort` is 0 (default: freePort; tests make it collide). */
  choosePort?: () => number;
}

/** Times the launcher starts the ranks on a port it chose, when other processes keep taking it. */
export const PORT_ATTEMPTS = 3;

/** How one rank ended. */
export interface RankExit {
  rank: number;
  localRank: number;
  pid: number;
  code: number;
  signal: string | null;
  /**
   * It ended by a signal the launcher had sent it (it was stopped, not failing itself). A rank
   * that died by another signal is a failure even if the launcher signalled it afterwards: a
   * dead rank is only reaped later, so a peer's exit can make the launcher signal it first.
   */
  stopped: boolean;
  logPath: string;
}

export interface LaunchResult {
  /** 0 when every rank exited 0; else the failed rank's code (130 after SIGINT, 143 SIGTERM). */
  code: number;
  /** The rank reported as having failed first. */
  failed?: RankExit;
  ranks: RankExit[];
  interrupted: boolean;
  masterPort: number;
  logDir: string;
}

const sourceRoot = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

function isTerminal(): boolean {
  try {
    return Deno.stdout.isTerminal();
  } catch {
    return false;
  }
}

/** Whether this process is a rank started by the launcher. */
export function isLaunchedRank(env: Record<string, string | undefined> = Deno.env.toObject()) {
  return env.DISTFLASH_LAUNCHED === "1";
}

/**
 * Refuses a `--master-addr` that does not resolve to an address (a typo, `999.1.1.1`) before any
 * rank starts, naming the flag; the ranks would only say "failed to lookup address information".
 */
export async function checkMasterAddr(addr: string): Promise<void> {
  try {
    await lookup(addr);
  } catch (error) {
    throw new RangeError(
      `--master-addr ${addr}: not an address this machine can resolve ` +
        `(${(error as Error).message}); give the IP address or host name of rank 0's node`,
    );
  }
}

/** Whether this process runs from a `deno compile` binary rather than `deno run`. */
export function runningCompiled(): boolean {
  if (compiledRoot() !== undefined) return true;
  const exe = Deno.execPath().split("/").at(-1) ?? "";
  return !/^deno(\.exe)?$/.test(exe);
}

/** The command line that runs distflash with `args` the way this process was started. */
export function distflashCommand(args: string[]): string[] {
  if (runningCompiled()) return [Deno.execPath(), ...args];
  const config = join(sourceRoot, "deno.json");
  return [
    Deno.execPath(),
    "run",
    "-A",
    ...(existsSync(config) ? ["--config", config] : []),
    join(sourceRoot, "cli", "main.ts"),
    ...args,
  ];
}

/** A port that was free a moment ago on `host`. */
export function freePort(host = "127.0.0.1"): number {
  const listener = Deno.listen({ hostname: host, port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** The environment of global rank `rank` (local rank `localRank`). */
export function rankEnv(
  options: {
    nprocPerNode: number;
    nnodes: number;
    nodeRank: number;
    masterAddr: string;
    masterPort: number;
    env?: Record<string, string>;
  },
  localRank: number,
): Record<string, string> {
  const rank = options.nodeRank * options.nprocPerNode + localRank;
  // Each rank's OpenMP pool (the host AdamW of --offload-optimizer, the CPU backend) gets its share
  // of this node's cores instead of all of them; an OMP_NUM_THREADS the user set wins.
  const ompThreads = options.env?.OMP_NUM_THREADS ?? Deno.env.get("OMP_NUM_THREADS") ??
    String(Math.max(1, Math.floor(navigator.hardwareConcurrency / options.nprocPerNode)));
  return {
    OMP_NUM_THREADS: ompThreads,
    // The ranks write to pipes and logs: no colour in Deno's own messages (npm "Initialize" lines
    // and the like) unless the launcher's output is a terminal; a NO_COLOR the caller set stays.
    ...(isTerminal() ? {} : { NO_COLOR: "1" }),
    ...options.env,
    RANK: String(rank),
    WORLD_SIZE: String(options.nnodes * options.nprocPerNode),
    LOCAL_RANK: String(localRank),
    LOCAL_WORLD_SIZE: String(options.nprocPerNode),
    GROUP_RANK: String(options.nodeRank),
    NODE_RANK: String(options.nodeRank),
    MASTER_ADDR: options.masterAddr,
    MASTER_PORT: String(options.masterPort),
    DISTFLASH_LAUNCHED: "1",
    DISTFLASH_LAUNCHER_PID: String(Deno.pid),
    ...MULTICAST_OFF_ENV,
  };
}

function positiveInt(value: number, what: string, min = 1): number {
  if (!Number.isInteger(value) || value < min) {
    throw new RangeError(`${what} must be an integer >= ${min}, got ${value}`);
  }
  return value;
}

/** Keeps the last `limit` bytes written. */
class Tail {
  #chunks: Uint8Array[] = [];
  #bytes = 0;
  constructor(private readonly limit = 64 * 1024) {}
  push(chunk: Uint8Array): void {
    this.#chunks.push(chunk.slice());
    this.#bytes += chunk.length;
    while (this.#chunks.length > 1 && this.#bytes - this.#chunks[0].length >= this.limit) {
      this.#bytes -= this.#chunks.shift()!.length;
    }
  }
  lines(n: number): string[] {
    const all = new Uint8Array(this.#bytes);
    let off = 0;
    for (const c of this.#chunks) {
      all.set(c, off);
      off += c.length;
    }
    const text = new TextDecoder().decode(all).replace(/\n$/, "");
    return text === "" ? [] : text.split("\n").slice(-n);
  }
}

interface Running {
  localRank: number;
  rank: number;
  child: Deno.ChildProcess;
  logPath: string;
  tail: Tail;
  exit?: RankExit;
  /** The signals the launcher sent it. */
  sent: Set<string>;
  pumps: Promise<void>;
}

function writeAllSync(write: (b: Uint8Array) => number, bytes: Uint8Array): void {
  let off = 0;
  while (off < bytes.length) off += write(bytes.subarray(off));
}

/** Whether a rank that ended by `signal` was stopped by the launcher, which sent it `sent`. */
export function stoppedByLauncher(signal: string | null, sent: ReadonlySet<string>): boolean {
  return signal !== null && sent.has(signal);
}

/**
 * The rank to blame, from the exits in the order they were seen: the first that failed by itself
 * (not stopped by the launcher) other than by seeing a peer die (COMM_FAILURE_EXIT_CODE), else the
 * first such peer.
 */
export function firstFailure(observed: readonly RankExit[]): RankExit | undefined {
  const failures = observed.filter((e) => (e.code !== 0 || e.signal !== null) && !e.stopped);
  return failures.find((e) => e.code !== COMM_FAILURE_EXIT_CODE) ?? failures[0];
}

/**
 * What stopping the ranks after `signal` to the launcher came to, from how they ended: a rank that
 * exited by itself with 130/143 saved its checkpoint (its own output says where); one that died
 * by SIGINT/SIGTERM had no stop handler yet (it was still starting) and saved nothing.
 */
export function stopOutcome(exits: readonly RankExit[], signal: "SIGINT" | "SIGTERM"): string {
  const n = exits.length;
  const ranks = (k: number) => `${k} rank${k === 1 ? "" : "s"}`;
  const saved = exits.filter((e) => e.signal === null && (e.code === 130 || e.code === 143));
  const finished = exits.filter((e) => e.signal === null && e.code === 0);
  const starting = exits.filter((e) => e.signal === "SIGINT" || e.signal === "SIGTERM");
  const killed = exits.filter((e) => e.signal === "SIGKILL");
  const stopped = `stopped by ${signalName(signal)}`;
  if (saved.length === n) return `${stopped}; every rank saved its checkpoint of the stop`;
  if (finished.length === n) return `${stopped}; the ranks had already finished the run`;
  if (starting.length === n) {
    return `${stopped} while the ${ranks(n)} were still starting (no training step had ` +
      "begun): nothing was saved, the output folder's checkpoints are as they were";
  }
  const parts = [
    saved.length ? `${ranks(saved.length)} saved a checkpoint` : "",
    finished.length ? `${ranks(finished.length)} had finished` : "",
    starting.length ? `${ranks(starting.length)} were still starting` : "",
    killed.length ? `${ranks(killed.length)} were killed (SIGKILL) before saving` : "",
  ].filter((p) => p !== "");
  const other = n - saved.length - finished.length - starting.length - killed.length;
  if (other > 0) parts.push(`${ranks(other)} failed (see their logs)`);
  return `${stopped}; ${parts.join(", ")}: the checkpoint of the stop may be incomplete (an ` +
    "incomplete one is never resumed); --resume-from-checkpoint last resumes the newest complete one";
}

/** Starts the ranks of this node and waits for them; see the module documentation. */
export async function launch(options: LaunchOptions): Promise<LaunchResult> {
  const nproc = positiveInt(options.nprocPerNode, "--nproc-per-node");
  const nnodes = positiveInt(options.nnodes ?? 1, "--nnodes");
  const nodeRank = options.nodeRank ?? 0;
  if (!Number.isInteger(nodeRank) || nodeRank < 0 || nodeRank >= nnodes) {
    throw new RangeError(`--node-rank must be in 0..${nnodes - 1}, got ${nodeRank}`);
  }
  const masterAddr = options.masterAddr ?? "127.0.0.1";
  await checkMasterAddr(masterAddr);
  let masterPort = options.masterPort ?? 0;
  if (!Number.isInteger(masterPort) || masterPort < 0 || masterPort > 65535) {
    throw new RangeError(`--master-port must be a port number, got ${masterPort}`);
  }
  const portChosenHere = masterPort === 0;
  const portMayMove = portChosenHere || (options.portIsDefault === true && nnodes === 1);
  const choosePort = options.choosePort ??
    (() => freePort(masterAddr === "localhost" ? "127.0.0.1" : masterAddr));
  if (portChosenHere) {
    if (nnodes > 1) {
      throw new RangeError("--master-port must be given when --nnodes > 1 (every node needs it)");
    }
    masterPort = choosePort();
  }
  const graceMs = options.graceMs ?? 5000;
  const stopGraceMs = options.stopGraceMs ?? envSeconds("DISTFLASH_STOP_GRACE_S", 600);
  const secret = options.env?.DISTFLASH_JOB_SECRET ?? jobSecret(Deno.env.toObject()) ??
    (nnodes === 1 ? newJobSecret() : undefined);
  if (secret === undefined) {
    throw new RangeError(
      "--nnodes > 1: set DISTFLASH_JOB_SECRET (>= 16 characters, the same on every node, e.g. " +
        "$(openssl rand -hex 16)) or DISTFLASH_JOB_SECRET_FILE before launching: the rendezvous " +
        "store answers only requests carrying it",
    );
  }
  const rankSecret: string = secret;
  const showRanks = new Set(options.showRanks ?? [0]);
  const tailLines = options.tailLines ?? 20;
  const report = options.report ?? ((line: string) => console.error(line));
  const output = options.output ?? {
    stdout: (b: Uint8Array) => writeAllSync((x) => Deno.stdout.writeSync(x), b),
    stderr: (b: Uint8Array) => writeAllSync((x) => Deno.stderr.writeSync(x), b),
  };
  const logDir = join(options.outputDir, "logs");
  try {
    Deno.mkdirSync(logDir, { recursive: true });
  } catch (error) {
    throw new RangeError(
      `--output-dir ${options.outputDir}: cannot create the ranks' log folder ${logDir} there ` +
        `(${(error as Error).message}); choose a folder this user can write to`,
    );
  }
  const argv = options.command ? [...options.command, ...options.args] : distflashCommand(
    options.args,
  );

  const ranks: Running[] = [];
  let stopping = false;
  let interrupted: Deno.Signal | null = null;
  let killTimer: ReturnType<typeof setTimeout> | undefined;
  const observed: RankExit[] = [];

  const killAll = (signal: Deno.Signal) => {
    for (const r of ranks) {
      if (r.exit) continue;
      r.sent.add(signal);
      try {
        r.child.kill(signal);
      } catch { /* already gone */ }
    }
  };
  const stopAll = (grace = graceMs) => {
    if (stopping) return;
    stopping = true;
    killAll("SIGTERM");
    killTimer = setTimeout(() => killAll("SIGKILL"), grace);
  };
  let signalledAt = -Infinity;
  const onSignal = (signal: "SIGINT" | "SIGTERM") => {
    const now = performance.now();
    if (interrupted !== null) {
      const gap = now - signalledAt;
      if (gap < SIGNAL_REPEAT_MS) {
        // A copy of the first (the terminal's Ctrl-C forwarded by `deno task`), or a human's
        // quick second press: the ranks are saving; say how to stop at once.
        if (gap > 200) {
          report(
            `distflash launcher: still saving; another ${
              signal === "SIGINT" ? "Ctrl-C" : "signal"
            } after a pause of ${SIGNAL_REPEAT_MS / 1000} s stops the ranks at once`,
          );
        }
        return;
      }
      report(`distflash launcher: ${signalName(signal)} again; stopping the ranks now (SIGKILL)`);
      killAll("SIGKILL");
      return;
    }
    if (stopping) {
      // Already stopping the job after a rank's failure.
      killAll("SIGKILL");
      return;
    }
    interrupted = signal;
    signalledAt = now;
    const left = ranks.filter((r) => !r.exit).length;
    report(
      `distflash launcher: ${signalName(signal)}; asking ${left} rank${left === 1 ? "" : "s"} ` +
        `to stop (${signal}): a rank that is training finishes its step and saves a checkpoint; ` +
        `SIGKILL after ${Math.round(stopGraceMs / 1000)} s or on another signal after a pause`,
    );
    stopping = true;
    killAll(signal);
    killTimer = setTimeout(() => killAll("SIGKILL"), stopGraceMs);
  };
  const onSigint = () => onSignal("SIGINT"), onSigterm = () => onSignal("SIGTERM");
  const handleSignals = options.handleSignals ?? true;
  if (handleSignals) {
    Deno.addSignalListener("SIGINT", onSigint);
    Deno.addSignalListener("SIGTERM", onSigterm);
  }

  try {
    for (let attempt = 1;; attempt++) {
      await startAndWait();
      const first = firstFailure(observed);
      const retry = portMayMove && interrupted === null && attempt < PORT_ATTEMPTS &&
        first?.code === MASTER_PORT_TAKEN_EXIT_CODE;
      if (!retry) break;
      const taken = masterPort;
      masterPort = choosePort();
      report(
        `distflash launcher: port ${taken} was taken by another process before rank 0 could ` +
          `listen on it; starting the ${nproc} rank(s) again on port ${masterPort}`,
      );
      ranks.length = 0;
      observed.length = 0;
      stopping = false;
    }
  } finally {
    clearTimeout(killTimer);
    if (handleSignals) {
      Deno.removeSignalListener("SIGINT", onSigint);
      Deno.removeSignalListener("SIGTERM", onSigterm);
    }
  }

  /** Starts this node's ranks on `masterPort` and waits until they all ended. */
  async function startAndWait(): Promise<void> {
    for (let localRank = 0; localRank < nproc; localRank++) {
      const env = rankEnv(
        {
          nprocPerNode: nproc,
          nnodes,
          nodeRank,
          masterAddr,
          masterPort,
          env: { ...options.env, DISTFLASH_JOB_SECRET: rankSecret },
        },
        localRank,
      );
      const rank = Number(env.RANK);
      const logPath = join(logDir, `rank${rank}.log`);
      const log = Deno.openSync(logPath, { write: true, create: true, truncate: true });
      let child: Deno.ChildProcess;
      try {
        child = new Deno.Command(argv[0], {
          args: argv.slice(1),
          env,
          stdin: "null",
          stdout: "piped",
          stderr: "piped",
        }).spawn();
      } catch (error) {
        log.close();
        stopAll();
        throw new Error(`could not start rank ${rank} (${argv[0]}): ${(error as Error).message}`);
      }
      const tail = new Tail();
      const shown = showRanks.has(rank);
      const pump = async (stream: ReadableStream<Uint8Array>, sink: (b: Uint8Array) => void) => {
        try {
          for await (const chunk of stream) {
            writeAllSync((x) => log.writeSync(x), chunk);
            tail.push(chunk);
            if (shown) {
              try {
                sink(chunk);
              } catch { /* our own output closed: keep logging */ }
            }
          }
        } catch { /* the pipe broke: the rank is gone */ }
      };
      const pumps = Promise.all([
        pump(child.stdout, output.stdout),
        pump(child.stderr, output.stderr),
      ]).then(() => log.close());
      const running: Running = {
        localRank,
        rank,
        child,
        logPath,
        tail,
        sent: new Set(),
        pumps,
      };
      ranks.push(running);
    }

    await Promise.all(ranks.map(async (r) => {
      const status = await r.child.status;
      r.exit = {
        rank: r.rank,
        localRank: r.localRank,
        pid: r.child.pid,
        code: status.code,
        signal: status.signal,
        stopped: stoppedByLauncher(status.signal, r.sent),
        logPath: r.logPath,
      };
      observed.push(r.exit);
      if (status.code !== 0 || status.signal !== null) stopAll();
    }));
    clearTimeout(killTimer);
    // Output still buffered in the pipes; bounded in case a rank left a child holding them.
    await Promise.race([
      Promise.all(ranks.map((r) => r.pumps)),
      new Promise((resolve) => {
        const t = setTimeout(resolve, 2000);
        Deno.unrefTimer(t);
      }),
    ]);
  }

  const failed = interrupted ? undefined : firstFailure(observed);
  let code = 0;
  if (failed) {
    const how = failed.signal !== null ? `signal ${failed.signal}` : `exit code ${failed.code}`;
    const lines = ranks.find((r) => r.rank === failed.rank)!.tail.lines(tailLines);
    report(
      `distflash launcher: rank ${failed.rank} failed (${how}); last ${lines.length} lines of ` +
        `${failed.logPath}:`,
    );
    for (const line of lines) report(`  ${line}`);
    const others = ranks.length - 1;
    if (others > 0) report(`distflash launcher: stopped the other ${others} rank(s) of this node`);
    code = failed.code !== 0 ? failed.code : 1;
  } else if (interrupted) {
    code = interrupted === "SIGINT" ? 130 : 143;
    report(`distflash launcher: ${stopOutcome(observed, interrupted)}`);
  } else if (observed.some((e) => e.code !== 0 || e.signal !== null)) {
    code = 1;
  }
  return {
    code,
    failed,
    ranks: ranks.map((r) => r.exit!),
    interrupted: interrupted !== null,
    masterPort,
    logDir,
  };
}
