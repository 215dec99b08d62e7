/**
 * ZeRO-3's gradient shard in host memory (--offload-gradients): how each unit's reduce-scattered
 * gradient lands there and is accumulated over micro-batches, and the squared norms of the units
 * over all ranks, computed on the host. The sharded store itself (src/parallel/zero3.ts) decides
 * when a unit's gradient is ready and hands it over; this file owns what happens after.
 */
import type { Device, DevicePtr, Event, Stream } from "../runtime/device.ts";
import type { Slot } from "../runtime/memory.ts";
import * as op from "../runtime/ops.ts";
import { axpyF32 } from "../runtime/ops_basic.ts";
import type { Communicator } from "../runtime/communicator.ts";
import { HostArena, type HostState } from "../model/host_state.ts";

/** Host bytes of the two landing buffers for a largest unit shard of `maxShard` elements. */
export function landingBytes(maxShard: number): number {
  return 2 * maxShard * 4;
}

/** A gradient download whose values still have to be added into the host gradient shard. */
interface PendingAdd {
  /** Landing buffer (0 or 1) it went into. */
  landing: number;
  /** Element offset in the host shard, and count. */
  at: number;
  n: number;
}

/**
 * The host gradient shard's arrivals. Downloads run on the collective stream `stream` (0n on the
 * CPU backend, where everything is synchronous), so each is ordered behind its reduce-scatter.
 */
export class OffloadedGradients {
  /** Two pinned landing buffers of one unit's shard, for gradients that must be added to what
   * earlier micro-batches left (the first arrival goes straight into the shard). */
  readonly #landing: HostArena;
  /** Per landing buffer: its download has finished (CUDA). */
  readonly #landed: Event[] = [];
  readonly #pendingAdds: PendingAdd[] = [];
  /** Per unit: its gradient of this step has arrived on the host at least once. */
  readonly #arrived: boolean[];
  /** Per unit: the squared gradient norm over all ranks, from finish(). */
  #unitSquares: Float64Array | null = null;
  #nextLanding = 0;

  constructor(
    readonly device: Device,
    /** The host shard: its `grads` tensor receives the gradients. */
    readonly host: HostState,
    /** Element offset of each unit's shard in the host shard, and each unit's shard length. */
    readonly shardOffset: readonly number[],
    readonly shardLength: readonly number[],
    readonly stream: Stream,
  ) {
    this.#arrived = shardLength.map(() => false);
    this.#landing = new HostArena(device);
    const maxShard = Math.max(...shardLength);
    for (const k of [0, 1]) this.#landing.add(`landing${k}`, maxShard * 4);
    if (device.backend === "cuda") this.#landed = [device.createEvent(), device.createEvent()];
  }

  get #async(): boolean {
    return this.stream !== 0n;
  }

  /**
   * The unit's reduce-scattered shard (`n` values at `from` on the device) goes down to the host
   * on the collective stream, behind the reduce-scatter and ahead of the next one that overwrites
   * `from`. Its first arrival of the step lands straight in the host shard (0 + g is g); later ones
   * (gradient accumulation) land in a buffer and are added on the host once they are there.
   */
  download(unit: number, from: DevicePtr, n: number): void {
    const at = this.shardOffset[unit];
    if (!this.#arrived[unit]) {
      this.device.downloadAsync(this.host.f32("grads").subarray(at, at + n), from, this.stream);
      this.#arrived[unit] = true;
      return;
    }
    const k = this.#nextLanding;
    this.#nextLanding ^= 1;
    this.#addLanded(k); // the buffer's previous download is added before it is reused
    const view = this.#landing.view(`landing${k}`);
    const landing = new Float32Array(view.buffer, view.byteOffset, n);
    this.device.downloadAsync(landing, from, this.stream);
    if (this.#async) this.device.recordEvent(this.#landed[k], this.stream);
    this.#pendingAdds.push({ landing: k, at, n });
  }

  /** Adds the pending download of landing buffer `k` (every one when omitted) into the shard. */
  #addLanded(k?: number): void {
    const arena = this.#landing;
    for (let i = 0; i < this.#pendingAdds.length;) {
      const p = this.#pendingAdds[i];
      if (k !== undefined && p.landing !== k) {
        i++;
        continue;
      }
      if (this.#async) this.device.syncEvent(this.#landed[p.landing]);
      axpyF32(arena.cpu, this.host.ptr("grads", p.at), arena.ptr(`landing${p.landing}`), 1, p.n);
      this.#pendingAdds.splice(i, 1);
    }
  }

  /**
   * The host shard is complete once every download has landed and been added; then each unit's
   * squared norm over this rank's host shard, summed over the ranks of `comm` through the device
   * slot `scalar` (one fp32 per unit). A unit no rank received this step has a zero gradient.
   */
  async finish(comm: Communicator, scalar: Slot): Promise<void> {
    if (this.#async) this.device.syncStream(this.stream);
    this.#addLanded();
    const host = this.host, cpu = host.cpu, count = this.shardLength.length;
    const grads = host.f32("grads");
    this.shardLength.forEach((n, i) => {
      if (!this.#arrived[i]) grads.fill(0, this.shardOffset[i], this.shardOffset[i] + n);
    });
    const sums = cpu.alloc(count * 4);
    try {
      cpu.memset(sums.ptr, 0, count * 4);
      this.shardLength.forEach((n, i) =>
        op.sumSquares(cpu, sums.at(i * 4), host.ptr("grads", this.shardOffset[i]), n)
      );
      const local = cpu.download(new Float32Array(count), sums.ptr);
      this.device.upload(scalar.ptr, local);
    } finally {
      sums.free();
    }
    await comm.allReduceSum(scalar.ptr, count, "f32");
    this.#unitSquares = Float64Array.from(
      this.device.download(new Float32Array(count), scalar.ptr),
    );
  }

  /** A new step: each unit's first arrival overwrites its host shard. */
  zero(): void {
    this.#arrived.fill(false);
    this.#unitSquares = null;
  }

  /** Per unit, the squared gradient norm over all ranks (after finish). */
  get unitSquares(): Float64Array {
    if (!this.#unitSquares) throw new Error("internal: gradient norms before finishGrads");
    return this.#unitSquares;
  }

  /** Frees the landing buffers and events; the stream's downloads must have finished. */
  free(): void {
    this.#landing.free();
    for (const e of this.#landed) if (e !== 0n) this.device.destroyEvent(e);
    this.#landed.length = 0;
  }
}
