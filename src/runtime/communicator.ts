/**
 * The communicator interface shared by the parameter stores, DistAttn and every transport (in
 * src/comm): NCCL on GPUs (nccl_comm.ts), a TCP host transport for CPU ranks (host_communicator.ts)
 * and the in-process group used by unit tests (local_comm.ts). It lives here, below the model and
 * src/parallel, so that both depend on it and not on each other.
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
import type { DevicePtr, Stream } from "./device.ts";

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
