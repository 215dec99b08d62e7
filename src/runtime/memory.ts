/**
 * The memory plan: every tensor is reserved up front under a kind (parameters, gradients,
 * optimizer state, saved activations, scratch, ...), then each kind is one device allocation.
 * Totals are known before any allocation, so a run that cannot fit fails before doing work.
 */
import type { Device, DeviceBuffer, DevicePtr } from "./device.ts";
import { type DType, DTYPE_BYTES } from "./ops.ts";

/** Offsets inside a kind are aligned so cuBLASLt and vector loads see 256-byte aligned tensors. */
const ALIGN = 256;

/** A reserved tensor; its address exists once the plan is allocated. */
export class Slot {
  #base: DevicePtr | null = null;
  constructor(
    readonly kind: string,
    readonly name: string,
    readonly numel: number,
    readonly dtype: DType,
    readonly offset: number,
  ) {}
  get bytes(): number {
    return this.numel * DTYPE_BYTES[this.dtype];
  }
  get ptr(): DevicePtr {
    if (this.#base === null) throw new Error(`tensor ${this.kind}/${this.name} is not allocated`);
    return this.#base + BigInt(this.offset);
  }
  /** Address of element `index` (bounds-checked). */
  at(index: number): DevicePtr {
    if (index < 0 || index > this.numel) {
      throw new RangeError(`${this.name}: element ${index} outside 0..${this.numel}`);
    }
    return this.ptr + BigInt(index * DTYPE_BYTES[this.dtype]);
  }
  /** @internal */
  bind(base: DevicePtr | null): void {
    this.#base = base;
  }
}

export class MemoryPlan {
  readonly #kinds = new Map<string, { bytes: number; slots: Slot[] }>();
  readonly #buffers = new Map<string, DeviceBuffer>();

  reserve(kind: string, name: string, numel: number, dtype: DType): Slot {
    if (this.#buffers.size > 0) throw new Error("the memory plan is already allocated");
    if (!Number.isSafeInteger(numel) || numel <= 0) {
      throw new Error(`${kind}/${name}: tensor size must be a positive integer, got ${numel}`);
    }
    let entry = this.#kinds.get(kind);
    if (!entry) this.#kinds.set(kind, entry = { bytes: 0, slots: [] });
    const offset = Math.ceil(entry.bytes / ALIGN) * ALIGN;
    const slot = new Slot(kind, name, numel, dtype, offset);
    entry.bytes = offset + slot.bytes;
    entry.slots.push(slot);
    return slot;
  }

  /** Bytes per kind, in reservation order. */
  totals(): { kind: string; bytes: number }[] {
    return [...this.#kinds].map(([kind, e]) => ({ kind, bytes: e.bytes }));
  }

  get totalBytes(): number {
    return this.totals().reduce((a, t) => a + t.bytes, 0);
  }

  /** One allocation per kind; on failure everything allocated so far is returned. */
  allocate(device: Device): void {
    try {
      for (const [kind, entry] of this.#kinds) {
        const buffer = device.alloc(entry.bytes);
        this.#buffers.set(kind, buffer);
        for (const slot of entry.slots) slot.bind(buffer.ptr);
      }
    } catch (error) {
      this.free();
      throw error;
    }
  }

  free(): void {
    for (const buffer of this.#buffers.values()) buffer.free();
    this.#buffers.clear();
    for (const entry of this.#kinds.values()) for (const slot of entry.slots) slot.bind(null);
  }
}

/** "1.5 GiB"-style sizes for logs. */
export function formatBytes(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes, unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}
