/**
 * fp32 master weights, AdamW moments and a gradient copy in host memory, updated by the CPU
 * backend's AdamW (OpenMP, vectorised C): what --offload-optimizer keeps off the GPU. The buffers
 * are allocations of the CPU library (so its ops accept them) viewed from TypeScript without
 * copies, and device transfers go straight between them and GPU memory.
 */
import {
  Device,
  type DeviceBuffer,
  type DevicePtr,
  type Event,
  type Stream,
} from "../runtime/device.ts";
import * as op from "../runtime/ops.ts";
import { DType } from "../runtime/ops.ts";

export type HostTensor = "master" | "m" | "v" | "grads" | "copy";

export class HostState {
  readonly cpu: Device;
  readonly #ownsCpu: boolean;
  readonly #buffers = new Map<HostTensor, DeviceBuffer>();
  /** Zero-copy views of the host buffers. */
  readonly views = new Map<HostTensor, Float32Array | Uint16Array>();

  /** `n` fp32 values each (and `n` values of the compute dtype for the copy when bf16). */
  readonly #device: Device;

  constructor(device: Device, readonly n: number, readonly dtype: DType) {
    this.#device = device;
    this.#ownsCpu = device.backend !== "cpu";
    this.cpu = this.#ownsCpu ? Device.open("cpu") : device;
    const tensors: HostTensor[] = ["master", "m", "v", "grads"];
    if (dtype === DType.bf16) tensors.push("copy");
    for (const name of tensors) {
      const bytes = n * (name === "copy" ? 2 : 4);
      const buffer = this.cpu.alloc(bytes);
      this.#buffers.set(name, buffer);
      // Page-locked: the gradients come down and the weights go up at full PCIe speed.
      device.pinHost(buffer.ptr, bytes);
      const raw = Deno.UnsafePointerView.getArrayBuffer(
        Deno.UnsafePointer.create(buffer.ptr)!,
        bytes,
      );
      const view = name === "copy" ? new Uint16Array(raw) : new Float32Array(raw);
      view.fill(0);
      this.views.set(name, view);
    }
  }

  f32(name: Exclude<HostTensor, "copy">): Float32Array {
    return this.views.get(name) as Float32Array;
  }

  /** Address of element `at` of a host tensor (for the CPU library's ops). */
  ptr(name: HostTensor, at = 0): bigint {
    const buffer = this.#buffers.get(name);
    if (!buffer) throw new Error(`no host tensor ${name}`);
    return buffer.at(at * (name === "copy" ? 2 : 4));
  }

  /**
   * AdamW on host elements [at, at+n) on a worker thread (see op.adamwAsync), writing the
   * compute-dtype copy when there is one; the views must be left alone until it resolves.
   */
  adamwAsync(at: number, n: number, args: op.AdamWArgs): Promise<void> {
    const copy = this.dtype === DType.bf16 ? this.ptr("copy", at) : null;
    return op.adamwAsync(
      this.cpu,
      this.ptr("master", at),
      this.ptr("grads", at),
      this.ptr("m", at),
      this.ptr("v", at),
      n,
      args,
      copy,
      this.dtype,
    );
  }

  /** copy = master in the compute dtype (bf16), on the host. */
  refreshCopy(): void {
    if (this.dtype !== DType.bf16) return;
    op.convert(this.cpu, this.ptr("copy"), DType.bf16, this.ptr("master"), DType.f32, this.n);
  }

  /** The compute-dtype values to upload: the copy (bf16) or the master itself (fp32). */
  computeView(): Float32Array | Uint16Array {
    return this.views.get(this.dtype === DType.bf16 ? "copy" : "master")!;
  }

  free(): void {
    for (const buffer of this.#buffers.values()) {
      this.#device.unpinHost(buffer.ptr);
      buffer.free();
    }
    this.#buffers.clear();
    this.views.clear();
    if (this.#ownsCpu) this.cpu.close();
  }
}

/** Named byte buffers in host memory (the CPU library's allocations), viewed without copies. */
export class HostArena {
  readonly #cpu: Device;
  readonly #ownsCpu: boolean;
  readonly #buffers = new Map<string, { buffer: DeviceBuffer; view: Uint8Array }>();

  constructor(readonly device: Device) {
    this.#ownsCpu = device.backend !== "cpu";
    this.#cpu = this.#ownsCpu ? Device.open("cpu") : device;
  }

  add(name: string, bytes: number): void {
    const buffer = this.#cpu.alloc(bytes);
    this.device.pinHost(buffer.ptr, bytes); // page-locked for fast copies
    const raw = Deno.UnsafePointerView.getArrayBuffer(
      Deno.UnsafePointer.create(buffer.ptr)!,
      bytes,
    );
    this.#buffers.set(name, { buffer, view: new Uint8Array(raw) });
  }

  view(name: string): Uint8Array {
    const entry = this.#buffers.get(name);
    if (!entry) throw new Error(`no host buffer ${name}`);
    return entry.view;
  }

  /** Address of byte `at` of a buffer (for the CPU library's ops). */
  ptr(name: string, at = 0): bigint {
    const entry = this.#buffers.get(name);
    if (!entry) throw new Error(`no host buffer ${name}`);
    return entry.buffer.at(at);
  }

  /** The CPU device whose library allocated the buffers (its ops run on them). */
  get cpu(): Device {
    return this.#cpu;
  }

  free(): void {
    for (const { buffer } of this.#buffers.values()) {
      this.device.unpinHost(buffer.ptr);
      buffer.free();
    }
    this.#buffers.clear();
    if (this.#ownsCpu) this.#cpu.close();
  }
}

/**
 * --offload-checkpoints: each layer's saved tensors go to page-locked host memory during the
 * forward and come back a layer ahead of the layer's backward, on a copy stream of their own so
 * the transfers overlap compute. The device keeps two slots of each tensor (layer parity); events
 * say when a slot's copy has left or arrived. On the CPU backend the copies happen on the spot and
 * every wait is a no-op.
 */
export class CheckpointOffload {
  readonly host: HostArena;
  #stream: Stream = 0n;
  #mark: Event = 0n;
  /** Per parity: the device slot has been copied out (forward). */
  #saved: Event[] = [];
  #savedPending = [false, false];
  /** The next layer's tensors have arrived (backward). */
  #loaded: Event = 0n;
  #loadedPending = false;

  constructor(
    readonly device: Device,
    readonly layers: number,
    /** Bytes per layer of each saved tensor (o and lse are absent when backward recomputes them). */
    readonly bytes: { x: number; o?: number; lse?: number },
  ) {
    this.host = new HostArena(device);
    try {
      for (let l = 0; l < layers; l++) {
        for (const [name, n] of Object.entries(bytes)) if (n) this.host.add(`${name}${l}`, n);
      }
      if (device.backend === "cuda") {
        this.#stream = device.createStream();
        this.#mark = device.createEvent();
        this.#saved = [device.createEvent(), device.createEvent()];
        this.#loaded = device.createEvent();
      }
    } catch (error) {
      this.free();
      throw error;
    }
  }

  /** Later copies wait for everything issued so far on the compute stream. */
  #afterCompute(): void {
    if (this.#stream === 0n) return;
    this.device.recordEvent(this.#mark, 0n);
    this.device.waitEvent(this.#stream, this.#mark);
  }

  /** Forward, after layer l: its saved tensors (slots of parity l % 2) go to the host. */
  save(l: number, slots: Partial<Record<"x" | "o" | "lse", DevicePtr>>): void {
    this.#afterCompute();
    for (const [name, ptr] of Object.entries(slots)) {
      if (ptr !== undefined) {
        this.device.downloadAsync(this.host.view(`${name}${l}`), ptr, this.#stream);
      }
    }
    if (this.#stream === 0n) return;
    this.device.recordEvent(this.#saved[l % 2], this.#stream);
    this.#savedPending[l % 2] = true;
  }

  /** Compute about to overwrite the slots of `parity` waits until their copy has left. */
  beforeOverwrite(parity: number): void {
    if (!this.#savedPending[parity]) return;
    this.device.waitEvent(0n, this.#saved[parity]);
    this.#savedPending[parity] = false;
  }

  /** Backward, during layer l + 1: layer l's tensors come back into their slots. */
  load(l: number, slots: Partial<Record<"x" | "o" | "lse", DevicePtr>>): void {
    this.#afterCompute(); // the slots were last read by compute already issued
    for (const [name, ptr] of Object.entries(slots)) {
      if (ptr !== undefined) this.device.upload(ptr, this.host.view(`${name}${l}`), this.#stream);
    }
    if (this.#stream === 0n) return;
    this.device.recordEvent(this.#loaded, this.#stream);
    this.#loadedPending = true;
  }

  /** Compute about to read the tensors of the last load waits for them. */
  awaitLoaded(): void {
    if (!this.#loadedPending) return;
    this.device.waitEvent(0n, this.#loaded);
    this.#loadedPending = false;
  }

  free(): void {
    // Copies may still be in flight into or out of the host buffers.
    if (this.#stream !== 0n) this.device.syncStream(this.#stream);
    this.host.free();
    for (const e of [this.#mark, ...this.#saved, this.#loaded]) {
      if (e !== 0n) this.device.destroyEvent(e);
    }
    if (this.#stream !== 0n) this.device.destroyStream(this.#stream);
    this.#stream = 0n;
  }
}
