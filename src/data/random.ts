/**
 * Deterministic pseudo-random numbers for data order and synthetic tokens: 32-bit integer
 * arithmetic only, so every platform and every rank draws the same sequence from the same seed.
 *
 * @module
 */

/** Mixes a 32-bit value (the splitmix32 / murmur3 finaliser): a good hash of small integers. */
export function mix32(x: number): number {
  x = (x + 0x9e3779b9) | 0;
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  return (x ^ (x >>> 16)) >>> 0;
}

/** Hash of a list of integers (each taken modulo 2^32 after splitting off 2^32 multiples). */
export function hashInts(...xs: number[]): number {
  let h = 0x2545f491;
  for (const x of xs) {
    const lo = x >>> 0;
    const hi = Math.floor(x / 4294967296) >>> 0;
    h = mix32(h ^ lo);
    if (hi !== 0) h = mix32(h ^ hi);
  }
  return h;
}

/** A small deterministic generator (xorshift128, seeded through mix32). */
export class Rng {
  #a: number;
  #b: number;
  #c: number;
  #d: number;

  /** A generator for `seed` (any number); equal seeds give equal sequences. */
  constructor(seed: number) {
    const s = hashInts(seed);
    this.#a = mix32(s) | 0;
    this.#b = mix32(s + 1) | 0;
    this.#c = mix32(s + 2) | 0;
    this.#d = mix32(s + 3) | 0;
    if ((this.#a | this.#b | this.#c | this.#d) === 0) this.#a = 1;
  }

  /** Next value in [0, 2^32). */
  nextU32(): number {
    let t = this.#d;
    const s = this.#a;
    this.#d = this.#c;
    this.#c = this.#b;
    this.#b = s;
    t ^= t << 11;
    t ^= t >>> 8;
    this.#a = t ^ s ^ (s >>> 19);
    return this.#a >>> 0;
  }

  /** Uniform integer in [0, n) for 0 < n <= 2^32 (rejection sampling: no modulo bias). */
  below(n: number): number {
    if (!(n > 0 && n <= 4294967296)) throw new RangeError(`Rng.below: bad bound ${n}`);
    const limit = 4294967296 - (4294967296 % n);
    for (;;) {
      const r = this.nextU32();
      if (r < limit) return r % n;
    }
  }
}

/** A permutation of 0..n-1 (Fisher-Yates) determined by `seed`. */
export function permutation(n: number, seed: number): Uint32Array {
  const p = new Uint32Array(n);
  for (let i = 0; i < n; i++) p[i] = i;
  const rng = new Rng(seed);
  for (let i = n - 1; i > 0; i--) {
    const j = rng.below(i + 1);
    const t = p[i];
    p[i] = p[j];
    p[j] = t;
  }
  return p;
}
