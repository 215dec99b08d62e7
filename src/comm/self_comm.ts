/**
 * The communicator of a world of one: collectives are device copies. Lets the sharded parameter
 * store (and --offload-optimizer, which is built on it) run on a single device.
 */
import type { Device, DevicePtr, Stream } from "../runtime/device.ts";
import { COMM_DTYPE_BYTES, type CommDType, type Communicator, type P2P } from "./comm.ts";

export class SelfComm implements Communicator {
  readonly rank = 0;
  readonly size = 1;
  constructor(readonly device: Device) {}

  exchange(ops: P2P[], _stream?: Stream): Promise<void> {
    if (ops.length > 0) {
      return Promise.reject(new Error("a world of one has no peers to exchange with"));
    }
    return Promise.resolve();
  }

  allReduceSum(_ptr: DevicePtr, _count: number, _dtype: CommDType): Promise<void> {
    return Promise.resolve();
  }

  allGather(send: DevicePtr, recv: DevicePtr, count: number, dtype: CommDType, stream?: Stream) {
    if (send !== recv) this.device.copy(recv, send, count * COMM_DTYPE_BYTES[dtype], stream);
    return Promise.resolve();
  }

  reduceScatterSum(
    send: DevicePtr,
    recv: DevicePtr,
    count: number,
    dtype: CommDType,
    stream?: Stream,
  ) {
    if (send !== recv) this.device.copy(recv, send, count * COMM_DTYPE_BYTES[dtype], stream);
    return Promise.resolve();
  }

  broadcast(_ptr: DevicePtr, _count: number, _dtype: CommDType, _root: number): Promise<void> {
    return Promise.resolve();
  }

  barrier(): Promise<void> {
    return Promise.resolve();
  }

  subgroup(ranks: number[]): Promise<Communicator> {
    if (ranks.length !== 1 || ranks[0] !== 0) {
      return Promise.reject(new Error(`a world of one has no subgroup [${ranks}]`));
    }
    return Promise.resolve(this);
  }

  close(): void {}
  abort(): void {}
}
