/**
 * The communicator interface shared by DistAttn, the sharded trainer and every transport: NCCL on
 * GPUs (nccl_comm.ts), a TCP host transport for CPU ranks (host_transport.ts) and the in-process
 * group used by unit tests (local_comm.ts).
 *
 * ## Rules every caller must follow (the same as NCCL's)
 *
 * - Every member of a communicator issues the same collectives, and the same number of
 *   `exchange` calls, in the same order. Ranks that have nothing to send in an `exchange` still
 *   call it (with an empty list) when their peers' schedule does.
 * - Point-to-point messages between one pair of ranks on one communicator are matched in order:
 *   the k-th "send" from A to B (counted over all of A's exchange calls) pairs with the k-th "recv"
 *   at B from A, and both must name the same byte count. Within one `exchange` several ops to the
 *   same peer are therefore matched in list order.
 * - The buffers of one `exchange` must not overlap (send and receive buffers included): NCCL does
 *   not define the result.
 * - Completion: the promise of the host transport resolves when the data has landed (sends were
 *   read out of device memory during the call itself, so a send buffer may be reused as soon as
 *   the call returns its promise); NCCL's resolves once the work is enqueued on `stream`, and stream
 *   order (events) orders everything after it. Code written for NCCL — record an event on the
 *   communication stream after awaiting, make the compute stream wait on it — is correct for both.
 * - A failure (peer gone, timeout) is fatal for the whole job: the communicator and all its
 *   subgroups are unusable afterwards; call `abort()` and exit.
 *
 * @module
 */
import type { DevicePtr, Stream } from "../runtime/device.ts";
import { bf16ToF32, f32ToBf16 } from "../io/dtype.ts";

/** Element types the collectives reduce and move. */
export type CommDType = "f32" | "bf16" | "i32";

/** One point-to-point transfer of an `exchange`. `peer` is a rank of the same communicator. */
export interface P2P {
  kind: "send" | "recv";
  peer: number;
  ptr: DevicePtr;
  bytes: number;
}

/** A group of ranks that move device buffers between themselves. */
export interface Communicator {
  /** This process's rank in the communicator, 0..size-1. */
  readonly rank: number;
  readonly size: number;
  /**
   * Posts all sends and receives together (like ncclGroupStart/End) and completes them (host
   * transport) or enqueues them on `stream` (NCCL); cycles (r sends to r+t while receiving from
   * r-t) never deadlock. Peers are ranks of THIS communicator; a rank may send to itself.
   */
  exchange(ops: P2P[], stream?: Stream): Promise<void>;
  /**
   * In-place sum over ranks. bf16 is summed in fp32 and rounded once on the host transport;
   * NCCL sums bf16 natively (its own accumulation order and rounding).
   */
  allReduceSum(ptr: DevicePtr, count: number, dtype: CommDType, stream?: Stream): Promise<void>;
  /** recv (size * countPerRank elements) = the ranks' send buffers concatenated in rank order. */
  allGather(
    send: DevicePtr,
    recv: DevicePtr,
    countPerRank: number,
    dtype: CommDType,
    stream?: Stream,
  ): Promise<void>;
  /** recv (countPerRank elements) = sum over ranks of send[rank * countPerRank ...]. */
  reduceScatterSum(
    send: DevicePtr,
    recv: DevicePtr,
    countPerRank: number,
    dtype: CommDType,
    stream?: Stream,
  ): Promise<void>;
  /** Copies root's buffer into every rank's buffer (in place). */
  broadcast(
    ptr: DevicePtr,
    count: number,
    dtype: CommDType,
    root: number,
    stream?: Stream,
  ): Promise<void>;
  /** Resolves once every member has called it (host-side synchronisation; no stream work). */
  barrier(): Promise<void>;
  /**
   * A communicator over a subset of this one's ranks, given as ranks of THIS communicator; the
   * new communicator's rank i is `ranks[i]`. Every member calls it with the same list, in the same
   * order relative to its other subgroup calls; non-members need not call it. Create subgroups at
   * start-up, before any traffic is in flight.
   */
  subgroup(ranks: number[]): Promise<Communicator>;
  /**
   * Orderly shutdown once all work is done. The host and NCCL communicators return a promise
   * (await it before the process exits, so that peers see an orderly goodbye rather than a
   * failure); closing a world communicator also closes its subgroups and the rendezvous store.
   */
  close(): void;
  /** After a failure: drops every connection at once and never hangs. */
  abort(): void;
  /**
   * Waits until the work this communicator enqueued on `stream` has finished, watching for peer
   * failures and timeouts (NCCL: never blocks the JavaScript thread; host transport: nothing to
   * wait for). Optional: the in-process test group lacks it.
   */
  synchronize?(stream?: Stream): Promise<void>;
}

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
