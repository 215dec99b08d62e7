/**
 * The rank environment: which rank this process is, how many there are, where rank 0's
 * rendezvous store listens — and `initDistributed`, which turns that into a world communicator.
 *
 * ## Where the values come from (first match wins)
 *
 * 1. torchrun-style variables, also set by `distflash --nproc-per-node` (our launcher):
 *    RANK and WORLD_SIZE (both required once either is set); LOCAL_RANK and LOCAL_WORLD_SIZE
 *    (when absent: one node is assumed, LOCAL_RANK = RANK and LOCAL_WORLD_SIZE = WORLD_SIZE);
 *    GROUP_RANK or NODE_RANK (the node index, else RANK / LOCAL_WORLD_SIZE rounded down).
 * 2. Slurm, when started by srun without a launcher: SLURM_PROCID (rank), SLURM_NTASKS (world
 *    size), SLURM_LOCALID (local rank, required), SLURM_NODEID (node index); the local world size
 *    is SLURM_NTASKS_PER_NODE, else this node's entry of SLURM_TASKS_PER_NODE ("2(x3),1" means
 *    2,2,2,1 for nodes 0..3), else 1 per node.
 * 3. Neither: a single process (rank 0 of 1).
 *
 * The rendezvous address is MASTER_ADDR:MASTER_PORT whenever those are set. Otherwise
 * MASTER_ADDR is 127.0.0.1 — or, under Slurm, the first host of SLURM_JOB_NODELIST (or
 * SLURM_NODELIST), with compressed lists such as "gpu[07-09,12],login1" expanded — and
 * MASTER_PORT is 29500, or under Slurm 20000 + (SLURM_JOB_ID mod 20000) so that jobs sharing a
 * node do not collide. A single process with no MASTER_PORT uses any free port.
 *
 * The rendezvous store answers only requests carrying the job's secret: DISTFLASH_JOB_SECRET
 * (at least 16 characters, the same on every node; our launcher makes one for a single-node job),
 * else the first line of the file DISTFLASH_JOB_SECRET_FILE names. A job of several ranks
 * without either is refused.
 *
 * Every value is checked: an integer where one is expected, rank < world size, local rank <
 * local world size, a port in 1..65535; errors name the variable.
 *
 * @module
 */
import type { Device } from "../runtime/device.ts";
import { CommError, commTimeoutMs, type Communicator } from "./comm.ts";
import { createHostCommunicator } from "./host_communicator.ts";
import { NcclCommunicator } from "./nccl_comm.ts";
import { jobSecret, newJobSecret } from "./job_secret.ts";
import { rendezvousTimeoutMs, TcpStore } from "./store_client.ts";

/** A rank environment variable with a bad or missing value. */
export class RankEnvError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "RankEnvError";
  }
}

export interface RankEnv {
  rank: number;
  worldSize: number;
  localRank: number;
  localWorldSize: number;
  /** Index of this node (0 on a single machine). */
  nodeRank: number;
  masterAddr: string;
  /** 0 only for a single process (any free port). */
  masterPort: number;
  /** Which convention the values came from. */
  source: "torchrun" | "slurm" | "single";
}

type Env = Record<string, string | undefined>;

function present(env: Env, name: string): boolean {
  const v = env[name];
  return v !== undefined && v.trim() !== "";
}

function intVar(env: Env, name: string, min = 0): number {
  const raw = env[name];
  if (raw === undefined || raw.trim() === "") throw new RankEnvError(`${name} is not set`);
  const text = raw.trim();
  const n = Number(text);
  if (!/^[+]?\d+$/.test(text) || !Number.isSafeInteger(n) || n < min) {
    throw new RankEnvError(
      `${name}=${JSON.stringify(raw)} is not ${min > 0 ? "a positive" : "a non-negative"} integer`,
    );
  }
  return n;
}

function optionalInt(env: Env, name: string, min = 0): number | undefined {
  return present(env, name) ? intVar(env, name, min) : undefined;
}

/**
 * Expands a Slurm host list ("gpu[01-03,7],login1", "a[1-2]-ib[0-1]") into host names, in order.
 */
export function expandSlurmNodelist(list: string): string[] {
  // Split at commas outside brackets.
  const items: string[] = [];
  let depth = 0, start = 0;
  for (let i = 0; i < list.length; i++) {
    const c = list[i];
    if (c === "[") depth++;
    else if (c === "]") depth--;
    else if (c === "," && depth === 0) {
      items.push(list.slice(start, i));
      start = i + 1;
    }
  }
  items.push(list.slice(start));
  const out: string[] = [];
  for (const item of items.map((s) => s.trim()).filter((s) => s !== "")) {
    out.push(...expandOne(item));
  }
  return out;
}

function expandOne(item: string): string[] {
  const open = item.indexOf("[");
  if (open < 0) return [item];
  const close = item.indexOf("]", open);
  if (close < 0) throw new RankEnvError(`malformed Slurm node list entry ${JSON.stringify(item)}`);
  const prefix = item.slice(0, open);
  const rest = expandOne(item.slice(close + 1));
  const out: string[] = [];
  for (const range of item.slice(open + 1, close).split(",")) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(range.trim());
    if (!m) throw new RankEnvError(`malformed Slurm node range ${JSON.stringify(range)}`);
    const width = m[1].length;
    const lo = Number(m[1]), hi = m[2] === undefined ? lo : Number(m[2]);
    if (hi < lo || hi - lo > 100_000) {
      throw new RankEnvError(`malformed Slurm node range ${JSON.stringify(range)}`);
    }
    for (let n = lo; n <= hi; n++) {
      for (const tail of rest) out.push(prefix + String(n).padStart(width, "0") + tail);
    }
  }
  return out;
}

/** Expands SLURM_TASKS_PER_NODE ("2(x3),1") into one count per node. */
export function parseSlurmTasksPerNode(text: string): number[] {
  const out: number[] = [];
  for (const part of text.split(",")) {
    const m = /^\s*(\d+)(?:\(x(\d+)\))?\s*$/.exec(part);
    if (!m) throw new RankEnvError(`SLURM_TASKS_PER_NODE=${JSON.stringify(text)} is malformed`);
    const count = Number(m[1]), repeat = m[2] === undefined ? 1 : Number(m[2]);
    for (let i = 0; i < repeat; i++) out.push(count);
  }
  return out;
}

/** Reads and checks the rank environment (see the module documentation for the rules). */
export function parseRankEnv(env: Env = Deno.env.toObject()): RankEnv {
  let rank: number, worldSize: number, localRank: number, localWorldSize: number;
  let nodeRank: number;
  let source: RankEnv["source"];
  let defaultAddr = "127.0.0.1";
  let defaultPort = 29500;

  if (present(env, "RANK") || present(env, "WORLD_SIZE")) {
    source = "torchrun";
    rank = intVar(env, "RANK");
    worldSize = intVar(env, "WORLD_SIZE", 1);
    const lr = optionalInt(env, "LOCAL_RANK");
    const lws = optionalInt(env, "LOCAL_WORLD_SIZE", 1);
    localRank = lr ?? (lws !== undefined ? rank % lws : rank);
    localWorldSize = lws ?? worldSize;
    nodeRank = optionalInt(env, "GROUP_RANK") ?? optionalInt(env, "NODE_RANK") ??
      Math.floor(rank / localWorldSize);
  } else if (present(env, "SLURM_PROCID") || present(env, "SLURM_NTASKS")) {
    source = "slurm";
    rank = intVar(env, "SLURM_PROCID");
    worldSize = intVar(env, "SLURM_NTASKS", 1);
    localRank = intVar(env, "SLURM_LOCALID");
    nodeRank = optionalInt(env, "SLURM_NODEID") ?? 0;
    const perNode = optionalInt(env, "SLURM_NTASKS_PER_NODE", 1);
    if (perNode !== undefined) {
      localWorldSize = perNode;
    } else if (present(env, "SLURM_TASKS_PER_NODE")) {
      const counts = parseSlurmTasksPerNode(env.SLURM_TASKS_PER_NODE!);
      localWorldSize = counts[Math.min(nodeRank, counts.length - 1)];
    } else {
      localWorldSize = Math.max(1, localRank + 1);
    }
    const nodelist = env.SLURM_JOB_NODELIST ?? env.SLURM_NODELIST;
    if (nodelist && nodelist.trim() !== "") {
      const hosts = expandSlurmNodelist(nodelist);
      if (hosts.length > 0) defaultAddr = hosts[0];
    }
    const jobId = optionalInt(env, "SLURM_JOB_ID");
    if (jobId !== undefined) defaultPort = 20000 + (jobId % 20000);
  } else {
    source = "single";
    rank = 0;
    worldSize = 1;
    localRank = 0;
    localWorldSize = 1;
    nodeRank = 0;
    defaultPort = 0;
  }

  const names = source === "slurm"
    ? ["SLURM_LOCALID", "the tasks per node"]
    : ["LOCAL_RANK", "LOCAL_WORLD_SIZE"];
  if (rank >= worldSize) {
    throw new RankEnvError(
      `${source === "slurm" ? "SLURM_PROCID" : "RANK"}=${rank} is not below ` +
        `${source === "slurm" ? "SLURM_NTASKS" : "WORLD_SIZE"}=${worldSize}`,
    );
  }
  if (localRank >= localWorldSize) {
    throw new RankEnvError(
      `local rank ${localRank} is not below the local world size ${localWorldSize} ` +
        `(${names[0]}, ${names[1]})`,
    );
  }
  if (localWorldSize > worldSize) {
    throw new RankEnvError(`local world size ${localWorldSize} exceeds world size ${worldSize}`);
  }
  const masterAddr = present(env, "MASTER_ADDR") ? env.MASTER_ADDR!.trim() : defaultAddr;
  let masterPort = defaultPort;
  if (present(env, "MASTER_PORT")) {
    masterPort = intVar(env, "MASTER_PORT", 1);
    if (masterPort > 65535) throw new RankEnvError(`MASTER_PORT=${masterPort} is not a port`);
  } else if (worldSize === 1) {
    masterPort = 0; // nobody else needs to find the store
  }
  return {
    rank,
    worldSize,
    localRank,
    localWorldSize,
    nodeRank,
    masterAddr,
    masterPort,
    source,
  };
}

export interface InitOptions {
  backend: "cpu" | "cuda";
  device: Device;
  /** Environment to read (default: this process's). */
  env?: Env;
  /** Rendezvous timeout (default DISTFLASH_RENDEZVOUS_TIMEOUT_S, 300 s). */
  rendezvousTimeoutMs?: number;
  /** Peer timeout of the communicators (default DISTFLASH_COMM_TIMEOUT_S, 300 s). */
  commTimeoutMs?: number;
  /** cuda: make device LOCAL_RANK current before creating NCCL's communicator (default true). */
  setDevice?: boolean;
}

export interface DistContext {
  rank: number;
  size: number;
  localRank: number;
  localWorldSize: number;
  /** The world communicator (NCCL for cuda, the host transport for cpu). */
  world: Communicator;
  env: RankEnv;
}

/**
 * Joins the job: rank 0 hosts the rendezvous store, every rank connects, and the world
 * communicator is built (NCCL for "cuda", the host transport for "cpu"). Under our launcher
 * (DISTFLASH_LAUNCHED=1) the rank also exits by itself if the launcher disappears.
 */
export async function initDistributed(options: InitOptions): Promise<DistContext> {
  const envVars = options.env ?? Deno.env.toObject();
  const rankEnv = parseRankEnv(envVars);
  const { rank, worldSize: size, localRank } = rankEnv;
  const timeoutMs = options.commTimeoutMs ?? commTimeoutMs(envVars);
  if (options.backend === "cuda" && options.setDevice !== false) {
    const count = options.device.deviceCount();
    if (localRank >= count) {
      throw new RankEnvError(
        `local rank ${localRank} needs GPU ${localRank}, but only ${count} ` +
          `${count === 1 ? "is" : "are"} visible (CUDA_VISIBLE_DEVICES?)`,
      );
    }
    options.device.setDevice(localRank);
  }
  if (envVars.DISTFLASH_LAUNCHED === "1") watchLauncher(envVars);
  const secret = jobSecret(envVars) ?? (size === 1 ? newJobSecret() : undefined);
  if (secret === undefined) {
    throw new RankEnvError(
      "DISTFLASH_JOB_SECRET is not set: every rank of a job started without distflash's " +
        "launcher needs the same secret of >= 16 characters (export DISTFLASH_JOB_SECRET=" +
        "$(openssl rand -hex 16) before starting the ranks, or DISTFLASH_JOB_SECRET_FILE=<a " +
        "file in the shared job folder>)",
    );
  }
  const store = await TcpStore.open({
    secret,
    host: rankEnv.masterAddr,
    port: rankEnv.masterPort,
    rank,
    size,
    timeoutMs: options.rendezvousTimeoutMs ?? rendezvousTimeoutMs(envVars),
  });
  let world: Communicator;
  try {
    world = options.backend === "cuda"
      ? await NcclCommunicator.create({ device: options.device, store, rank, size, timeoutMs })
      : await createHostCommunicator({ device: options.device, store, rank, size, timeoutMs });
  } catch (error) {
    store.abort();
    if (error instanceof CommError) throw error;
    throw new CommError(
      `rank ${rank}: could not set up the ${options.backend} communicator: ` +
        (error as Error).message,
      undefined,
      { cause: error },
    );
  }
  return { rank, size, localRank, localWorldSize: rankEnv.localWorldSize, world, env: rankEnv };
}

let watching = false;
/**
 * Exits this rank (code 1) when its launcher (DISTFLASH_LAUNCHER_PID) is no longer its parent —
 * the launcher was killed with SIGKILL and could not stop its ranks. Linux only; a no-op elsewhere.
 */
export function watchLauncher(env: Env = Deno.env.toObject()): void {
  const launcher = Number(env.DISTFLASH_LAUNCHER_PID);
  if (watching || !Number.isInteger(launcher) || launcher <= 0) return;
  const parent = () => {
    try {
      const stat = Deno.readTextFileSync("/proc/self/stat");
      return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
    } catch {
      return undefined;
    }
  };
  if (parent() !== launcher) return; // not a direct child (or no /proc): nothing to watch
  watching = true;
  const timer = setInterval(() => {
    if (parent() !== launcher) {
      console.error(`distflash: the launcher (pid ${launcher}) is gone; stopping this rank`);
      Deno.exit(1);
    }
  }, 1000);
  Deno.unrefTimer(timer);
}
