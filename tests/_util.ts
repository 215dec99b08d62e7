/** Shared test helpers: the backend under test and error norms. */
import { Device } from "../src/runtime/device.ts";
import type { BackendName } from "../ffi/loader.ts";
import { fileURLToPath } from "node:url";

/** `deno task test` runs on the CPU backend; `deno task test:gpu` sets DISTFLASH_TEST_BACKEND=cuda. */
export const TEST_BACKEND: BackendName = Deno.env.get("DISTFLASH_TEST_BACKEND") === "cuda"
  ? "cuda"
  : "cpu";

let shared: Device | undefined;
/** One opened device per test process (opening is cheap, but CUDA contexts are not). */
export function testDevice(): Device {
  shared ??= Device.open(TEST_BACKEND);
  return shared;
}

/** ||out - ref|| / ||ref|| in float64. */
export function relError(out: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (out.length !== ref.length) throw new Error(`length ${out.length} != ${ref.length}`);
  let num = 0, den = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = out[i] - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  if (Number.isNaN(num)) return Number.NaN;
  return Math.sqrt(num) / Math.max(Math.sqrt(den), 1e-30);
}

/** Deterministic pseudo-random numbers (mulberry32) so failures reproduce. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randn(n: number, seed: number, scale = 1): Float32Array {
  const u = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    out[i] = scale * Math.sqrt(-2 * Math.log(u() + 1e-12)) * Math.cos(2 * Math.PI * u());
  }
  return out;
}

const main = fileURLToPath(new URL("../cli/main.ts", import.meta.url));

/** Runs the CLI from source as a subprocess. */
export async function runCli(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", main, ...args],
    env: { NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}
