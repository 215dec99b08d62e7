/**
 * Whether this machine has an NVIDIA driver, without loading any library: the build skips the
 * CUDA kernels where none could run, and `--device cuda` says plainly that there is no GPU.
 */
import { existsSync } from "node:fs";

/** True when an NVIDIA driver is installed (Linux, or WSL 2's /dev/dxg). */
export function gpuDriverPresent(): boolean {
  return existsSync("/proc/driver/nvidia/version") || existsSync("/dev/nvidiactl") ||
    existsSync("/dev/dxg");
}
