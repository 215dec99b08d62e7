/**
 * The host transport's communicator: the `Communicator` of CPU ranks (or any device, slowly) over
 * the TCP mesh of host_mesh.ts. It copies device buffers to and from the host and builds every
 * collective from the mesh's all-to-all exchange; it never sees a socket.
 *
 * ## Collectives
 * Every sum is computed in rank order by one rank per chunk (reduce-scatter, then all-gather for
 * all-reduce), so all ranks get bitwise-identical results. bf16 is summed in fp32 and rounded once.
 *
 * @module
 */
import type { Device, DevicePtr, Stream } from "../runtime/device.ts";
import {
  checkCount,
  checkP2P,
  checkRank,
  checkSubgroup,
  type CommDType,
  commDTypeBytes,
  CommError,
  type Communicator,
  hash32,
  type P2P,
  sumHost,
} from "./comm.ts";
import { HostMesh, type HostMeshOptions, type HostOp } from "./host_mesh.ts";
import type { TcpStore } from "./store_client.ts";

export interface HostCommunicatorOptions extends HostMeshOptions {
  store: TcpStore;
  rank: number;
  size: number;
  device: Device;
}

/** Builds the mesh and returns the world communicator (which then owns the mesh and the store). */
export async function createHostCommunicator(
  options: HostCommunicatorOptions,
): Promise<HostCommunicator> {
  const mesh = await HostMesh.establish(options.store, options.rank, options.size, options);
  return new HostCommunicator(
    mesh,
    options.device,
    Array.from({ length: options.size }, (_, r) => r),
    "world",
    options.store,
  );
}

/** A communicator over some of the mesh's ranks. */
export class HostCommunicator implements Communicator {
  readonly rank: number;
  readonly size: number;
  readonly id: number;
  readonly #subgroups = new Map<string, number>();
  #closed = false;

  constructor(
    readonly mesh: HostMesh,
    readonly device: Device,
    /** Global ranks of the members, in this communicator's rank order. */
    readonly members: number[],
    readonly name: string,
    /** Set on the world communicator, which closes the store with the mesh. */
    readonly store?: TcpStore,
  ) {
    this.rank = members.indexOf(mesh.rank);
    if (this.rank < 0) throw new CommError(`rank ${mesh.rank} is not in ${name}`);
    this.size = members.length;
    this.id = hash32(name);
    mesh.register(this.id, name);
  }

  #transfer(ops: HostOp[], what: string): Promise<void> {
    if (this.#closed) return Promise.reject(new CommError(`${this.name} is closed`));
    for (const op of ops) op.peer = this.members[op.peer];
    return this.mesh.transfer(this.id, ops, `${what} on ${this.name}`);
  }

  #read(ptr: DevicePtr, bytes: number, stream: Stream): Uint8Array {
    const out = new Uint8Array(bytes);
    if (bytes > 0) this.device.download(out, ptr, stream);
    return out;
  }

  #write(ptr: DevicePtr, data: Uint8Array, stream: Stream): void {
    if (data.length > 0) this.device.upload(ptr, data, stream);
  }

  async exchange(ops: P2P[], stream: Stream = 0n): Promise<void> {
    checkP2P(ops, this.size);
    const wire: HostOp[] = ops.map((op) => ({
      kind: op.kind,
      peer: op.peer,
      data: op.kind === "send" ? this.#read(op.ptr, op.bytes, stream) : new Uint8Array(op.bytes),
    }));
    await this.#transfer(wire, `exchange of ${ops.length} ops`);
    ops.forEach((op, i) => {
      if (op.kind === "recv") this.#write(op.ptr, wire[i].data, stream);
    });
  }

  /** Sends parts[q] to every other rank q and receives sizes[q] bytes from each; own part kept. */
  async #allToAll(parts: Uint8Array[], sizes: number[], what: string): Promise<Uint8Array[]> {
    const ops: HostOp[] = [];
    const got: Uint8Array[] = new Array(this.size);
    for (let q = 0; q < this.size; q++) {
      if (q === this.rank) {
        got[q] = parts[q];
        continue;
      }
      ops.push({ kind: "send", peer: q, data: parts[q] });
      got[q] = new Uint8Array(sizes[q]);
      ops.push({ kind: "recv", peer: q, data: got[q] });
    }
    await this.#transfer(ops, what);
    return got;
  }

  /** Element offsets of the P chunks of `count` elements (the last ones one shorter). */
  #chunks(count: number): number[] {
    return Array.from({ length: this.size + 1 }, (_, i) => Math.floor((i * count) / this.size));
  }

  async allReduceSum(
    ptr: DevicePtr,
    count: number,
    dtype: CommDType,
    stream: Stream = 0n,
  ): Promise<void> {
    checkCount(count);
    const e = commDTypeBytes(dtype);
    if (this.size === 1 || count === 0) return this.#checkOpen();
    const data = this.#read(ptr, count * e, stream);
    const at = this.#chunks(count).map((c) => c * e);
    const mine = at[this.rank + 1] - at[this.rank];
    const parts = Array.from({ length: this.size }, (_, q) => data.subarray(at[q], at[q + 1]));
    const contributions = await this.#allToAll(
      parts,
      parts.map(() => mine),
      "all-reduce (reduce-scatter phase)",
    );
    const reduced = sumHost(contributions, dtype);
    const gathered = await this.#allToAll(
      parts.map(() => reduced),
      parts.map((p) => p.length),
      "all-reduce (all-gather phase)",
    );
    gathered.forEach((g, q) => data.set(g, at[q]));
    this.#write(ptr, data, stream);
  }

  async allGather(
    send: DevicePtr,
    recv: DevicePtr,
    countPerRank: number,
    dtype: CommDType,
    stream: Stream = 0n,
  ): Promise<void> {
    checkCount(countPerRank);
    const bytes = countPerRank * commDTypeBytes(dtype);
    const data = this.#read(send, bytes, stream);
    const got = await this.#allToAll(
      new Array(this.size).fill(data),
      new Array(this.size).fill(bytes),
      "all-gather",
    );
    const out = new Uint8Array(bytes * this.size);
    got.forEach((g, q) => out.set(g, q * bytes));
    this.#write(recv, out, stream);
  }

  async reduceScatterSum(
    send: DevicePtr,
    recv: DevicePtr,
    countPerRank: number,
    dtype: CommDType,
    stream: Stream = 0n,
  ): Promise<void> {
    checkCount(countPerRank);
    const bytes = countPerRank * commDTypeBytes(dtype);
    const data = this.#read(send, bytes * this.size, stream);
    const parts = Array.from(
      { length: this.size },
      (_, q) => data.subarray(q * bytes, (q + 1) * bytes),
    );
    const got = await this.#allToAll(parts, parts.map(() => bytes), "reduce-scatter");
    this.#write(recv, sumHost(got, dtype), stream);
  }

  async broadcast(
    ptr: DevicePtr,
    count: number,
    dtype: CommDType,
    root: number,
    stream: Stream = 0n,
  ): Promise<void> {
    checkCount(count);
    checkRank(root, this.size, "broadcast root");
    const bytes = count * commDTypeBytes(dtype);
    if (this.size === 1) return this.#checkOpen();
    if (this.rank === root) {
      const data = this.#read(ptr, bytes, stream);
      const ops: HostOp[] = [];
      for (let q = 0; q < this.size; q++) {
        if (q !== root) ops.push({ kind: "send", peer: q, data });
      }
      await this.#transfer(ops, "broadcast");
    } else {
      const data = new Uint8Array(bytes);
      await this.#transfer([{ kind: "recv", peer: root, data }], "broadcast");
      this.#write(ptr, data, stream);
    }
  }

  async barrier(): Promise<void> {
    const empty = new Uint8Array(0);
    await this.#allToAll(
      new Array(this.size).fill(empty),
      new Array(this.size).fill(0),
      "barrier",
    );
  }

  #checkOpen(): void {
    if (this.#closed) throw new CommError(`${this.name} is closed`);
    if (this.mesh.error) throw this.mesh.error;
  }

  subgroup(ranks: number[]): Promise<Communicator> {
    try {
      this.#checkOpen();
      checkSubgroup(ranks, this.size, this.rank);
      const key = ranks.join(",");
      const k = this.#subgroups.get(key) ?? 0;
      this.#subgroups.set(key, k + 1);
      const members = ranks.map((r) => this.members[r]);
      return Promise.resolve(
        new HostCommunicator(this.mesh, this.device, members, `${this.name}/[${key}]#${k}`),
      );
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** Orderly close; on the world communicator also closes the mesh and the store. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (!this.store) {
      this.mesh.unregister(this.id);
      return;
    }
    await this.mesh.close();
    await this.store.close();
  }

  /** Drops every socket of the job's mesh (and the store connection, on the world) at once. */
  abort(): void {
    this.#closed = true;
    this.mesh.abort();
    this.store?.abort();
  }

  /** Nothing to wait for: host operations are complete when their promise resolves. */
  synchronize(_stream?: Stream): Promise<void> {
    try {
      this.#checkOpen();
      return Promise.resolve();
    } catch (error) {
      return Promise.reject(error);
    }
  }
}
