/**
 * fp32 master weights, AdamW moments and a gradient copy in host memory, updated by the CPU
 * backend's AdamW (OpenMP, vectorised C): what --offload-optimizer keeps off the GPU. The buffers
 * are allocations of the CPU library (so its ops accept them) viewed from TypeScript without
 * copies, and device transfers go straight between them and GPU memory.
 */
import { Device, type DeviceBuffer } from "../runtime/device.ts";
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

  /** AdamW on host elements [at, at+n), writing the compute-dtype copy when there is one. */
  adamw(at: number, n: number, args: op.AdamWArgs): void {
    const copy = this.dtype === DType.bf16 ? this.ptr("copy", at) : null;
    op.adamw(
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

  free(): void {
    for (const { buffer } of this.#buffers.values()) {
      this.device.unpinHost(buffer.ptr);
      buffer.free();
    }
    this.#buffers.clear();
    if (this.#ownsCpu) this.#cpu.close();
  }
}
