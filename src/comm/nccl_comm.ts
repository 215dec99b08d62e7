/**
 * NCCL communicators through FFI (ffi/nccl.ts): the GPU transport.
 *
 * - Creation: the group's first member makes a unique id (ncclGetUniqueId) and puts it in the
 *   rendezvous store; every member reads it and calls ncclCommInitRank. ncclCommInitRank blocks
 *   the calling thread until all members have joined, and rank 0's thread also serves the store —
 *   so the id's creator first waits (through the store) until every other member holds the id and
 *   has nothing left to ask of the store; only then does anyone block.
 * - `exchange` is ncclGroupStart, one ncclSend/ncclRecv per op (bytes as a uint8 count),
 *   ncclGroupEnd, on the given stream. It resolves once enqueued: stream order does the rest.
 * - Collectives map one to one (bf16 sums are NCCL's own, native bf16 arithmetic with its own
 *   accumulation order); `barrier` is a rendezvous-store barrier (host side, no stream work).
 * - Failure handling: `synchronize(stream)` waits for a stream by polling an event with the CUDA
 *   driver's cuEventQuery, so the JavaScript thread stays free, while a watchdog checks
 *   ncclCommGetAsyncError, the store's failure notices (a rank whose store connection dropped) and
 *   a timeout; on any of them it calls ncclCommAbort, which makes NCCL kernels stuck on a dead
 *   peer return, and rejects. (Polling from the main thread also avoids waiting on a helper thread,
 *   where the CUDA runtime would bind device 0's context.)
 *   A plain `device.syncStream` would block the JavaScript thread and could hang forever.
 *
 * Every NCCL status other than success becomes an NcclError carrying ncclGetErrorString and
 * ncclGetLastError.
 *
 * @module
 */
import type { Device, DevicePtr, Stream } from "../runtime/device.ts";
import { openNccl } from "../../ffi/loader.ts";
import { NCCL_UNIQUE_ID_BYTES, NcclDataType, NcclRedOp, type NcclSymbols } from "../../ffi/nccl.ts";
import { cString } from "../../ffi/unwrap.ts";
import {
  checkCount,
  checkP2P,
  checkRank,
  checkSubgroup,
  type CommDType,
  CommError,
  commTimeoutMs,
  type Communicator,
  type P2P,
} from "./comm.ts";
import type { PeerFailure, TcpStore } from "./store_client.ts";

const RESULT_NAMES: Record<number, string> = {
  0: "ncclSuccess",
  1: "ncclUnhandledCudaError",
  2: "ncclSystemError",
  3: "ncclInternalError",
  4: "ncclInvalidArgument",
  5: "ncclInvalidUsage",
  6: "ncclRemoteError",
  7: "ncclInProgress",
};

/** An NCCL call that failed, with NCCL's own description. */
export class NcclError extends CommError {
  constructor(readonly fn: string, readonly code: number, detail: string, peer?: number) {
    super(`${fn} failed (${RESULT_NAMES[code] ?? `result ${code}`}): ${detail}`, peer);
    this.name = "NcclError";
  }
}

const DTYPES: Record<CommDType, number> = {
  f32: NcclDataType.float32,
  bf16: NcclDataType.bfloat16,
  i32: NcclDataType.int32,
};

let loaded: NcclSymbols | undefined;
/** NCCL's symbols, opened once per process. */
export function loadNccl(): NcclSymbols {
  loaded ??= openNccl().lib.symbols;
  return loaded;
}

const CUDA_DRIVER_SYMBOLS = {
  // CUresult cuEventQuery(CUevent): 0 = done, 600 = CUDA_ERROR_NOT_READY. cudaEvent_t is a CUevent.
  cuEventQuery: { parameters: ["usize"], result: "i32" },
} as const;
let driver: Deno.DynamicLibrary<typeof CUDA_DRIVER_SYMBOLS> | null | undefined;

/** cuEventQuery from the CUDA driver (libcuda.so.1), or undefined where it cannot be opened. */
function eventQuery(): ((event: bigint) => number) | undefined {
  if (driver === undefined) {
    try {
      driver = Deno.dlopen("libcuda.so.1", CUDA_DRIVER_SYMBOLS);
    } catch {
      driver = null;
    }
  }
  return driver?.symbols.cuEventQuery;
}

const CUDA_NOT_READY = 600;

/** State shared by a world communicator and its subgroups. */
interface Shared {
  store: TcpStore;
  failure?: PeerFailure;
  unsubscribe?: () => void;
}

export interface NcclCommOptions {
  device: Device;
  store: TcpStore;
  /** This rank in the new communicator. */
  rank: number;
  size: number;
  /** Global ranks of the members in communicator order (default 0..size-1). */
  members?: number[];
  /** Unique name among the job's communicators (store keys derive from it). */
  name?: string;
  /** Watchdog limit of `synchronize` (default DISTFLASH_COMM_TIMEOUT_S). */
  timeoutMs?: number;
  /** NCCL's symbols (default: libnccl.so.2 through ffi/loader.ts; tests pass a fake). */
  nccl?: NcclSymbols;
}

/** A communicator backed by an ncclComm_t. */
export class NcclCommunicator implements Communicator {
  readonly rank: number;
  readonly size: number;
  readonly members: number[];
  readonly name: string;
  readonly timeoutMs: number;
  readonly #nccl: NcclSymbols;
  readonly #device: Device;
  readonly #shared: Shared;
  readonly #isWorld: boolean;
  readonly #children: NcclCommunicator[] = [];
  readonly #subgroups = new Map<string, number>();
  #comm: bigint;
  #state: "open" | "closed" | "aborted" = "open";
  #barriers = 0;

  private constructor(
    options: NcclCommOptions & { members: number[]; name: string },
    comm: bigint,
    shared: Shared,
    isWorld: boolean,
  ) {
    this.rank = options.rank;
    this.size = options.size;
    this.members = options.members;
    this.name = options.name;
    this.timeoutMs = options.timeoutMs ?? commTimeoutMs();
    this.#nccl = options.nccl ?? loadNccl();
    this.#device = options.device;
    this.#comm = comm;
    this.#shared = shared;
    this.#isWorld = isWorld;
  }

  /** Creates the world communicator (which then owns the store). All ranks call it together. */
  static async create(options: NcclCommOptions): Promise<NcclCommunicator> {
    const shared: Shared = { store: options.store };
    shared.unsubscribe = options.store.onFailure((f) => shared.failure ??= f);
    try {
      return await NcclCommunicator.#init(options, shared, true);
    } catch (error) {
      shared.unsubscribe();
      throw error;
    }
  }

  static async #init(
    options: NcclCommOptions,
    shared: Shared,
    isWorld: boolean,
  ): Promise<NcclCommunicator> {
    const nccl = options.nccl ?? loadNccl();
    const { rank, size, store } = options;
    checkRank(rank, size, "rank");
    const members = options.members ?? Array.from({ length: size }, (_, r) => r);
    const name = options.name ?? "world";
    const key = `nccl/${name}`;
    let id: Uint8Array<ArrayBuffer> = new Uint8Array(NCCL_UNIQUE_ID_BYTES);
    if (rank === 0) {
      check(nccl, nccl.ncclGetUniqueId(id), "ncclGetUniqueId", 0n);
      await store.set(`${key}/id`, id);
      // Wait until every member holds the id: after this nobody needs the store to answer.
      await Promise.all(
        members.slice(1).map((_, i) => store.get(`${key}/ack/${i + 1}`)),
      );
    } else {
      id = new Uint8Array(await store.get(`${key}/id`));
      if (id.length !== NCCL_UNIQUE_ID_BYTES) {
        throw new CommError(`NCCL unique id for ${name} has ${id.length} bytes`);
      }
      await store.post(`${key}/ack/${rank}`, "1");
    }
    const out = new BigUint64Array(1);
    check(nccl, nccl.ncclCommInitRank(out, size, id, rank), "ncclCommInitRank", 0n);
    return new NcclCommunicator({ ...options, members, name, nccl }, out[0], shared, isWorld);
  }

  /** The raw ncclComm_t. */
  get handle(): bigint {
    return this.#comm;
  }

  #check(code: number, fn: string): void {
    check(this.#nccl, code, fn, this.#comm);
  }

  #usable(): void {
    if (this.#state !== "open") throw new CommError(`NCCL communicator ${this.name} is closed`);
    const f = this.#shared.failure;
    if (f) {
      throw new CommError(`rank ${f.rank} failed: ${f.reason}`, f.rank);
    }
  }

  /** Throws an NcclError if NCCL has recorded an asynchronous error (a watchdog's question). */
  checkAsyncError(): void {
    if (this.#state !== "open") return;
    const out = new Int32Array(1);
    this.#check(this.#nccl.ncclCommGetAsyncError(this.#comm, out), "ncclCommGetAsyncError");
    const code = out[0];
    if (code !== 0 && code !== 7) {
      throw new NcclError("NCCL (asynchronous)", code, describe(this.#nccl, code, this.#comm));
    }
  }

  exchange(ops: P2P[], stream: Stream = 0n): Promise<void> {
    try {
      checkP2P(ops, this.size);
      this.#usable();
      const n = this.#nccl;
      this.#check(n.ncclGroupStart(), "ncclGroupStart");
      let failure: unknown;
      try {
        for (const op of ops) {
          if (op.bytes === 0) continue;
          const fn = op.kind === "send" ? "ncclSend" : "ncclRecv";
          const code = n[fn](
            op.ptr,
            BigInt(op.bytes),
            NcclDataType.uint8,
            op.peer,
            this.#comm,
            stream,
          );
          this.#check(code, `${fn} (peer ${op.peer}, ${op.bytes} bytes)`);
        }
      } catch (error) {
        failure = error;
      }
      const end = n.ncclGroupEnd();
      if (failure) throw failure;
      this.#check(end, "ncclGroupEnd");
      return Promise.resolve();
    } catch (error) {
      return Promise.reject(error);
    }
  }

  #run(fn: () => void): Promise<void> {
    try {
      this.#usable();
      fn();
      return Promise.resolve();
    } catch (error) {
      return Promise.reject(error);
    }
  }

  allReduceSum(ptr: DevicePtr, count: number, dtype: CommDType, stream: Stream = 0n) {
    return this.#run(() => {
      checkCount(count);
      if (count === 0) return;
      this.#check(
        this.#nccl.ncclAllReduce(
          ptr,
          ptr,
          BigInt(count),
          dtypeOf(dtype),
          NcclRedOp.sum,
          this.#comm,
          stream,
        ),
        "ncclAllReduce",
      );
    });
  }

  allGather(
    send: DevicePtr,
    recv: DevicePtr,
    countPerRank: number,
    dtype: CommDType,
    stream: Stream = 0n,
  ) {
    return this.#run(() => {
      checkCount(countPerRank);
      if (countPerRank === 0) return;
      this.#check(
        this.#nccl.ncclAllGather(
          send,
          recv,
          BigInt(countPerRank),
          dtypeOf(dtype),
          this.#comm,
          stream,
        ),
        "ncclAllGather",
      );
    });
  }

  reduceScatterSum(
    send: DevicePtr,
    recv: DevicePtr,
    countPerRank: number,
    dtype: CommDType,
    stream: Stream = 0n,
  ) {
    return this.#run(() => {
      checkCount(countPerRank);
      if (countPerRank === 0) return;
      this.#check(
        this.#nccl.ncclReduceScatter(
          send,
          recv,
          BigInt(countPerRank),
          dtypeOf(dtype),
          NcclRedOp.sum,
          this.#comm,
          stream,
        ),
        "ncclReduceScatter",
      );
    });
  }

  broadcast(ptr: DevicePtr, count: number, dtype: CommDType, root: number, stream: Stream = 0n) {
    return this.#run(() => {
      checkCount(count);
      checkRank(root, this.size, "broadcast root");
      if (count === 0) return;
      this.#check(
        this.#nccl.ncclBroadcast(
          ptr,
          ptr,
          BigInt(count),
          dtypeOf(dtype),
          root,
          this.#comm,
          stream,
        ),
        "ncclBroadcast",
      );
    });
  }

  /** A rendezvous-store barrier among the members (host side; does not wait for GPU work). */
  async barrier(): Promise<void> {
    this.#usable();
    await this.#shared.store.barrier(`nccl/${this.name}/barrier`, this.size);
  }

  /**
   * Waits for the work on `stream` without blocking the JavaScript thread: polls an event with
   * the driver's cuEventQuery while watching for an NCCL async error, a failure reported by the
   * store, and `timeoutMs`; on any of them it aborts the communicator (ncclCommAbort makes NCCL
   * kernels stuck on a dead peer return) and rejects. After a rejection the process should exit.
   * On the CPU backend the work is already done; without libcuda it falls back to a blocking wait.
   */
  async synchronize(stream: Stream = 0n, timeoutMs = this.timeoutMs): Promise<void> {
    const watch = () => {
      try {
        this.#usable();
        this.checkAsyncError();
      } catch (error) {
        this.abort(); // kernels waiting on a dead peer must not keep the GPU busy
        throw error;
      }
    };
    watch();
    const device = this.#device;
    const query = device.backend === "cuda" ? eventQuery() : undefined;
    if (!query) return device.syncStream(stream);
    const event = device.createEvent();
    try {
      device.recordEvent(event, stream);
      const started = performance.now();
      let lastWatch = started;
      for (let spins = 0;; spins++) {
        const result = query(event);
        if (result === 0) return;
        if (result !== CUDA_NOT_READY) {
          throw new CommError(`cuEventQuery failed (CUresult ${result}) on ${this.name}`);
        }
        const now = performance.now();
        if (now - lastWatch >= 100) {
          lastWatch = now;
          watch();
          if (now - started > timeoutMs) {
            this.abort();
            throw new CommError(
              `rank ${this.members[this.rank]}: NCCL work on ${this.name} did not finish within ` +
                `${(timeoutMs / 1000).toFixed(1)} s (DISTFLASH_COMM_TIMEOUT_S); aborted`,
            );
          }
        }
        await new Promise((resolve) => setTimeout(resolve, spins < 20 ? 0 : 1));
      }
    } finally {
      device.destroyEvent(event);
    }
  }

  async subgroup(ranks: number[]): Promise<Communicator> {
    this.#usable();
    const index = checkSubgroup(ranks, this.size, this.rank);
    const list = ranks.join(",");
    const k = this.#subgroups.get(list) ?? 0;
    this.#subgroups.set(list, k + 1);
    const members = ranks.map((r) => this.members[r]);
    const child = await NcclCommunicator.#init(
      {
        device: this.#device,
        store: this.#shared.store,
        rank: index,
        size: ranks.length,
        members,
        name: `${this.name}/[${members.join(",")}]#${k}`,
        timeoutMs: this.timeoutMs,
        nccl: this.#nccl,
      },
      this.#shared,
      false,
    );
    this.#children.push(child);
    return child;
  }

  /** ncclCommDestroy (subgroups first); the world communicator then closes the store. */
  async close(): Promise<void> {
    if (this.#state !== "open") return;
    for (const child of this.#children) await child.close();
    this.#state = "closed";
    this.#check(this.#nccl.ncclCommDestroy(this.#comm), "ncclCommDestroy");
    if (this.#isWorld) {
      this.#shared.unsubscribe?.();
      await this.#shared.store.close();
    }
  }

  /** ncclCommAbort on this communicator and its subgroups (the world also drops the store). */
  abort(): void {
    for (const child of this.#children) child.abort();
    if (this.#state === "aborted") return;
    const wasOpen = this.#state === "open";
    this.#state = "aborted";
    if (wasOpen) this.#nccl.ncclCommAbort(this.#comm);
    if (this.#isWorld) {
      this.#shared.unsubscribe?.();
      this.#shared.store.abort();
    }
  }
}

function dtypeOf(dtype: CommDType): number {
  const d = DTYPES[dtype];
  if (d === undefined) throw new TypeError(`unknown communication dtype ${JSON.stringify(dtype)}`);
  return d;
}

function describe(nccl: NcclSymbols, code: number, comm: bigint): string {
  const text = cString(nccl.ncclGetErrorString(code));
  let last = "";
  try {
    last = cString(nccl.ncclGetLastError(comm));
  } catch { /* old NCCL without ncclGetLastError */ }
  return last && last !== text ? `${text}: ${last}` : text || "(no message)";
}

/** Throws an NcclError unless `code` is ncclSuccess. */
function check(nccl: NcclSymbols, code: number, fn: string, comm: bigint): void {
  if (code !== 0) throw new NcclError(fn, code, describe(nccl, code, comm));
}
