/** Shared test helpers: the backend under test and error norms. */
import { Device, type DeviceBuffer, type DevicePtr } from "../src/runtime/device.ts";
import { type AttentionKernel, selectAttentionKernel } from "../src/runtime/attention_kernel.ts";
import type { BackendName } from "../ffi/loader.ts";
import { fileURLToPath } from "node:url";
import { freePort } from "../src/launch/launcher.ts";
import { flagName } from "../src/train/option_table.ts";
import {
  attentionBackward,
  type AttentionDocuments,
  attentionForward,
  DType,
  DTYPE_BYTES,
} from "../src/runtime/ops.ts";
import { bf16BitsToF32, f32ToBf16Bits } from "../src/io/dtype.ts";
import { RUN_FILE } from "../src/train/output_dir.ts";
import type { Attention, SequenceDocuments } from "../src/model/attention.ts";

/** `deno task test` runs on the CPU backend; `deno task test:gpu` sets DISTFLASH_TEST_BACKEND=cuda. */
export const TEST_BACKEND: BackendName = Deno.env.get("DISTFLASH_TEST_BACKEND") === "cuda"
  ? "cuda"
  : "cpu";

let shared: Device | undefined;
/** One opened device per test process (opening is cheap, but CUDA contexts are not). */
export function testDevice(): Device {
  if (!shared) {
    shared = Device.open(TEST_BACKEND);
    // scripts/gpu_cudnn.sh runs the attention tests once more with cuDNN's kernels.
    const kernel = Deno.env.get("DISTFLASH_TEST_ATTENTION_KERNEL");
    if (kernel) selectAttentionKernel(shared, kernel as AttentionKernel);
  }
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

/** Output, LSE and gradients of one attention over a whole sequence: the reference of the
 * sequence-parallel tests (the fp32 kernel itself is checked against float64 in ops.test.ts). */
export interface AttentionResult {
  o: Float32Array;
  lse: Float32Array;
  dq: Float32Array;
  dk: Float32Array;
  dv: Float32Array;
}

export function singleRankAttention(
  d: Device,
  x: { q: Float32Array; k: Float32Array; v: Float32Array; dout: Float32Array },
  nh: number,
  nkv: number,
  hd: number,
  /** Global document starts (src/model/documents.ts); absent: plain causal attention. */
  starts?: number[],
): AttentionResult {
  const T = x.q.length / (nh * hd);
  const up = (a: Float32Array) => {
    const b = d.alloc(a.length * 4);
    d.upload(b.ptr, a);
    return b;
  };
  const [Q, K, V, DO] = [x.q, x.k, x.v, x.dout].map(up);
  const docs = starts && deviceDocuments(d, starts);
  const O = d.alloc(x.q.length * 4), L = d.alloc(nh * T * 4);
  const dQ = d.alloc(x.q.length * 4), dK = d.alloc(x.k.length * 4), dV = d.alloc(x.v.length * 4);
  for (const b of [dQ, dK, dV]) d.memset(b.ptr, 0, b.bytes);
  const shape = {
    tq: T,
    tk: T,
    nh,
    nkv,
    hd,
    qPos0: 0,
    kPos0: 0,
    scale: 1 / Math.sqrt(hd),
    dtype: DType.f32,
    docs: docs?.device,
  };
  attentionForward(d, O.ptr, L.ptr, Q.ptr, K.ptr, V.ptr, shape);
  attentionBackward(d, dQ.ptr, dK.ptr, dV.ptr, DO.ptr, Q.ptr, K.ptr, V.ptr, O.ptr, L.ptr, shape);
  const result = {
    o: d.download(new Float32Array(x.q.length), O.ptr),
    lse: d.download(new Float32Array(nh * T), L.ptr),
    dq: d.download(new Float32Array(x.q.length), dQ.ptr),
    dk: d.download(new Float32Array(x.k.length), dK.ptr),
    dv: d.download(new Float32Array(x.v.length), dV.ptr),
  };
  for (const b of [Q, K, V, DO, O, L, dQ, dK, dV]) b.free();
  docs?.free();
  return result;
}

/** Document starts as every rank of a sequence holds them (host and int64 device copies). */
export function deviceDocuments(
  d: Device,
  starts: number[],
): SequenceDocuments & { free(): void } {
  const buffer = d.alloc(starts.length * 8);
  d.upload(buffer.ptr, BigInt64Array.from(starts, BigInt));
  return {
    starts,
    device: { starts: buffer.ptr, count: starts.length },
    free: () => buffer.free(),
  };
}

/** A zeroed whole-sequence result, for the ranks' parts to be placed into. */
export function emptyAttentionResult(qLen: number, kvLen: number, lseLen: number): AttentionResult {
  return {
    o: new Float32Array(qLen),
    lse: new Float32Array(lseLen),
    dq: new Float32Array(qLen),
    dk: new Float32Array(kvLen),
    dv: new Float32Array(kvLen),
  };
}

/** ||got - want|| / ||want|| for every tensor of an attention result. */
export function attentionErrors(
  got: AttentionResult,
  want: AttentionResult,
): Record<string, number> {
  return Object.fromEntries(
    (Object.keys(want) as (keyof AttentionResult)[]).map((
      key,
    ) => [key, relError(got[key], want[key])]),
  );
}

/** One rank's inputs for runSequenceParallel. */
export interface RankInputs {
  attn: Attention & { free(): void };
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  dout: Float32Array;
  /** Floats of this rank's LSE buffer. */
  lseLen: number;
}

/**
 * Forward then backward of every rank's attention concurrently (in-process ranks), returning each
 * rank's O, LSE, dQ, dK, dV in its own layout; frees the attentions and buffers. `docs`: the
 * sequence's documents, the same for every rank; `afterForward` runs between the two passes.
 */
export async function runSequenceParallel(
  d: Device,
  ranks: RankInputs[],
  options: { docs?: SequenceDocuments; afterForward?: () => void } = {},
): Promise<AttentionResult[]> {
  const up = (a: Float32Array) => {
    const b = d.alloc(a.length * 4);
    d.upload(b.ptr, a);
    return b;
  };
  const state = ranks.map((x) => {
    const inputs = [x.q, x.k, x.v, x.dout].map(up);
    const o = d.alloc(x.q.length * 4), lse = d.alloc(x.lseLen * 4);
    const grads = [d.alloc(x.q.length * 4), d.alloc(x.k.length * 4), d.alloc(x.v.length * 4)];
    for (const g of grads) d.memset(g.ptr, 0, g.bytes);
    return { x, inputs, o, lse, grads };
  });
  const tensors = state.map(({ inputs: [q, k, v], o, lse }) => ({
    q: q.ptr,
    k: k.ptr,
    v: v.ptr,
    out: o.ptr,
    lse: lse.ptr,
    docs: options.docs,
  }));
  await Promise.all(state.map(({ x }, r) => x.attn.forward(tensors[r])));
  options.afterForward?.();
  await Promise.all(
    state.map(({ x, inputs: [, , , dout], grads: [dq, dk, dv] }, r) =>
      x.attn.backward(tensors[r], { dout: dout.ptr, dq: dq.ptr, dk: dk.ptr, dv: dv.ptr })
    ),
  );
  return state.map(({ x, inputs, o, lse, grads }) => {
    const result = {
      o: d.download(new Float32Array(x.q.length), o.ptr),
      lse: d.download(new Float32Array(x.lseLen), lse.ptr),
      dq: d.download(new Float32Array(x.q.length), grads[0].ptr),
      dk: d.download(new Float32Array(x.k.length), grads[1].ptr),
      dv: d.download(new Float32Array(x.v.length), grads[2].ptr),
    };
    x.attn.free();
    for (const b of [...inputs, o, lse, ...grads]) b.free();
    return result;
  });
}

const CLI_MAIN = fileURLToPath(new URL("../cli/main.ts", import.meta.url));

/**
 * Runs `world` CPU rank processes of the CLI (`args` after `main.ts`), started as srun would start
 * them (rank variables, a job secret, no launcher), and asserts that every rank exits 0. A port
 * taken between choosing and binding it is retried.
 */
export async function runCpuRanks(world: number, args: string[]): Promise<void> {
  for (let attempt = 0;; attempt++) {
    const port = String(freePort());
    const results = await Promise.all(
      Array.from({ length: world }, (_, r) =>
        new Deno.Command(Deno.execPath(), {
          args: ["run", "-A", CLI_MAIN, ...args],
          env: {
            RANK: `${r}`,
            WORLD_SIZE: `${world}`,
            LOCAL_RANK: `${r}`,
            LOCAL_WORLD_SIZE: `${world}`,
            MASTER_ADDR: "127.0.0.1",
            MASTER_PORT: port,
            DISTFLASH_JOB_SECRET: "cpu-ranks-test-secret",
            // A group whose rank 0 could not start gives up quickly instead of after 300 s.
            DISTFLASH_RENDEZVOUS_TIMEOUT_S: "30",
            NO_COLOR: "1",
          },
          stdout: "piped",
          stderr: "piped",
        }).output()),
    );
    const stderr = results.map((r) => new TextDecoder().decode(r.stderr));
    if (attempt < 2 && stderr[0].includes("Address already in use")) continue;
    results.forEach((r, i) => {
      if (r.code !== 0) throw new Error(`rank ${i} exited ${r.code}: ${stderr[i]}`);
    });
    return;
  }
}

/**
 * `train` options as the command line spells them (`{ modelMaxLength: 16 }` -> `--model-max-length
 * 16`; `true` -> a bare flag), so a test states its run once and uses it in-process and as a CLI.
 */
export function trainFlags(options: Record<string, string | number | boolean>): string[] {
  return Object.entries(options).flatMap(([key, value]) =>
    value === true ? [flagName(key)] : [flagName(key), String(value)]
  );
}

/**
 * Device buffers of one test, all freed at the end (even when the test fails): uploads in f32 or
 * bf16 (rounded to nearest even), int32 and int64 document starts, zeros, and reads back.
 */
export class DeviceScope {
  #buffers: DeviceBuffer[] = [];

  constructor(readonly device: Device) {}

  alloc(bytes: number): DeviceBuffer {
    const b = this.device.alloc(bytes);
    this.#buffers.push(b);
    return b;
  }

  /** Uploads values stored as `dtype` (bf16: rounded to nearest even). */
  put(values: ArrayLike<number>, dtype: DType = DType.f32): DevicePtr {
    const b = this.alloc(values.length * DTYPE_BYTES[dtype]);
    this.set(b.ptr, values, dtype);
    return b.ptr;
  }

  i32(values: ArrayLike<number>): DevicePtr {
    const b = this.alloc(values.length * 4);
    this.device.upload(b.ptr, Int32Array.from(values));
    return b.ptr;
  }

  /** Document starts in device memory, as the attention _docs entries read them. */
  docs(starts: number[]): AttentionDocuments {
    const b = this.alloc(starts.length * 8);
    this.device.upload(b.ptr, BigInt64Array.from(starts, BigInt));
    return { starts: b.ptr, count: starts.length };
  }

  zeros(n: number, dtype: DType = DType.f32): DevicePtr {
    const b = this.alloc(n * DTYPE_BYTES[dtype]);
    this.device.memset(b.ptr, 0, n * DTYPE_BYTES[dtype]);
    return b.ptr;
  }

  /** Overwrites a device tensor with new values. */
  set(ptr: DevicePtr, values: ArrayLike<number>, dtype: DType = DType.f32): void {
    this.device.upload(
      ptr,
      dtype === DType.bf16 ? Uint16Array.from(values, f32ToBf16Bits) : Float32Array.from(values),
    );
  }

  get(ptr: DevicePtr, n: number, dtype: DType = DType.f32): Float32Array {
    if (dtype === DType.f32) return this.device.download(new Float32Array(n), ptr);
    return Float32Array.from(this.device.download(new Uint16Array(n), ptr), bf16BitsToF32);
  }

  free(): void {
    for (const b of this.#buffers) b.free();
    this.#buffers = [];
  }
}

/** Runs `fn` with a DeviceScope on `device`, freeing its buffers afterwards. */
export function withDeviceScope(device: Device, fn: (s: DeviceScope) => void): void {
  const s = new DeviceScope(device);
  try {
    fn(s);
  } finally {
    s.free();
  }
}

/**
 * A small CPU training run that saves every step (debug-tiny, 16 tokens, constant rate, no final
 * model): the run the reliability, save-fault and save-recovery tests kill, fail and resume. A
 * constant rate keeps runs that differ only in --max-steps step for step equal.
 */
export const SAVING_RUN = {
  model: "debug-tiny",
  synthetic: true,
  modelMaxLength: 16,
  perDeviceTrainBatchSize: 2,
  learningRate: 1e-2,
  loggingSteps: 1,
  saveSteps: 1,
  device: "cpu",
  saveFinalModel: false,
  lrSchedulerType: "constant",
} as const;

/** The run id an output folder's run.json names. */
export const runIdOf = (dir: string): string =>
  JSON.parse(Deno.readTextFileSync(`${dir}/${RUN_FILE}`)).run_id;

/**
 * Waits until `condition()` holds, polling every 25 ms, for as long as every process of `alive`
 * runs: no fixed time, so a loaded machine that starts slowly only waits longer. Throws as soon
 * as one of them ended first (the condition can no longer come), naming `what` and its exit code.
 * `hangGuardMs` (default 10 minutes) only ends a test that would otherwise hang for ever.
 */
export async function waitUntil(
  condition: () => boolean | Promise<boolean>,
  alive: Deno.ChildProcess[],
  what: string,
  hangGuardMs = 600_000,
): Promise<void> {
  let ended: string | null = null;
  alive.forEach((p, i) => p.status.then((s) => (ended ??= `process ${i} exited (${s.code})`)));
  const start = performance.now();
  for (;;) {
    if (await condition()) return;
    if (ended !== null) throw new Error(`${what}: never happened, ${ended}`);
    if (performance.now() - start > hangGuardMs) {
      throw new Error(`${what}: still not after ${hangGuardMs} ms`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}
