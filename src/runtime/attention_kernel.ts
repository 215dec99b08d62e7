/**
 * Which kernels run attention (`--attention-kernel auto|native|cudnn`): the choice reaches the C
 * library once per process through df_attention_kernel_set (a process-wide setting; the per-call
 * environment knobs DISTFLASH_FLASH_* stay for benchmarking kernel variants), and is described in
 * one line that the run prints once.
 *
 * auto (the default of the CLI, the library and the C side): cuDNN's fused attention (cuDNN 9,
 * opened at run time) where it loads and takes the call, else the native kernels; native: never
 * cuDNN; cudnn: like auto, but an error when cuDNN is not available (the message says why).
 */
import type { Device } from "./device.ts";

/** The values of `--attention-kernel`, in the order of the C enum df_attention_kernel. */
export const ATTENTION_KERNELS = ["auto", "native", "cudnn"] as const;
/** The one help text of `--attention-kernel` (train, plan and both benchmarks). */
export const ATTENTION_KERNEL_HELP =
  "attention kernels: auto (default: cuDNN's fused attention where it loads and takes the block " +
  "pair, the native kernels for the rest), native (never cuDNN), or cudnn (auto, but an error " +
  "when cuDNN does not load)";
/** One value of `--attention-kernel`. */
export type AttentionKernel = typeof ATTENTION_KERNELS[number];

const CODES = Object.fromEntries(ATTENTION_KERNELS.map((k, i) => [k, i])) as Record<
  AttentionKernel,
  number
>;

/** What the cuDNN loader found: the version and file, or why none. */
export interface CudnnProbe {
  /** Whether cuDNN 9 opened. */
  available: boolean;
  /** "major.minor.patch" when it did. */
  version?: string;
  /** The file opened. */
  path?: string;
  /** Why it did not open (every place looked at). */
  error?: string;
}

/** cudnnGetVersion's encoding (major*10000 + minor*100 + patch) as "major.minor.patch". */
export function formatCudnnVersion(code: number): string {
  return `${Math.floor(code / 10000)}.${Math.floor((code % 10000) / 100)}.${code % 100}`;
}

/** Asks the library's loader for cuDNN (loaded once per process; never throws). */
export function probeCudnn(device: Device): CudnnProbe {
  const version = new BigInt64Array(1);
  const path = new Uint8Array(1024);
  const status = device.sym.df_cudnn_probe(version, path, BigInt(path.length));
  if (status !== 0) return { available: false, error: device.lastError() };
  const end = path.indexOf(0);
  return {
    available: true,
    version: formatCudnnVersion(Number(version[0])),
    path: new TextDecoder().decode(path.subarray(0, end < 0 ? path.length : end)),
  };
}

/**
 * Sets the attention kernel for this process and returns the line to print once: which kernels run
 * attention and, where cuDNN does not, why. `bf16`: whether the run stores activations in bf16
 * (cuDNN's fused attention takes bf16 only; an fp32 run is told so). Throws for `cudnn` on the CPU
 * backend, for an fp32 run, or when cuDNN does not load, saying why.
 */
export function selectAttentionKernel(
  device: Device,
  choice: AttentionKernel,
  { bf16 = true }: { bf16?: boolean } = {},
): string {
  if (!(choice in CODES)) {
    throw new Error(`--attention-kernel: ${choice} is not one of ${ATTENTION_KERNELS.join(", ")}`);
  }
  if (choice === "native" || device.backend !== "cuda") {
    if (choice === "cudnn") {
      throw new Error(
        `--attention-kernel cudnn: cuDNN attention runs only on the CUDA backend (this run uses the ${device.backend} backend)`,
      );
    }
    device.check(device.sym.df_attention_kernel_set(CODES.native), "df_attention_kernel_set");
    return choice === "native"
      ? "attention: native kernels (--attention-kernel native)"
      : `attention: native kernels (the ${device.backend} backend has no cuDNN path)`;
  }
  if (!bf16) {
    if (choice === "cudnn") {
      throw new Error(
        "--attention-kernel cudnn: cuDNN's fused attention takes bf16 only (add --bf16)",
      );
    }
    device.check(device.sym.df_attention_kernel_set(CODES.native), "df_attention_kernel_set");
    return "attention: native kernels (an fp32 run: cuDNN's fused attention takes bf16 only)";
  }
  const probe = probeCudnn(device);
  if (!probe.available) {
    if (choice === "cudnn") throw new Error(`--attention-kernel cudnn: ${probe.error}`);
    device.check(device.sym.df_attention_kernel_set(CODES.native), "df_attention_kernel_set");
    return `attention: native kernels (cuDNN not used: ${probe.error})`;
  }
  device.check(device.sym.df_attention_kernel_set(CODES[choice]), "df_attention_kernel_set");
  return `attention: cuDNN ${probe.version} fused attention (${probe.path}) for the bf16 block ` +
    `pairs it takes, native kernels for the rest (--attention-kernel ${choice})`;
}

/**
 * Runs `fn` with the native kernels chosen, then restores the setting: for calls whose shapes
 * change every step (document pieces), where cuDNN would build an execution plan per shape. The
 * setting is process-wide and read as each call is made; every attention call of a process is made
 * from its one JavaScript thread, so nothing else runs between the two sets.
 */
export function withNativeAttention(device: Device, fn: () => void): void {
  const before = device.sym.df_attention_kernel_get();
  if (before === CODES.native) return fn();
  device.check(device.sym.df_attention_kernel_set(CODES.native), "df_attention_kernel_set");
  try {
    fn();
  } finally {
    device.check(device.sym.df_attention_kernel_set(before), "df_attention_kernel_set");
  }
}

/** The kernel setting the library holds now (after {@link selectAttentionKernel}). */
export function currentAttentionKernel(device: Device): AttentionKernel {
  const code = device.sym.df_attention_kernel_get();
  return ATTENTION_KERNELS[code] ?? "auto";
}

/** What the plan sets aside for cuDNN's own workspace per stream (it asks for a few MiB). */
export const CUDNN_WORKSPACE_ALLOWANCE_BYTES = 64 * 2 ** 20;

/**
 * The cuDNN path's scratch for one attention backward of `tokens` queries and keys (its largest
 * call; one growing buffer per stream, csrc/cuda/cudnn_attention.cu): bf16 dq, dk, dv, the fp32
 * row sums and dQ accumulator, plus the workspace allowance. The same layout as
 * cudnn_attention_backward's (kept here so `plan` needs no CUDA library; change both together).
 */
export function cudnnScratchBytes(
  tokens: number,
  heads: number,
  kvHeads: number,
  headDim: number,
): number {
  const q = tokens * heads * headDim, kv = tokens * kvHeads * headDim;
  return 2 * q + 4 * kv + 4 * tokens * heads + 4 * q + CUDNN_WORKSPACE_ALLOWANCE_BYTES;
}
