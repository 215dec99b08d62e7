/**
 * Communication helpers shared by every transport: NCCL on GPUs (nccl_comm.ts), a TCP host
 * transport for CPU ranks (host_communicator.ts) and the in-process group used by unit tests
 * (local_comm.ts). The `Communicator` interface they implement, with the rules every caller
 * follows, lives in src/runtime/communicator.ts (below the model, which reduces gradients through
 * it, and below this folder).
 *
 * @module
 */
import { bf16ToF32, f32ToBf16 } from "../io/dtype.ts";
import type { CommDType, P2P } from "../runtime/communicator.ts";

export type { CommDType, Communicator, P2P } from "../runtime/communicator.ts";

/** A communication failure: a peer that went away, a timeout, or out-of-step operations. */
export class CommError extends Error {
  constructor(
    message: string,
    /** The peer (global rank) that caused it, where one is known. */
    readonly peer?: number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "CommError";
  }
}

/** A rendezvous failure: nothing listening, a timeout, or the store going away. */
export class RendezvousError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "RendezvousError";
  }
}

/**
 * The rendezvous port belongs to another process: rank 0 cannot listen on MASTER_PORT (in use), or
 * a rank reached a store there that refused this job's secret. A launcher that chose the port
 * itself starts the ranks again on another (see launcher.ts); a port the user gave is not retried.
 */
export class MasterPortTakenError extends RendezvousError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "MasterPortTakenError";
  }
}

/** The exit code of a rank that stopped on a MasterPortTakenError (98: EADDRINUSE on Linux). */
export const MASTER_PORT_TAKEN_EXIT_CODE = 98;

/**
 * The exit code a rank should use when it stops because of a CommError (a failure seen through a
 * peer): the launcher then names the rank that failed first rather than the ranks that noticed.
 */
export const COMM_FAILURE_EXIT_CODE = 75;

/** Bytes per element. */
export const COMM_DTYPE_BYTES: Readonly<Record<CommDType, number>> = Object.freeze({
  f32: 4,
  bf16: 2,
  i32: 4,
});

/** Bytes per element of `dtype`, rejecting names that are not CommDTypes. */
export function commDTypeBytes(dtype: CommDType): number {
  const n = COMM_DTYPE_BYTES[dtype];
  if (n === undefined) throw new TypeError(`unknown communication dtype ${JSON.stringify(dtype)}`);
  return n;
}

/** Checks an element count (a non-negative safe integer). */
export function checkCount(count: number, what = "count"): void {
  if (!Number.isSafeInteger(count) || count < 0) {
    throw new RangeError(`${what} must be a non-negative integer, got ${count}`);
  }
}

/** Checks a rank of a communicator of `size` ranks. */
export function checkRank(rank: number, size: number, what = "peer"): void {
  if (!Number.isInteger(rank) || rank < 0 || rank >= size) {
    throw new RangeError(`${what} ${rank} is not a rank of a communicator of size ${size}`);
  }
}

/** Validates a subgroup's rank list against a communicator of `size` ranks. */
export function checkSubgroup(ranks: number[], size: number, me: number): number {
  if (!Array.isArray(ranks) || ranks.length === 0) {
    throw new RangeError("a subgroup needs at least one rank");
  }
  const seen = new Set<number>();
  for (const r of ranks) {
    checkRank(r, size, "subgroup rank");
    if (seen.has(r)) throw new RangeError(`rank ${r} appears twice in subgroup [${ranks}]`);
    seen.add(r);
  }
  const index = ranks.indexOf(me);
  if (index < 0) throw new RangeError(`rank ${me} is not a member of subgroup [${ranks}]`);
  return index;
}

/** Checks the ops of an exchange against a communicator of `size` ranks. */
export function checkP2P(ops: P2P[], size: number): void {
  for (const op of ops) {
    if (op.kind !== "send" && op.kind !== "recv") {
      throw new TypeError(`exchange op kind must be "send" or "recv", got ${op.kind}`);
    }
    checkRank(op.peer, size);
    checkCount(op.bytes, "exchange byte count");
    if (typeof op.ptr !== "bigint") throw new TypeError("exchange op ptr must be a bigint");
  }
}

/**
 * Sums equal-length contributions (raw little-endian bytes of `dtype`), in the order given, into
 * a new byte array: f32 in f32 (each addition rounded to f32), bf16 accumulated in f32 and rounded
 * to bf16 once at the end, i32 with two's-complement wrap-around. Summing in rank order on the
 * rank that owns a chunk makes every rank's result bitwise identical.
 */
export function sumHost(parts: Uint8Array[], dtype: CommDType): Uint8Array {
  const bytes = parts[0]?.length ?? 0;
  const size = commDTypeBytes(dtype);
  if (bytes % size !== 0) throw new RangeError(`${bytes} bytes is not a whole number of ${dtype}`);
  for (const p of parts) {
    if (p.length !== bytes) throw new RangeError(`contributions differ in length`);
  }
  const n = bytes / size;
  if (dtype === "i32") {
    const acc = new Int32Array(n);
    for (const p of parts) {
      const a = aligned(p);
      const x = new Int32Array(a.buffer, a.byteOffset, n);
      for (let i = 0; i < n; i++) acc[i] = (acc[i] + x[i]) | 0;
    }
    return new Uint8Array(acc.buffer);
  }
  const acc = new Float32Array(n);
  const scratch = dtype === "bf16" ? new Float32Array(n) : undefined;
  for (const p of parts) {
    const a = aligned(p);
    const x = dtype === "bf16"
      ? bf16ToF32(new Uint16Array(a.buffer, a.byteOffset, n), scratch)
      : new Float32Array(a.buffer, a.byteOffset, n);
    for (let i = 0; i < n; i++) acc[i] += x[i];
  }
  return dtype === "bf16" ? new Uint8Array(f32ToBf16(acc).buffer) : new Uint8Array(acc.buffer);
}

/** `bytes`, copied if its offset does not allow a 4-byte typed view. */
function aligned(bytes: Uint8Array): Uint8Array {
  return bytes.byteOffset % 4 === 0 ? bytes : bytes.slice();
}

/** Reads a positive number of seconds from an environment variable, as milliseconds. */
export function envSeconds(
  name: string,
  fallbackSeconds: number,
  env: Record<string, string | undefined> = Deno.env.toObject(),
): number {
  const raw = env[name];
  if (raw === undefined || raw.trim() === "") return fallbackSeconds * 1000;
  const s = Number(raw);
  if (!Number.isFinite(s) || s <= 0) {
    throw new RangeError(
      `${name} must be a positive number of seconds, got ${JSON.stringify(raw)}`,
    );
  }
  return s * 1000;
}

/** Default time a rank waits for a peer before failing (DISTFLASH_COMM_TIMEOUT_S, 300 s). */
export function commTimeoutMs(env?: Record<string, string | undefined>): number {
  return envSeconds("DISTFLASH_COMM_TIMEOUT_S", 300, env);
}

/** A 32-bit FNV-1a hash of a string: the wire id of a named communicator. */
export function hash32(text: string): number {
  let h = 0x811c9dc5;
  for (const byte of new TextEncoder().encode(text)) {
    h ^= byte;
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}
