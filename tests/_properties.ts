/**
 * Shared settings of the property tests (tests/properties_*.test.ts), over fast-check.
 *
 * Each run draws a fresh seed; a failure prints the seed and the shrunk counterexample's path.
 * To replay it: DISTFLASH_FC_SEED=<seed> DISTFLASH_FC_PATH=<path> deno test -A tests/<file>.
 */
import fc from "fast-check";

export { fc };

/** fast-check parameters: `numRuns` runs, the seed and path from the environment when set. */
export function runs<T>(numRuns: number): fc.Parameters<T> {
  const seed = Deno.env.get("DISTFLASH_FC_SEED");
  const path = Deno.env.get("DISTFLASH_FC_PATH");
  return {
    numRuns,
    ...(seed ? { seed: Number(seed) } : {}),
    ...(path ? { path } : {}),
  };
}

/** Where varints (and other 7-bit-group encodings) change length: 2^(7k), and 2^32, 2^53 - 1. */
export const VARINT_BOUNDARIES: readonly number[] = [
  0,
  127,
  128,
  2 ** 14 - 1,
  2 ** 14,
  2 ** 21 - 1,
  2 ** 21,
  2 ** 28 - 1,
  2 ** 28,
  2 ** 32 - 1,
  2 ** 32,
  2 ** 35,
  2 ** 42,
  2 ** 49,
  Number.MAX_SAFE_INTEGER,
];

/** Non-negative safe integers: the boundaries, their neighbours (+-2), and any in between. */
export const natAcrossBoundaries: fc.Arbitrary<number> = fc.oneof(
  fc.constantFrom(...VARINT_BOUNDARIES),
  fc.tuple(fc.constantFrom(...VARINT_BOUNDARIES), fc.integer({ min: -2, max: 2 })).map(
    ([b, d]) => Math.min(Number.MAX_SAFE_INTEGER, Math.max(0, b + d)),
  ),
  fc.integer({ min: 0, max: 1 << 16 }),
  fc.maxSafeNat(),
);

/** Strings of any Unicode scalar values (every UTF-8 length, astral planes included). */
export const unicodeText = (maxLength = 24): fc.Arbitrary<string> =>
  fc.string({ unit: "binary", maxLength });

/** Bytes that are not valid UTF-8, each kind of fault once: lone continuation, truncation, ... */
export const INVALID_UTF8: readonly (readonly number[])[] = [
  [0x80], // a continuation byte alone
  [0xc3], // a 2-byte lead without its continuation
  [0xe2, 0x82], // a 3-byte sequence cut short
  [0xf0, 0x9f, 0x98], // a 4-byte sequence cut short
  [0xc0, 0xaf], // overlong encoding of "/"
  [0xed, 0xa0, 0x80], // a UTF-16 surrogate (U+D800) encoded
  [0xf4, 0x90, 0x80, 0x80], // beyond U+10FFFF
  [0xff], // never valid
];
