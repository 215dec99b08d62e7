/**
 * ZeRO-3 (FSDP's `full_shard`): each unit's flat parameters (the embedding, each layer, the final
 * norm with the LM head) are split evenly over the ranks. A rank keeps only its shard of the fp32
 * master weights, gradients and AdamW moments, and nothing else of the parameters. A unit's
 * compute weights are converted from the fp32 shard into a small staging buffer and all-gathered
 * just before use into one of a few unit buffers, and its gradients are reduce-scattered into the
 * shards right after its backward. Memory per rank: 16 bytes per parameter / world, plus the unit
 * buffers. With the optimizer offloaded, the shard's master and moments live in host memory
 * (src/model/host_state.ts) and the CPU backend's AdamW updates them. With the gradients offloaded
 * too, each unit's reduce-scattered gradient goes down to host memory as soon as it exists (on the
 * collective stream, behind the reduce-scatter) and the device holds no gradient shard at all:
 * the unit gradient buffers are all it keeps. The host sides of the offload live beside this file:
 * offloaded_grads.ts (the gradients' landing, accumulation and norms on the host) and
 * offloaded_update.ts (the chain of per-unit host AdamW updates).
 *
 * The model is written for one device and reads weights and writes gradients through the
 * ParamStore interface (src/model/params.ts); this store is given to it from outside
 * (shardedParamStore, which the ParallelLayout chooses).
 */
import type { Device, DevicePtr, Event, Stream } from "../runtime/device.ts";
import type { MemoryPlan, Slot } from "../runtime/memory.ts";
import * as op from "../runtime/ops.ts";
import { DType } from "../runtime/ops.ts";
import { axpyF32, fillNormal } from "../runtime/ops_basic.ts";
import type { Communicator } from "../runtime/communicator.ts";
import { HostState } from "../model/host_state.ts";
import { landingBytes, OffloadedGradients } from "./offloaded_grads.ts";
import { OffloadedUpdates } from "./offloaded_update.ts";
import {
  checkSize,
  decayed,
  deviceState,
  type ParamEntry,
  type ParamLayout,
  type ParamStore,
  type ParamStoreSpec,
  type StateTensor,
} from "../model/params.ts";

/**
 * ZeRO-3 over the ranks of `comm` (a world of one on a single device with the optimizer
 * offloaded); `offloadGradients` (needs `offloadOptimizer`) keeps the gradient shard on the host.
 */
export function shardedParamStore(
  comm: Communicator,
  offloadOptimizer: boolean,
  offloadGradients = false,
): ParamStoreSpec {
  return {
    align: 64 * comm.size,
    create: (device, layout, dtype, plan) =>
      new ShardedParams(device, layout, dtype, plan, comm, offloadOptimizer, offloadGradients),
  };
}

/**
 * TEST-ONLY fault injection, for the tests that a failed host optimizer update reaches the user
 * as an error and never as a checkpoint: when the environment variable holds N, the N-th unit
 * update of the offloaded optimizer in this process (1-based, counted over all steps) fails after
 * its AdamW changed the unit's host state, before its weights are uploaded: a half-updated
 * optimizer step. Never set it in a real run.
 */
export const TEST_FAIL_HOST_UPDATE_ENV = "DISTFLASH_TEST_FAIL_HOST_UPDATE";
let hostUpdates = 0;

function injectTestHostUpdateFault(): void {
  const n = Deno.env.get(TEST_FAIL_HOST_UPDATE_ENV);
  if (!n || ++hostUpdates !== Number(n)) return;
  throw new Error(`the host AdamW update failed (injected by ${TEST_FAIL_HOST_UPDATE_ENV}=${n})`);
}

/**
 * ZeRO-3 over the ranks of `comm`. On CUDA the collectives run on a stream of their own, ordered
 * with the compute stream by events: a layer's all-gather is issued a layer ahead (prefetch) into
 * the other of two layer buffers, and a layer's gradient reduce-scatter runs while the next layer's
 * backward computes into the other of two gradient buffers. On the CPU backend everything is
 * synchronous and the same calls simply run in order.
 */
export class ShardedParams implements ParamStore {
  readonly W: number;
  readonly rank: number;
  /** Element offset of each unit's shard inside the shard buffers. */
  readonly shardOffset: number[] = [];
  readonly shardSize: number;
  /** fp32 master and AdamW moments of the shard on the device (null when offloaded). */
  readonly #dev: { master: Slot; m: Slot; v: Slot } | null;
  /** One unit's shard in the compute dtype, converted just before its all-gather (bf16 only). */
  readonly #staging: Slot | null;
  /** Offloaded: the shard's compute-dtype weights on the device, uploaded after each update. */
  readonly #copy: Slot | null;
  /** Offloaded: master, moments and a gradient copy in host memory. */
  #host: HostState | null = null;
  /** fp32 gradient shard on the device (null with --offload-gradients: it lives on the host). */
  readonly grads: Slot | null;
  /** --offload-gradients: the host gradient shard's landing, accumulation and norms. */
  #hostGrads: OffloadedGradients | null = null;
  readonly #scalar: Slot;
  readonly #rsOut: Slot;
  /** Gathered compute weights: [embedding, head, layer A, layer B]. */
  readonly #bufs: Slot[];
  /** fp32 unit gradients: [embedding, head, layer A, layer B]. */
  readonly #gradBufs: Slot[];
  /** Which unit each gathered buffer holds (-1: none or stale). */
  readonly #resident: number[] = [-1, -1, -1, -1];
  /** Which unit is being gathered into each buffer on the collective stream (-1: none). */
  readonly #pending: number[] = [-1, -1, -1, -1];
  /** Collective stream (0n: none, CPU backend) and its events (see #async). */
  #stream: Stream = 0n;
  #computeMark: Event = 0n;
  #commMark: Event = 0n;
  /** Per weight buffer: its gather has landed. Per gradient buffer: its reduce-scatter read it. */
  #gathered: Event[] = [];
  #reduced: Event[] = [];
  /** Offloaded: per unit, its host AdamW and the upload of its new weights (null: done). */
  readonly #updates: OffloadedUpdates;
  /** Per unit, the parts of its parameters this rank owns: shard offset, length, weight decay. */
  readonly #pieces: { at: number; n: number; decay: boolean }[][];
  readonly #gradBusy: boolean[] = [false, false, false, false];
  readonly #gatherF32: Slot; // fp32 unit buffer for getParam
  #gatheredF32 = -1;

  constructor(
    readonly device: Device,
    readonly layout: ParamLayout,
    readonly dtype: DType,
    plan: MemoryPlan,
    readonly comm: Communicator,
    /** --offload-optimizer: fp32 master and AdamW moments live in host memory. */
    readonly offload = false,
    /** --offload-gradients: the gradient shard lives in host memory too. */
    readonly offloadGrads = false,
  ) {
    if (offloadGrads && !offload) {
      throw new Error("offloading the gradients needs the optimizer offloaded (host AdamW)");
    }
    this.W = comm.size;
    this.rank = comm.rank;
    if (layout.unitAlign % (64 * this.W) !== 0) {
      throw new Error(`the parameter layout must align units to 64 x ${this.W} elements`);
    }
    let off = 0;
    for (const u of layout.units) {
      this.shardOffset.push(off);
      off += u.size / this.W;
    }
    this.shardSize = off;
    this.#updates = new OffloadedUpdates(layout.units.length);
    this.#pieces = layout.units.map((_, u) =>
      layout.entries.filter((e) => e.unit === u).flatMap((e) => {
        const own = this.#owned(e);
        return own ? [{ at: own.shardAt, n: own.to - own.from, decay: e.decay }] : [];
      })
    );
    const f32 = DType.f32, L = layout.cfg.numLayers;
    const maxUnit = Math.max(...layout.units.map((u) => u.size));
    if (offload) {
      this.#dev = null;
      this.#staging = null;
      this.#copy = plan.reserve("compute weights (shard)", "copy", off, dtype);
    } else {
      this.#dev = {
        master: plan.reserve("fp32 master weights (shard)", "master", off, f32),
        m: plan.reserve("AdamW moments (shard)", "m", off, f32),
        v: plan.reserve("AdamW moments (shard)", "v", off, f32),
      };
      this.#copy = null;
      this.#staging = dtype === f32
        ? null
        : plan.reserve("gathered layers", "staging", maxUnit / this.W, dtype);
    }
    this.grads = offloadGrads ? null : plan.reserve("gradients (shard)", "grads", off, f32);
    this.#scalar = plan.reserve("unit gradients", "norms", layout.units.length, f32);
    const units = layout.units;
    const layerMax = Math.max(...units.slice(1, L + 1).map((u) => u.size), 64);
    const head = units[L + 1].size, emb = units[0].size;
    const g = "gathered layers";
    this.#bufs = [
      plan.reserve(g, "embedding", emb, dtype),
      plan.reserve(g, "head", head, dtype),
      plan.reserve(g, "layerA", layerMax, dtype),
      plan.reserve(g, "layerB", layerMax, dtype),
    ];
    const gg = "unit gradients";
    this.#gradBufs = [
      plan.reserve(gg, "embedding", emb, f32),
      plan.reserve(gg, "head", head, f32),
      plan.reserve(gg, "layerA", layerMax, f32),
      plan.reserve(gg, "layerB", layerMax, f32),
    ];
    this.#rsOut = plan.reserve(
      gg,
      "reduce-scatter",
      Math.max(...units.map((u) => u.size)) / this.W,
      f32,
    );
    // getParam's fp32 unit runs between steps, when the layer gradient buffers are idle: it uses
    // the second one when a layer is the largest unit (beginGrads drops what it held).
    const largest = Math.max(...units.map((u) => u.size));
    this.#gatherF32 = largest <= layerMax
      ? this.#gradBufs[3]
      : plan.reserve(gg, "gather fp32", largest, f32);
  }

  get state(): StateTensor[] {
    if (this.#dev) return deviceState(this.device, this.#dev.master, this.#dev.m, this.#dev.v);
    const host = this.#host!;
    return ([["master", "master"], ["adam_m", "m"], ["adam_v", "v"]] as const).map((
      [name, key],
    ) => ({
      name,
      numel: this.shardSize,
      read: () => host.f32(key).slice(),
      write: (values: Float32Array) => host.f32(key).set(values),
    }));
  }

  initialize(): void {
    const d = this.device;
    if (d.backend === "cuda") {
      this.#stream = d.createStream();
      this.#computeMark = d.createEvent();
      this.#commMark = d.createEvent();
      this.#gathered = this.#bufs.map(() => d.createEvent());
      this.#reduced = this.#gradBufs.map(() => d.createEvent());
    }
    if (this.grads) this.device.memset(this.grads.ptr, 0, this.grads.bytes);
    if (this.#dev) {
      for (const s of [this.#dev.master, this.#dev.m, this.#dev.v]) {
        this.device.memset(s.ptr, 0, s.bytes);
      }
    } else {
      this.#host = new HostState(this.device, this.shardSize, this.dtype);
    }
    if (this.offloadGrads) {
      const lengths = this.layout.units.map((u) => u.size / this.W);
      this.#hostGrads = new OffloadedGradients(
        d,
        this.#host!,
        this.shardOffset,
        lengths,
        this.#stream,
      );
    }
  }

  /** Elements of the largest unit's shard. */
  get #maxShard(): number {
    return Math.max(...this.layout.units.map((u) => u.size)) / this.W;
  }

  release(): void {
    // A host thread may still be writing into the host buffers: settle() first.
    this.#updates.assertSettled();
    const d = this.device;
    // Downloads may still be landing in the host buffers.
    if (this.#stream !== 0n) d.syncStream(this.#stream);
    this.#host?.free();
    this.#host = null;
    this.#hostGrads?.free();
    this.#hostGrads = null;
    for (
      const e of [
        this.#computeMark,
        this.#commMark,
        ...this.#gathered,
        ...this.#reduced,
      ]
    ) {
      if (e !== 0n) d.destroyEvent(e);
    }
    this.#gathered = [];
    this.#reduced = [];
    this.#computeMark = this.#commMark = 0n;
    if (this.#stream !== 0n) d.destroyStream(this.#stream);
    this.#stream = 0n;
  }

  /** True when collectives run on their own stream (CUDA). */
  get #async(): boolean {
    return this.#stream !== 0n;
  }

  /** Later collectives wait for everything issued so far on the compute stream. */
  #commAfterCompute(): void {
    if (!this.#async) return;
    this.device.recordEvent(this.#computeMark, 0n);
    this.device.waitEvent(this.#stream, this.#computeMark);
  }

  get hostBytes(): number {
    // master, m, v and the gradient copy in fp32, and the bf16 copy when computing in bf16; with
    // the gradients offloaded, two landing buffers of the largest unit's shard
    if (!this.offload) return 0;
    const landing = this.offloadGrads ? landingBytes(this.#maxShard) : 0;
    return this.shardSize * (16 + (this.dtype === DType.bf16 ? 2 : 0)) + landing;
  }

  #bufIndex(unit: number): number {
    const L = this.layout.cfg.numLayers;
    return unit === 0 ? 0 : unit === L + 1 ? 1 : 2 + ((unit - 1) % 2);
  }

  #gradIndex(unit: number): number {
    return this.#bufIndex(unit);
  }

  weight(e: ParamEntry): DevicePtr {
    const b = this.#bufIndex(e.unit);
    if (this.#resident[b] !== e.unit) {
      throw new Error(`internal: unit ${e.unit} used before gather`);
    }
    return this.#bufs[b].at(e.offset - this.layout.units[e.unit].start);
  }

  grad(e: ParamEntry): DevicePtr {
    return this.#gradBufs[this.#gradIndex(e.unit)].at(e.offset - this.layout.units[e.unit].start);
  }

  async gather(unit: number): Promise<void> {
    const b = this.#bufIndex(unit);
    if (this.#resident[b] === unit) return;
    if (this.#pending[b] !== unit) await this.prefetch(unit);
    if (this.#async) this.device.waitEvent(0n, this.#gathered[b]);
    this.#pending[b] = -1;
    this.#resident[b] = unit;
  }

  async prefetch(unit: number): Promise<void> {
    const b = this.#bufIndex(unit);
    if (this.#resident[b] === unit || this.#pending[b] === unit) return;
    await this.#updates.of(unit); // offloaded: the unit's new weights are on their way up
    // The buffer's previous unit was last read by compute already issued.
    this.#commAfterCompute();
    this.#resident[b] = -1;
    const n = this.layout.units[unit].size / this.W, s = this.#stream;
    let send = this.#copy
      ? this.#copy.at(this.shardOffset[unit])
      : this.#dev!.master.at(this.shardOffset[unit]);
    if (this.#staging) {
      // bf16: round this rank's fp32 shard of the unit right before sending it (no resident copy).
      op.convert(this.device, this.#staging.ptr, this.dtype, send, DType.f32, n, s);
      send = this.#staging.ptr;
    }
    const dtype = this.dtype === DType.bf16 ? "bf16" : "f32";
    await this.comm.allGather(send, this.#bufs[b].ptr, n, dtype, s);
    if (this.#async) this.device.recordEvent(this.#gathered[b], s);
    this.#pending[b] = unit;
  }

  beginGrads(unit: number): void {
    const g = this.#gradIndex(unit);
    if (this.#gradBufs[g] === this.#gatherF32) this.#gatheredF32 = -1;
    if (this.#gradBusy[g]) {
      // The buffer's previous reduce-scatter must have read it before it is zeroed.
      this.device.waitEvent(0n, this.#reduced[g]);
      this.#gradBusy[g] = false;
    }
    this.device.memset(this.#gradBufs[g].ptr, 0, this.layout.units[unit].size * 4);
  }

  async reduceGrads(unit: number): Promise<void> {
    const g = this.#gradIndex(unit), n = this.layout.units[unit].size / this.W, s = this.#stream;
    this.#commAfterCompute();
    await this.comm.reduceScatterSum(this.#gradBufs[g].ptr, this.#rsOut.ptr, n, "f32", s);
    if (this.grads) {
      // Accumulate over micro-batches: the shard gradient is zeroed once per step.
      axpyF32(this.device, this.grads.at(this.shardOffset[unit]), this.#rsOut.ptr, 1, n, s);
    } else this.#hostGrads!.download(unit, this.#rsOut.ptr, n);
    if (this.#async) {
      this.device.recordEvent(this.#reduced[g], s);
      this.#gradBusy[g] = true;
    }
  }

  async finishGrads(): Promise<void> {
    // Every reduce-scatter (and gather) issued so far lands before the norm and the update.
    if (this.#async) {
      this.device.recordEvent(this.#commMark, this.#stream);
      this.device.waitEvent(0n, this.#commMark);
      this.#gradBusy.fill(false);
    }
    await this.#hostGrads?.finish(this.comm, this.#scalar);
  }

  zeroGrads(): void {
    if (this.grads) this.device.memset(this.grads.ptr, 0, this.grads.bytes);
    this.#hostGrads?.zero();
  }

  async gradNorm(): Promise<number> {
    if (!this.grads) return Math.sqrt(this.#hostGrads!.unitSquares.reduce((a, b) => a + b, 0));
    const d = this.device;
    d.memset(this.#scalar.ptr, 0, 4);
    op.sumSquares(d, this.#scalar.ptr, this.grads.ptr, this.shardSize);
    await this.comm.allReduceSum(this.#scalar.ptr, 1, "f32");
    return Math.sqrt(d.download(new Float32Array(1), this.#scalar.ptr)[0]);
  }

  async unitGradNorms(): Promise<number[]> {
    if (!this.grads) return Array.from(this.#hostGrads!.unitSquares, Math.sqrt);
    const d = this.device, units = this.layout.units;
    d.memset(this.#scalar.ptr, 0, units.length * 4);
    units.forEach((u, i) =>
      op.sumSquares(d, this.#scalar.at(i), this.grads!.at(this.shardOffset[i]), u.size / this.W)
    );
    await this.comm.allReduceSum(this.#scalar.ptr, units.length, "f32");
    return Array.from(d.download(new Float32Array(units.length), this.#scalar.ptr), Math.sqrt);
  }

  /** The part of entry e inside this rank's shard: [from, to) element offsets of the flat layout. */
  #owned(e: ParamEntry): { from: number; to: number; shardAt: number } | null {
    const u = this.layout.units[e.unit], per = u.size / this.W;
    const lo = u.start + this.rank * per, hi = lo + per;
    const from = Math.max(e.offset, lo), to = Math.min(e.offset + e.numel, hi);
    if (from >= to) return null;
    return { from, to, shardAt: this.shardOffset[e.unit] + (from - lo) };
  }

  adamwStep(args: op.AdamWArgs): void {
    const host = this.#host;
    if (host) {
      this.#updates.assertSettled();
      // Offloaded gradients are on the host already (finishGrads); else they come down now.
      if (this.grads) this.device.download(host.f32("grads"), this.grads.ptr); // waits for the device
      this.#updateOnHost(host, args);
    } else {
      const dev = this.#dev!;
      for (const p of this.#pieces.flat()) {
        op.adamw(
          this.device,
          dev.master.at(p.at),
          this.grads!.at(p.at),
          dev.m.at(p.at),
          dev.v.at(p.at),
          p.n,
          decayed(args, p.decay),
          null, // compute weights are converted from the master when gathered
          this.dtype,
        );
      }
    }
    this.#resident.fill(-1); // every gathered unit is stale now
    this.#pending.fill(-1);
    this.#gatheredF32 = -1;
  }

  /**
   * The offloaded update: unit by unit in forward order on a host thread, each unit's new compute
   * weights uploaded as soon as they exist. The next forward gathers unit u once its update has
   * landed (prefetch awaits it), so the host AdamW of later units overlaps the GPU work of earlier
   * ones. The arithmetic is the same as the synchronous update's, entry by entry.
   */
  #updateOnHost(host: HostState, args: op.AdamWArgs): void {
    this.#updates.start(async (u) => {
      for (const p of this.#pieces[u]) await host.adamwAsync(p.at, p.n, decayed(args, p.decay));
      injectTestHostUpdateFault();
      const at = this.shardOffset[u], count = this.layout.units[u].size / this.W;
      // On the collective stream, ahead of the gather that reads it.
      this.device.upload(
        this.#copy!.at(at),
        host.computeView().subarray(at, at + count),
        this.#stream,
      );
    });
  }

  settle(): Promise<void> {
    return this.#updates.settle();
  }

  setParam(name: string, values: Float32Array): void {
    this.#updates.assertSettled();
    const e = this.layout.get(name);
    checkSize(e, values);
    const own = this.#owned(e);
    if (own) {
      const piece = values.subarray(own.from - e.offset, own.to - e.offset);
      if (this.#host) this.#host.f32("master").set(piece, own.shardAt);
      else this.device.upload(this.#dev!.master.at(own.shardAt), piece);
    }
    this.#resident.fill(-1);
    this.#pending.fill(-1);
    this.#gatheredF32 = -1;
  }

  initNormal(name: string, seed: bigint, mean: number, std: number): void {
    this.#updates.assertSettled();
    const e = this.layout.get(name);
    const own = this.#owned(e);
    if (own) {
      const n = own.to - own.from, first = own.from - e.offset;
      if (this.#host) {
        const host = this.#host;
        fillNormal(host.cpu, host.ptr("master", own.shardAt), n, seed, first, mean, std);
      } else fillNormal(this.device, this.#dev!.master.at(own.shardAt), n, seed, first, mean, std);
    }
    this.#resident.fill(-1);
    this.#pending.fill(-1);
    this.#gatheredF32 = -1;
  }

  async getParam(name: string): Promise<Float32Array> {
    await this.settle();
    const e = this.layout.get(name);
    if (this.#gatheredF32 !== e.unit) {
      const per = this.layout.units[e.unit].size / this.W;
      let send = this.#dev?.master.at(this.shardOffset[e.unit]);
      if (this.#host) {
        // Stage this rank's host shard in its own segment of the buffer: an in-place all-gather.
        const offset = this.shardOffset[e.unit];
        send = this.#gatherF32.at(this.rank * per);
        this.device.upload(send, this.#host.f32("master").subarray(offset, offset + per));
      }
      await this.comm.allGather(send!, this.#gatherF32.ptr, per, "f32");
      this.#gatheredF32 = e.unit;
    }
    const at = this.#gatherF32.at(e.offset - this.layout.units[e.unit].start);
    return this.device.download(new Float32Array(e.numel), at);
  }

  syncWeights(): void {
    if (this.#host) {
      this.#updates.assertSettled();
      this.#host.refreshCopy();
      this.device.upload(this.#copy!.ptr, this.#host.computeView());
      // From pinned memory the copy is asynchronous: the host copy must not change under it.
      this.device.syncStream(0n);
    }
    this.#resident.fill(-1); // the next gather converts from the new master values
    this.#pending.fill(-1);
  }
}
