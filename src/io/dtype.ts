/**
 * Element types as safetensors names them, their sizes, and fast conversions between float32 and
 * the 16-bit float formats (bfloat16, IEEE half). 16-bit values are carried as their raw bit
 * patterns in `Uint16Array`s.
 *
 * All byte-level helpers assume a little-endian host (x86-64, aarch64): the module refuses to load
 * on a big-endian one rather than silently mis-read files.
 *
 * @module
 */

/** Element types that distflash reads and writes (safetensors spelling). */
export type DType =
  | "F64"
  | "F32"
  | "F16"
  | "BF16"
  | "I64"
  | "I32"
  | "I16"
  | "I8"
  | "U64"
  | "U32"
  | "U16"
  | "U8"
  | "BOOL";

const SIZES: Readonly<Record<DType, number>> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
};

/** Every supported dtype name. */
export const DTYPES: readonly DType[] = Object.freeze(Object.keys(SIZES) as DType[]);

/** Whether `name` is a dtype name this module knows (case-sensitive, safetensors spelling). */
export function isDType(name: unknown): name is DType {
  return typeof name === "string" && Object.hasOwn(SIZES, name);
}

/** Size in bytes of one element of `dtype`. */
export function dtypeBytes(dtype: DType): number {
  const n = SIZES[dtype];
  if (n === undefined) throw new Error(`unknown dtype ${JSON.stringify(dtype)}`);
  return n;
}

/** Whether `dtype` is one that {@link toFloat32} can convert. */
export function isFloatConvertible(dtype: DType): boolean {
  return dtype !== "BOOL";
}

if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  throw new Error("distflash requires a little-endian host");
}

// ---------------------------------------------------------------------------------------------
// Scalar bit conversions

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** Bit pattern of a float32 value (the number is first rounded to float32). */
export function f32Bits(x: number): number {
  f32Scratch[0] = x;
  return u32Scratch[0];
}

/** float32 value of a 32-bit pattern. */
export function f32FromBits(bits: number): number {
  u32Scratch[0] = bits;
  return f32Scratch[0];
}

/** bfloat16 bits of a float32 bit pattern: round to nearest, ties to even; NaN stays NaN. */
function bf16FromF32Bits(b: number): number {
  if ((b & 0x7fffffff) > 0x7f800000) {
    // NaN: keep sign and top payload bits, force the quiet bit so the result cannot become Inf.
    return ((b >>> 16) | 0x0040) & 0xffff;
  }
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

/** IEEE half bits of a float32 bit pattern: round to nearest, ties to even; NaN stays NaN. */
function f16FromF32Bits(b: number): number {
  const sign = (b >>> 16) & 0x8000;
  const abs = b & 0x7fffffff;
  if (abs >= 0x7f800000) {
    if (abs === 0x7f800000) return sign | 0x7c00; // infinity
    return sign | 0x7e00 | ((abs >>> 13) & 0x3ff); // NaN, quiet, upper payload kept
  }
  if (abs >= 0x477ff000) return sign | 0x7c00; // >= 65520 rounds to infinity
  if (abs >= 0x38800000) {
    // Normal in half precision: rebias the exponent (127 -> 15) and round away 13 mantissa bits.
    const m = abs - 0x38000000;
    return sign | ((m + 0x0fff + ((m >>> 13) & 1)) >>> 13);
  }
  if (abs <= 0x33000000) return sign; // <= 2^-25 (half the smallest subnormal): ties to zero
  // Subnormal result in units of 2^-24: value = mant * 2^(e - 150) = (mant >> (126 - e)) units.
  const e = abs >>> 23;
  const mant = (abs & 0x7fffff) | 0x800000;
  const shift = 126 - e; // 14..24
  let q = mant >>> shift;
  const rem = mant & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  if (rem > half || (rem === half && (q & 1) === 1)) q++;
  return sign | q;
}

/** float32 bits of IEEE half bits (exact). */
function f32BitsFromF16(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  let mant = h & 0x3ff;
  if (exp === 0x1f) return (sign | 0x7f800000 | (mant << 13)) >>> 0;
  if (exp !== 0) return (sign | ((exp + 112) << 23) | (mant << 13)) >>> 0;
  if (mant === 0) return sign >>> 0;
  let e = 113; // the exponent of 2^-14, biased for float32
  while ((mant & 0x400) === 0) {
    mant <<= 1;
    e--;
  }
  return (sign | (e << 23) | ((mant & 0x3ff) << 13)) >>> 0;
}

/** bfloat16 bits nearest to `x` (ties to even). */
export function f32ToBf16Bits(x: number): number {
  return bf16FromF32Bits(f32Bits(x));
}

/** The value of bfloat16 bits. */
export function bf16BitsToF32(bits: number): number {
  return f32FromBits((bits & 0xffff) << 16);
}

/** IEEE half bits nearest to `x` (ties to even), after rounding `x` to float32. */
export function f32ToF16Bits(x: number): number {
  return f16FromF32Bits(f32Bits(x));
}

/** The value of IEEE half bits. */
export function f16BitsToF32(bits: number): number {
  return f32FromBits(f32BitsFromF16(bits & 0xffff));
}

// ---------------------------------------------------------------------------------------------
// Array conversions

function checkOut<T extends { length: number }>(out: T, n: number, what: string): T {
  if (out.length < n) throw new Error(`${what}: output holds ${out.length} elements, need ${n}`);
  return out;
}

/** float32 -> bfloat16 bits, round to nearest even, NaN preserved. */
export function f32ToBf16(src: Float32Array, out?: Uint16Array): Uint16Array {
  const n = src.length;
  const dst = out ? checkOut(out, n, "f32ToBf16") : new Uint16Array(n);
  const bits = new Uint32Array(src.buffer, src.byteOffset, n);
  for (let i = 0; i < n; i++) {
    const b = bits[i];
    if ((b & 0x7fffffff) > 0x7f800000) dst[i] = (b >>> 16) | 0x0040;
    else dst[i] = (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
  }
  return dst;
}

/** bfloat16 bits -> float32 (exact). */
export function bf16ToF32(src: Uint16Array, out?: Float32Array): Float32Array {
  const n = src.length;
  const dst = out ? checkOut(out, n, "bf16ToF32") : new Float32Array(n);
  const bits = new Uint32Array(dst.buffer, dst.byteOffset, n);
  for (let i = 0; i < n; i++) bits[i] = src[i] << 16;
  return dst;
}

let f16Table: Uint32Array | null = null;

function halfTable(): Uint32Array {
  if (f16Table === null) {
    const t = new Uint32Array(65536);
    for (let h = 0; h < 65536; h++) t[h] = f32BitsFromF16(h);
    f16Table = t;
  }
  return f16Table;
}

/** IEEE half bits -> float32 (exact; a 256 KiB lookup table is built on first use). */
export function f16ToF32(src: Uint16Array, out?: Float32Array): Float32Array {
  const n = src.length;
  const dst = out ? checkOut(out, n, "f16ToF32") : new Float32Array(n);
  const bits = new Uint32Array(dst.buffer, dst.byteOffset, n);
  const table = halfTable();
  for (let i = 0; i < n; i++) bits[i] = table[src[i]];
  return dst;
}

/** float32 -> IEEE half bits, round to nearest even, overflow to infinity, NaN preserved. */
export function f32ToF16(src: Float32Array, out?: Uint16Array): Uint16Array {
  const n = src.length;
  const dst = out ? checkOut(out, n, "f32ToF16") : new Uint16Array(n);
  const bits = new Uint32Array(src.buffer, src.byteOffset, n);
  for (let i = 0; i < n; i++) {
    const b = bits[i];
    const abs = b & 0x7fffffff;
    if (abs >= 0x38800000 && abs < 0x477ff000) {
      // Fast path: the result is a normal half.
      const m = abs - 0x38000000;
      dst[i] = ((b >>> 16) & 0x8000) | ((m + 0x0fff + ((m >>> 13) & 1)) >>> 13);
    } else {
      dst[i] = f16FromF32Bits(b);
    }
  }
  return dst;
}

/** Array types that can hold raw tensor data. */
export type TensorData =
  | Uint8Array
  | Int8Array
  | Uint16Array
  | Int16Array
  | Uint32Array
  | Int32Array
  | Float32Array
  | Float64Array
  | BigInt64Array
  | BigUint64Array;

/** A byte view over the memory of any typed array (no copy). */
export function asBytes(data: ArrayBufferView): Uint8Array {
  return data instanceof Uint8Array
    ? data
    : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

/**
 * Typed-array view of `bytes` as elements of `dtype` (no copy when the bytes are suitably
 * aligned, otherwise an aligned copy). BF16 and F16 come back as `Uint16Array` bit patterns,
 * BOOL as `Uint8Array`.
 */
export function typedView(dtype: DType, bytes: Uint8Array): TensorData {
  const size = dtypeBytes(dtype);
  if (bytes.byteLength % size !== 0) {
    throw new Error(`${bytes.byteLength} bytes is not a whole number of ${dtype} elements`);
  }
  let b = bytes;
  if (b.byteOffset % size !== 0) b = b.slice();
  const n = b.byteLength / size;
  switch (dtype) {
    case "F64":
      return new Float64Array(b.buffer, b.byteOffset, n);
    case "F32":
      return new Float32Array(b.buffer, b.byteOffset, n);
    case "F16":
    case "BF16":
    case "U16":
      return new Uint16Array(b.buffer, b.byteOffset, n);
    case "I16":
      return new Int16Array(b.buffer, b.byteOffset, n);
    case "I64":
      return new BigInt64Array(b.buffer, b.byteOffset, n);
    case "U64":
      return new BigUint64Array(b.buffer, b.byteOffset, n);
    case "I32":
      return new Int32Array(b.buffer, b.byteOffset, n);
    case "U32":
      return new Uint32Array(b.buffer, b.byteOffset, n);
    case "I8":
      return new Int8Array(b.buffer, b.byteOffset, n);
    case "U8":
    case "BOOL":
      return b;
  }
}

/**
 * Converts raw little-endian elements of `dtype` to float32 (always a fresh array). Floats are
 * converted exactly or (F64) rounded to nearest; integers are converted as numbers, so 64-bit
 * integers beyond 2^24 lose precision.
 */
export function toFloat32(dtype: DType, bytes: Uint8Array): Float32Array {
  const v = typedView(dtype, bytes);
  switch (dtype) {
    case "F32":
      return new Float32Array(v as Float32Array);
    case "BF16":
      return bf16ToF32(v as Uint16Array);
    case "F16":
      return f16ToF32(v as Uint16Array);
    case "I64":
    case "U64": {
      const src = v as BigInt64Array | BigUint64Array;
      const out = new Float32Array(src.length);
      for (let i = 0; i < src.length; i++) out[i] = Number(src[i]);
      return out;
    }
    case "BOOL":
      throw new Error("BOOL tensors cannot be converted to float32");
    default:
      return Float32Array.from(v as Float64Array);
  }
}

/**
 * Converts float32 values to raw bytes of `dtype` (F32, BF16, F16 or F64). Returns a view when no
 * conversion is needed.
 */
export function fromFloat32(dtype: DType, src: Float32Array): Uint8Array {
  switch (dtype) {
    case "F32":
      return asBytes(src);
    case "BF16":
      return asBytes(f32ToBf16(src));
    case "F16":
      return asBytes(f32ToF16(src));
    case "F64":
      return asBytes(Float64Array.from(src));
    default:
      throw new Error(`cannot convert float32 values to ${dtype}`);
  }
}
