/** What `distflash info` reports: backends, GPUs, driver/runtime, NCCL, build info. */
import { type BackendName, LibraryNotFoundError, openNccl } from "../../ffi/loader.ts";
import { formatNcclVersion } from "../../ffi/nccl.ts";
import { Device, type DeviceProps } from "./device.ts";
import { gpuDriverPresent } from "./gpu_driver.ts";
import { type CudnnProbe, probeCudnn } from "./attention_kernel.ts";
import denoJson from "../../deno.json" with { type: "json" };

/** distflash's version (from deno.json). */
export const VERSION: string = denoJson.version;

/**
 * Whether one backend's native library opened, and where from or why not.
 */
export interface BackendInfo {
  /** Whether the library could be opened. */
  available: boolean;
  /** The path it was opened from. */
  libraryPath?: string;
  /** Its build description (compiler, flags, architectures, git commit). */
  buildInfo?: string;
  /** Why it could not be opened. */
  error?: string;
}

/** The installation as {@link gatherInfo} finds it (what `distflash info` prints). */
export interface Info {
  /** distflash's version. */
  version: string;
  /** The backend training would use: "cuda" when a GPU is usable, else "cpu". */
  backend: BackendName;
  /** Operating system and architecture, "os-arch". */
  platform: string;
  /** Deno's version. */
  deno: string;
  /** Properties of every CUDA GPU found (empty without one). */
  gpus: DeviceProps[];
  /** Why no GPU is listed, when none is. */
  noGpuReason?: string;
  /** CUDA driver version, "major.minor", when a GPU is found. */
  cudaDriverVersion?: string;
  /** CUDA runtime version, "major.minor", when a GPU is found. */
  cudaRuntimeVersion?: string;
  /** Whether libnccl opened, its version and path, or why not. */
  nccl: { available: boolean; version?: string; path?: string; error?: string };
  /**
   * Per backend: `available` (the library opened), with `libraryPath` and `buildInfo` when it
   * did, or `error` when it did not.
   */
  backends: Record<BackendName, BackendInfo>;
  /** What the cuDNN loader of the backend in use found (cuDNN runs attention on CUDA only). */
  cudnn: CudnnProbe;
}

function cudaVersion(code: number): string {
  return code ? `${Math.floor(code / 1000)}.${Math.floor((code % 1000) / 10)}` : "none";
}

/**
 * Opens the preferred backend: `cuda` when asked or when `auto` finds a GPU, else `cpu`.
 * Asking for `cuda` on a machine without a GPU is an error that says why.
 */
export function openBackend(choice: "auto" | BackendName): Device {
  if (choice === "cpu") return Device.open("cpu");
  if (!gpuDriverPresent()) {
    // Without a driver the CUDA runtime can only say "driver version is insufficient".
    if (choice === "cuda") {
      throw new Error("--device cuda: no CUDA GPU found (this machine has no NVIDIA driver)");
    }
    return Device.open("cpu");
  }
  let cudaError = "";
  try {
    const device = Device.open("cuda");
    if (device.deviceCount() > 0) return device;
    cudaError = device.lastError() || "no CUDA device";
    device.close();
  } catch (error) {
    cudaError = (error as Error).message;
  }
  if (choice === "cuda") throw new Error(`--device cuda: no CUDA GPU found (${cudaError})`);
  return Device.open("cpu");
}

/** Probes both backends, the GPUs and NCCL; never throws for a missing library or GPU. */
export function gatherInfo(): Info {
  const info: Info = {
    version: VERSION,
    backend: "cpu",
    platform: `${Deno.build.os}-${Deno.build.arch}`,
    deno: Deno.version.deno,
    gpus: [],
    nccl: { available: false },
    backends: { cpu: { available: false }, cuda: { available: false } },
    cudnn: { available: false, error: "not probed" },
  };
  for (const name of ["cpu", "cuda"] as const) {
    try {
      const device = Device.open(name);
      info.backends[name] = {
        available: true,
        libraryPath: device.libraryPath,
        buildInfo: device.buildInfo,
      };
      if (name === "cuda") {
        const count = device.deviceCount();
        if (count === 0) info.noGpuReason = device.lastError() || "no CUDA device";
        for (let i = 0; i < count; i++) {
          device.setDevice(i);
          info.gpus.push(device.props(i));
        }
        if (count > 0) {
          info.backend = "cuda";
          info.cudaDriverVersion = cudaVersion(device.driverVersion());
          info.cudaRuntimeVersion = cudaVersion(device.runtimeVersion());
        }
      }
      device.close();
    } catch (error) {
      info.backends[name] = { available: false, error: (error as Error).message };
      if (name === "cuda") info.noGpuReason = "the CUDA library is not available";
    }
  }
  try {
    const device = Device.open(info.backend);
    info.cudnn = probeCudnn(device);
    device.close();
  } catch (error) {
    info.cudnn = { available: false, error: (error as Error).message };
  }
  try {
    const { lib, path } = openNccl();
    const version = new Int32Array(1);
    const status = lib.symbols.ncclGetVersion(version);
    info.nccl = status === 0
      ? { available: true, version: formatNcclVersion(version[0]), path }
      : { available: false, path, error: `ncclGetVersion returned ${status}` };
    lib.close();
  } catch (error) {
    info.nccl = {
      available: false,
      error: error instanceof LibraryNotFoundError ? error.message : String(error),
    };
  }
  return info;
}

const GiB = 1024 ** 3;

/** The human-readable report of `distflash info`. */
export function formatInfo(info: Info): string {
  const lines = [`distflash ${info.version} (deno ${info.deno}, ${info.platform})`];
  lines.push(`backend in use: ${info.backend}`);
  if (info.gpus.length === 0) {
    // NCCL, cuDNN and the CUDA library only matter with a GPU: their search paths are noise here.
    lines.push(
      `CPU only: no GPU (${info.noGpuReason ?? "no CUDA device"}); training runs on the CPU`,
    );
    const cpu = info.backends.cpu;
    if (cpu) {
      lines.push(
        cpu.available
          ? `cpu library: ${cpu.libraryPath}\n  build: ${cpu.buildInfo}`
          : `cpu library: not available (${cpu.error?.split("\n")[0]})`,
      );
    }
    return lines.join("\n");
  } else {
    lines.push(`CUDA driver ${info.cudaDriverVersion}, runtime ${info.cudaRuntimeVersion}`);
    for (const g of info.gpus) {
      const free = g.freeBytes ? `, ${(g.freeBytes / GiB).toFixed(1)} GiB free` : "";
      lines.push(
        `GPU ${g.index}: ${g.name}, ${(g.totalBytes / GiB).toFixed(1)} GiB${free}, ` +
          `compute capability ${g.computeCapability}, ${g.multiprocessors} SMs, PCI bus ${g.pciBusId}`,
      );
    }
  }
  lines.push(
    info.nccl.available
      ? `NCCL ${info.nccl.version} (${info.nccl.path})`
      : `NCCL: not found\n  ${(info.nccl.error ?? "").replaceAll("\n", "\n  ")}`,
  );
  const c = info.cudnn;
  lines.push(
    !c.available
      ? `cuDNN: not used (${c.error})`
      : info.backend === "cuda"
      ? `cuDNN ${c.version} (${c.path}): fused attention for bf16 (--attention-kernel auto or cudnn)`
      : `cuDNN ${c.version} (${c.path}): not used (the cpu backend runs attention natively)`,
  );
  for (const [name, b] of Object.entries(info.backends)) {
    lines.push(
      b.available
        ? `${name} library: ${b.libraryPath}\n  build: ${b.buildInfo}`
        : `${name} library: not available (${b.error?.split("\n")[0]})`,
    );
  }
  return lines.join("\n");
}
