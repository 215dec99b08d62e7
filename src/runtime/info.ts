/** What `distflash info` reports: backends, GPUs, driver/runtime, NCCL, build info. */
import { type BackendName, LibraryNotFoundError, openNccl } from "../../ffi/loader.ts";
import { formatNcclVersion } from "../../ffi/nccl.ts";
import { Device, type DeviceProps } from "./device.ts";
import denoJson from "../../deno.json" with { type: "json" };

export const VERSION: string = denoJson.version;

export interface BackendInfo {
  available: boolean;
  libraryPath?: string;
  buildInfo?: string;
  error?: string;
}

export interface Info {
  version: string;
  backend: BackendName;
  platform: string;
  deno: string;
  gpus: DeviceProps[];
  noGpuReason?: string;
  cudaDriverVersion?: string;
  cudaRuntimeVersion?: string;
  nccl: { available: boolean; version?: string; path?: string; error?: string };
  backends: Record<BackendName, BackendInfo>;
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
  let cudaError = "";
  try {
    const device = Device.open("cuda");
    if (device.deviceCount() > 0) return device;
    cudaError = device.lastError() || "no CUDA device";
    device.close();
  } catch (error) {
    cudaError = (error as Error).message;
  }
  if (choice === "cuda") throw new Error(`--device cuda: no usable CUDA GPU (${cudaError})`);
  return Device.open("cpu");
}

export function gatherInfo(): Info {
  const info: Info = {
    version: VERSION,
    backend: "cpu",
    platform: `${Deno.build.os}-${Deno.build.arch}`,
    deno: Deno.version.deno,
    gpus: [],
    nccl: { available: false },
    backends: { cpu: { available: false }, cuda: { available: false } },
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

export function formatInfo(info: Info): string {
  const lines = [`distflash ${info.version} (deno ${info.deno}, ${info.platform})`];
  lines.push(`backend in use: ${info.backend}`);
  if (info.gpus.length === 0) {
    lines.push(`GPUs: none (${info.noGpuReason ?? "no CUDA device"}); training runs on the CPU`);
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
  for (const [name, b] of Object.entries(info.backends)) {
    lines.push(
      b.available
        ? `${name} library: ${b.libraryPath}\n  build: ${b.buildInfo}`
        : `${name} library: not available (${b.error?.split("\n")[0]})`,
    );
  }
  return lines.join("\n");
}
