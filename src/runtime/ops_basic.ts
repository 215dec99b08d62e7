/** Typed wrappers of the first ops (csrc/{cpu,cuda}/ops_basic). Sizes are element counts. */
import type { Device, DevicePtr, Stream } from "./device.ts";

/** out = bf16(input): converts `n` fp32 values to bf16 (uint16 bit patterns). */
export function castF32ToBf16(
  d: Device,
  out: DevicePtr,
  input: DevicePtr,
  n: number,
  s: Stream = 0n,
): void {
  d.check(d.sym.df_cast_f32_to_bf16(out, input, BigInt(n), s), "df_cast_f32_to_bf16");
}

/** out = fp32(input): converts `n` bf16 values (uint16 bit patterns) to fp32. */
export function castBf16ToF32(
  d: Device,
  out: DevicePtr,
  input: DevicePtr,
  n: number,
  s: Stream = 0n,
): void {
  d.check(d.sym.df_cast_bf16_to_f32(out, input, BigInt(n), s), "df_cast_bf16_to_f32");
}

/** y += a * x (fp32). */
export function axpyF32(
  d: Device,
  y: DevicePtr,
  x: DevicePtr,
  a: number,
  n: number,
  s: Stream = 0n,
): void {
  d.check(d.sym.df_axpy_f32(y, x, a, BigInt(n), s), "df_axpy_f32");
}

/**
 * out[i] = mean + std * N(0, 1), element i drawn from (seed, index0 + i) alone: a rank that owns a
 * slice of a parameter draws exactly the values a single rank would draw there.
 */
export function fillNormal(
  d: Device,
  out: DevicePtr,
  n: number,
  seed: bigint,
  index0: number,
  mean: number,
  std: number,
  s: Stream = 0n,
): void {
  d.check(
    d.sym.df_fill_normal_f32(
      out,
      BigInt(n),
      BigInt.asUintN(64, seed),
      BigInt(index0),
      mean,
      std,
      s,
    ),
    "df_fill_normal_f32",
  );
}
