/**
 * An in-process group of P ranks sharing one device: every rank is an object in this process, and
 * messages travel through per-pair FIFO mailboxes. For tests of DistAttn and sharding at any P
 * without processes or sockets (the host transport and NCCL are tested separately).
 */
import type { Device, DevicePtr, Stream } from "../runtime/device.ts";
import { bf16ToF32, f32ToBf16 } from "../io/dtype.ts";
import type { CommDType, Communicator, P2P } from "./comm.ts";

const ELEM_BYTES: Record<CommDType, number> = { f32: 4, bf16: 2, i32: 4 };

class Mailbox {
  #queue: Uint8Array[] = [];
  #waiters: ((m: Uint8Array) => void)[] = [];
  put(message: Uint8Array): void {
    const waiter = this.#waiters.shift();
    if (waiter) waiter(message);
    else this.#queue.push(message);
  }
  take(): Promise<Uint8Array> {
    const message = this.#queue.shift();
    if (message) return Promise.resolve(message);
    return new Promise((resolve) => this.#waiters.push(resolve));
  }
}

/** The shared state of one in-process group. */
export class LocalGroup {
  readonly #boxes = new Map<string, Mailbox>();
  constructor(readonly device: Device, readonly size: number) {}

  box(from: number, to: number, tag: string): Mailbox {
    const key = `${tag}:${from}>${to}`;
    let box = this.#boxes.get(key);
    if (!box) this.#boxes.set(key, box = new Mailbox());
    return box;
  }

  /** One communicator per rank. */
  members(): LocalComm[] {
    return Array.from(
      { length: this.size },
      (_, r) => new LocalComm(this, r, [...Array(this.size).keys()]),
    );
  }
}

export class LocalComm implements Communicator {
  readonly size: number;
  #seq = 0;
  constructor(
    readonly group: LocalGroup,
    readonly rank: number,
    readonly ranks: number[],
    readonly tag = "w",
  ) {
    this.size = ranks.length;
  }

  #read(ptr: DevicePtr, bytes: number): Uint8Array {
    return this.group.device.download(new Uint8Array(bytes), ptr);
  }

  async exchange(ops: P2P[], _stream?: Stream): Promise<void> {
    const tag = `${this.tag}x`;
    for (const o of ops) {
      if (o.kind === "send") {
        this.group.box(this.ranks[this.rank], this.ranks[o.peer], tag).put(
          this.#read(o.ptr, o.bytes),
        );
      }
    }
    for (const o of ops) {
      if (o.kind !== "recv") continue;
      const message = await this.group.box(this.ranks[o.peer], this.ranks[this.rank], tag).take();
      if (message.length !== o.bytes) {
        throw new Error(
          `rank ${this.rank}: expected ${o.bytes} bytes from ${o.peer}, got ${message.length}`,
        );
      }
      this.group.device.upload(o.ptr, message);
    }
  }

  /** Everyone sends its buffer to everyone; returns all buffers in rank order. */
  async #allToAll(data: Uint8Array): Promise<Uint8Array[]> {
    const tag = `${this.tag}c${this.#seq++}`;
    for (let p = 0; p < this.size; p++) {
      if (p !== this.rank) this.group.box(this.ranks[this.rank], this.ranks[p], tag).put(data);
    }
    const all: Uint8Array[] = [];
    for (let p = 0; p < this.size; p++) {
      all.push(
        p === this.rank
          ? data
          : await this.group.box(this.ranks[p], this.ranks[this.rank], tag).take(),
      );
    }
    return all;
  }

  #toF32(bytes: Uint8Array, dtype: CommDType): Float32Array {
    const copy = bytes.slice();
    if (dtype === "bf16") return bf16ToF32(new Uint16Array(copy.buffer));
    if (dtype === "i32") return Float32Array.from(new Int32Array(copy.buffer));
    return new Float32Array(copy.buffer);
  }

  #fromF32(values: Float32Array, dtype: CommDType): Uint8Array {
    if (dtype === "bf16") return new Uint8Array(f32ToBf16(values).buffer);
    if (dtype === "i32") return new Uint8Array(Int32Array.from(values).buffer);
    return new Uint8Array(values.buffer);
  }

  async allReduceSum(ptr: DevicePtr, count: number, dtype: CommDType): Promise<void> {
    const all = await this.#allToAll(this.#read(ptr, count * ELEM_BYTES[dtype]));
    const sum = new Float32Array(count);
    for (const part of all) {
      const values = this.#toF32(part, dtype);
      for (let i = 0; i < count; i++) sum[i] += values[i];
    }
    this.group.device.upload(ptr, this.#fromF32(sum, dtype));
  }

  async allGather(
    send: DevicePtr,
    recv: DevicePtr,
    countPerRank: number,
    dtype: CommDType,
  ): Promise<void> {
    const bytes = countPerRank * ELEM_BYTES[dtype];
    const all = await this.#allToAll(this.#read(send, bytes));
    all.forEach((part, p) => this.group.device.upload(recv + BigInt(p * bytes), part));
  }

  async reduceScatterSum(
    send: DevicePtr,
    recv: DevicePtr,
    countPerRank: number,
    dtype: CommDType,
  ): Promise<void> {
    const n = countPerRank * this.size;
    const all = await this.#allToAll(this.#read(send, n * ELEM_BYTES[dtype]));
    const sum = new Float32Array(countPerRank);
    for (const part of all) {
      const values = this.#toF32(part, dtype);
      for (let i = 0; i < countPerRank; i++) sum[i] += values[this.rank * countPerRank + i];
    }
    this.group.device.upload(recv, this.#fromF32(sum, dtype));
  }

  async broadcast(ptr: DevicePtr, count: number, dtype: CommDType, root: number): Promise<void> {
    const all = await this.#allToAll(this.#read(ptr, count * ELEM_BYTES[dtype]));
    this.group.device.upload(ptr, all[root]);
  }

  async barrier(): Promise<void> {
    await this.#allToAll(new Uint8Array(1));
  }

  subgroup(ranks: number[]): Promise<Communicator> {
    const me = ranks.indexOf(this.rank);
    if (me < 0) throw new Error(`rank ${this.rank} is not in subgroup [${ranks}]`);
    return Promise.resolve(
      new LocalComm(
        this.group,
        me,
        ranks.map((r) => this.ranks[r]),
        `${this.tag}/${ranks.join(",")}`,
      ),
    );
  }

  close(): void {}
  abort(): void {}
}
