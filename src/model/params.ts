/**
 * Where parameters, their gradients and the AdamW state live.
 *
 * The model reads weights and writes gradients through a ParamStore, unit by unit (unit 0: the
 * embedding; 1..L: the layers; L+1: the final norm and an untied LM head), and tells the store
 * when a unit is about to be used (`gather`) and when its backward is done (`reduceGrads`):
 *
 * - ReplicatedParams: every rank holds everything (one device, or `no_shard`); the unit hooks do
 *   nothing and `finishGrads` all-reduces the gradients once per step.
 * - ShardedParams (`full_shard`, ZeRO-3) lives with the other parallelisms, in
 *   src/parallel/zero3.ts: the model is written for one device and takes its store from outside
 *   (a ParamStoreSpec in ModelOptions).
 */
import type { Device, DevicePtr } from "../runtime/device.ts";
import type { MemoryPlan, Slot } from "../runtime/memory.ts";
import * as op from "../runtime/ops.ts";
import { DType } from "../runtime/ops.ts";
import { fillNormal } from "../runtime/ops_basic.ts";
import type { Communicator } from "../runtime/communicator.ts";
import { type ModelConfig, parameterShapes } from "./config.ts";

/** One parameter inside the flat parameter buffers. */
export interface ParamEntry {
  name: string;
  shape: number[];
  numel: number;
  /** Element offset into the flat layout. */
  offset: number;
  /** Decayed by AdamW's weight decay: matrices and embeddings yes, norms no. */
  decay: boolean;
  /** 0: embedding, 1..L: layer l-1, L+1: final norm (and untied LM head). */
  unit: number;
}

/** A unit: a contiguous range of the flat layout, padded to a multiple of `unitAlign`. */
export interface Unit {
  start: number;
  size: number;
}

/** Where each parameter lives in the flat layout (HF names and order). */
export class ParamLayout {
  readonly entries: ParamEntry[] = [];
  readonly byName = new Map<string, ParamEntry>();
  readonly units: Unit[] = [];
  /** Total elements including padding. */
  readonly size: number;
  /** Real parameter count. */
  readonly count: number;

  /** `unitAlign`: each unit's size is a multiple of it (64 x world for even shards). */
  constructor(readonly cfg: ModelConfig, readonly unitAlign = 64) {
    let offset = 0, count = 0, unitStart = 0, unit = 0;
    const closeUnit = () => {
      const size = Math.ceil((offset - unitStart) / unitAlign) * unitAlign;
      this.units.push({ start: unitStart, size });
      offset = unitStart = unitStart + size;
    };
    for (const p of parameterShapes(cfg)) {
      const u = p.name.startsWith("model.layers.")
        ? 1 + Number(p.name.split(".")[2])
        : p.name === "model.embed_tokens.weight"
        ? 0
        : cfg.numLayers + 1;
      while (u > unit) {
        closeUnit();
        unit++;
      }
      const numel = p.shape.reduce((a, b) => a * b, 1);
      const entry = {
        name: p.name,
        shape: p.shape,
        numel,
        offset,
        decay: p.shape.length > 1,
        unit,
      };
      this.entries.push(entry);
      this.byName.set(p.name, entry);
      offset += Math.ceil(numel / 64) * 64;
      count += numel;
    }
    closeUnit();
    this.size = offset;
    this.count = count;
  }

  get(name: string): ParamEntry {
    const e = this.byName.get(name);
    if (!e) throw new Error(`no parameter named ${name}`);
    return e;
  }

  layer(i: number, suffix: string): ParamEntry {
    return this.get(`model.layers.${i}.${suffix}`);
  }

  get lmHead(): ParamEntry {
    return this.cfg.tieWordEmbeddings
      ? this.get("model.embed_tokens.weight")
      : this.get("lm_head.weight");
  }
}

/** One tensor of the state a rank saves for resuming (its whole state, or its shard). */
export interface StateTensor {
  name: "master" | "adam_m" | "adam_v";
  numel: number;
  read(): Float32Array;
  write(values: Float32Array): void;
}

/** The device-held optimizer state tensors of a store (shared by the stores). */
export function deviceState(device: Device, master: Slot, m: Slot, v: Slot): StateTensor[] {
  return ([["master", master], ["adam_m", m], ["adam_v", v]] as const).map(([name, slot]) => ({
    name,
    numel: slot.numel,
    read: () => device.download(new Float32Array(slot.numel), slot.ptr),
    write: (values: Float32Array) => device.upload(slot.ptr, values),
  }));
}

export interface ParamStore {
  readonly layout: ParamLayout;
  readonly dtype: DType;
  /** Called once after the plan is allocated. */
  initialize(): void;
  /** Compute weights of `e` (its unit must be gathered). */
  weight(e: ParamEntry): DevicePtr;
  /** fp32 gradient accumulator of `e` (valid between beginGrads and reduceGrads of its unit). */
  grad(e: ParamEntry): DevicePtr;
  gather(unit: number): Promise<void>;
  /**
   * Starts gathering `unit` so that it overlaps the compute issued before gather(unit) (sharded
   * stores; a no-op elsewhere). Every rank must prefetch and gather in the same order.
   */
  prefetch(unit: number): Promise<void>;
  beginGrads(unit: number): void;
  reduceGrads(unit: number): Promise<void>;
  /** After the last micro-batch of a step: every rank holds its reduced gradients. */
  finishGrads(): Promise<void>;
  zeroGrads(): void;
  gradNorm(): Promise<number>;
  /** The gradient norm of each unit (diagnostics: DISTFLASH_DEBUG_GRADS=1 logs them). */
  unitGradNorms(): Promise<number[]>;
  adamwStep(args: op.AdamWArgs): void;
  /** Writes one parameter's fp32 values (each rank keeps what it owns). */
  setParam(name: string, values: Float32Array): void;
  /**
   * Fills the part of a parameter this rank owns with mean + std * N(0, 1), element i drawn from
   * (seed, i) alone: the values do not depend on the sharding (see fillNormal).
   */
  initNormal(name: string, seed: bigint, mean: number, std: number): void;
  /** One parameter's fp32 master values; a collective in the sharded store (all ranks call). */
  getParam(name: string): Promise<Float32Array>;
  /** Refreshes compute copies from the master. */
  syncWeights(): void;
  /** Resolves once every update of the last adamwStep has landed (before reading the state). */
  settle(): Promise<void>;
  /** The optimizer state of this rank, for checkpoints. */
  readonly state: StateTensor[];
  /** Frees what the store holds outside the memory plan (host memory). */
  release(): void;
  /** Bytes of host memory the store allocates (offloaded optimizer state). */
  readonly hostBytes: number;
}

/** Everything on every rank; gradients all-reduced once per step when `comm` is given. */
export class ReplicatedParams implements ParamStore {
  readonly master: Slot;
  readonly weights: Slot;
  readonly grads: Slot;
  readonly m: Slot;
  readonly v: Slot;
  readonly #scalar: Slot;

  constructor(
    readonly device: Device,
    readonly layout: ParamLayout,
    readonly dtype: DType,
    plan: MemoryPlan,
    readonly comm: Communicator | null = null,
  ) {
    const P = layout.size, f32 = DType.f32;
    this.master = plan.reserve("fp32 master weights", "master", P, f32);
    this.weights = dtype === f32 ? this.master : plan.reserve("bf16 weights", "weights", P, dtype);
    this.grads = plan.reserve("gradients", "grads", P, f32);
    this.m = plan.reserve("AdamW moments", "m", P, f32);
    this.v = plan.reserve("AdamW moments", "v", P, f32);
    this.#scalar = plan.reserve("gradients", "norms", layout.units.length, f32);
  }

  get state(): StateTensor[] {
    return deviceState(this.device, this.master, this.m, this.v);
  }

  initialize(): void {
    for (const s of [this.master, this.m, this.v]) this.device.memset(s.ptr, 0, s.bytes);
  }

  release(): void {}

  get hostBytes(): number {
    return 0;
  }

  weight(e: ParamEntry): DevicePtr {
    return this.weights.at(e.offset);
  }

  grad(e: ParamEntry): DevicePtr {
    return this.grads.at(e.offset);
  }

  gather(_unit: number): Promise<void> {
    return Promise.resolve();
  }

  prefetch(_unit: number): Promise<void> {
    return Promise.resolve();
  }

  beginGrads(_unit: number): void {}

  reduceGrads(_unit: number): Promise<void> {
    return Promise.resolve();
  }

  async finishGrads(): Promise<void> {
    if (this.comm) await this.comm.allReduceSum(this.grads.ptr, this.layout.size, "f32");
  }

  zeroGrads(): void {
    this.device.memset(this.grads.ptr, 0, this.grads.bytes);
  }

  gradNorm(): Promise<number> {
    const d = this.device;
    d.memset(this.#scalar.ptr, 0, 4);
    op.sumSquares(d, this.#scalar.ptr, this.grads.ptr, this.layout.size);
    return Promise.resolve(Math.sqrt(d.download(new Float32Array(1), this.#scalar.ptr)[0]));
  }

  unitGradNorms(): Promise<number[]> {
    const d = this.device, units = this.layout.units;
    d.memset(this.#scalar.ptr, 0, units.length * 4);
    units.forEach((u, i) => op.sumSquares(d, this.#scalar.at(i), this.grads.at(u.start), u.size));
    const sums = d.download(new Float32Array(units.length), this.#scalar.ptr);
    return Promise.resolve(Array.from(sums, Math.sqrt));
  }

  adamwStep(args: op.AdamWArgs): void {
    for (const e of this.layout.entries) {
      op.adamw(
        this.device,
        this.master.at(e.offset),
        this.grads.at(e.offset),
        this.m.at(e.offset),
        this.v.at(e.offset),
        e.numel,
        decayed(args, e.decay),
        this.weights === this.master ? null : this.weights.at(e.offset),
        this.dtype,
      );
    }
  }

  setParam(name: string, values: Float32Array): void {
    const e = this.layout.get(name);
    checkSize(e, values);
    this.device.upload(this.master.at(e.offset), values);
  }

  initNormal(name: string, seed: bigint, mean: number, std: number): void {
    const e = this.layout.get(name);
    fillNormal(this.device, this.master.at(e.offset), e.numel, seed, 0, mean, std);
  }

  getParam(name: string): Promise<Float32Array> {
    const e = this.layout.get(name);
    return Promise.resolve(
      this.device.download(new Float32Array(e.numel), this.master.at(e.offset)),
    );
  }

  /** The gradient of one parameter (tests). */
  getGrad(name: string): Float32Array {
    const e = this.layout.get(name);
    return this.device.download(new Float32Array(e.numel), this.grads.at(e.offset));
  }

  settle(): Promise<void> {
    return Promise.resolve();
  }

  syncWeights(): void {
    if (this.weights === this.master) return;
    op.convert(
      this.device,
      this.weights.ptr,
      this.dtype,
      this.master.ptr,
      DType.f32,
      this.layout.size,
    );
  }
}

/** AdamW's arguments for one parameter: weight decay only where the parameter takes it. */
export function decayed(args: op.AdamWArgs, decay: boolean): op.AdamWArgs {
  return decay ? args : { ...args, weightDecay: 0 };
}

export function checkSize(e: ParamEntry, values: Float32Array): void {
  if (values.length !== e.numel) {
    throw new Error(
      `${e.name}: expected ${e.numel} values (shape ${e.shape}), got ${values.length}`,
    );
  }
}

/**
 * How a model gets its parameter store: the element alignment of each unit in the flat buffers
 * (a sharded store needs units divisible by its ranks) and the store itself, built over the
 * layout with its buffers reserved in the model's plan. Parallelism is applied from outside:
 * src/parallel builds the ZeRO-3 spec.
 */
export interface ParamStoreSpec {
  align: number;
  create(device: Device, layout: ParamLayout, dtype: DType, plan: MemoryPlan): ParamStore;
}

/** Everything on this device; gradients all-reduced over `comm` once per step when given. */
export function replicatedParamStore(comm: Communicator | null = null): ParamStoreSpec {
  return {
    align: 64,
    create: (device, layout, dtype, plan) =>
      new ReplicatedParams(device, layout, dtype, plan, comm),
  };
}
