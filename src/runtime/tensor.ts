/**
 * A view of a device tensor: where it lives, its element type and its row-major shape. Sub-views
 * (rows of the first axis, one index of it) are computed here, the one place that turns element
 * counts into byte offsets; callers pass `view.ptr` to the ops.
 *
 * @module
 */
import type { DevicePtr } from "./device.ts";
import { type DType, DTYPE_BYTES } from "./ops.ts";

/** Anything with a device address, read when the view's `ptr` is (a plan slot gets one late). */
export interface Addressed {
  readonly ptr: DevicePtr;
}

export class Tensor {
  readonly numel: number;
  /**
   * `base.ptr + byteOffset` is element 0. `base` is read on every `ptr`, so a view of a memory-plan
   * slot may be made before the plan is allocated.
   */
  constructor(
    readonly base: Addressed,
    readonly dtype: DType,
    readonly shape: readonly number[],
    readonly byteOffset = 0,
  ) {
    if (shape.length === 0 || shape.some((n) => !Number.isSafeInteger(n) || n < 1)) {
      throw new RangeError(`tensor shape must be positive integers, got [${shape.join(", ")}]`);
    }
    this.numel = shape.reduce((a, n) => a * n, 1);
  }

  /** A view of a raw device address. */
  static at(ptr: DevicePtr, dtype: DType, shape: readonly number[]): Tensor {
    return new Tensor({ ptr }, dtype, shape);
  }

  get ptr(): DevicePtr {
    return this.base.ptr + BigInt(this.byteOffset);
  }

  get bytes(): number {
    return this.numel * DTYPE_BYTES[this.dtype];
  }

  /** Rows [r0, r0 + n) of the first axis (bounds-checked); the other axes are kept. */
  rows(r0: number, n: number): Tensor {
    const rows = this.shape[0];
    if (!Number.isInteger(r0) || !Number.isInteger(n) || r0 < 0 || n < 1 || r0 + n > rows) {
      throw new RangeError(`rows [${r0}, ${r0 + n}) outside the ${rows} rows of this tensor`);
    }
    const rowBytes = (this.numel / rows) * DTYPE_BYTES[this.dtype];
    return new Tensor(
      this.base,
      this.dtype,
      [n, ...this.shape.slice(1)],
      this.byteOffset + r0 * rowBytes,
    );
  }

  /** Index i of the first axis, which the view drops (a [B, T, H] tensor gives a [T, H] one). */
  index(i: number): Tensor {
    if (this.shape.length < 2) throw new RangeError("index() needs a tensor of two axes or more");
    const row = this.rows(i, 1);
    return new Tensor(this.base, this.dtype, this.shape.slice(1), row.byteOffset);
  }
}
