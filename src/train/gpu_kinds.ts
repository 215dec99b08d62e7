/**
 * GPU kinds `distflash plan --gpu` plans for, with the memory a run can really use on each.
 *
 * Totals are what `nvidia-smi --query-gpu=memory.total` reports for the card (MiB), as published
 * in NVIDIA's datasheets and seen in nvidia-smi output of each card: a card sold as "80 GB" holds
 * 81559 MiB (H100) or 81920 MiB (A100). A run cannot have all of it: the CUDA context, the driver's
 * reservations and the process's own first allocations take some before the first tensor. On an
 * 80 GB H100 this project measured 79.6 GiB total and 78.7 GiB free when a run starts (issue 25,
 * 2026-12-07): 0.9 GiB. The same overhead is assumed for the other kinds (it is the context, not
 * the card); `--gpu-memory GiB` plans for any other figure.
 */

const MIB = 2 ** 20;
const GIB = 2 ** 30;

/** What a run cannot use: CUDA context and driver reservations (measured on an H100, above). */
export const CONTEXT_OVERHEAD_BYTES = 0.9 * GIB;

/** A GPU kind: its name as `--gpu` takes it, total memory and what a run can use. */
export interface GpuKind {
  name: string;
  /** nvidia-smi's memory.total, bytes. */
  totalBytes: number;
  /** What a run can allocate: total less CONTEXT_OVERHEAD_BYTES. */
  usableBytes: number;
}

function kind(name: string, totalMiB: number): GpuKind {
  const totalBytes = totalMiB * MIB;
  return { name, totalBytes, usableBytes: totalBytes - CONTEXT_OVERHEAD_BYTES };
}

/** The kinds `--gpu` knows (nvidia-smi memory.total in MiB). */
export const GPU_KINDS: readonly GpuKind[] = [
  kind("H100-80GB", 81559), // H100 SXM5 and PCIe 80 GB HBM3/HBM2e: 79.6 GiB
  kind("H100-94GB", 95830), // H100 NVL: 93.6 GiB
  kind("H200", 143771), // H200 141 GB HBM3e: 140.4 GiB
  kind("A100-80GB", 81920), // A100 SXM4 / PCIe 80 GB: 80.0 GiB
  kind("A100-40GB", 40960), // A100 SXM4 / PCIe 40 GB: 40.0 GiB
  kind("L40S", 46068), // L40S 48 GB GDDR6 with ECC: 45.0 GiB
  kind("RTX-4090", 24564), // GeForce RTX 4090 24 GB: 24.0 GiB
];

/** The kind planned for when no GPU is here and none is named. */
export const DEFAULT_GPU_KIND = "H100-80GB";

/**
 * The kind named `name` (case-insensitive; a family name such as "h100" when it names one kind, an
 * error naming the choices when it names several), or an error listing the known ones.
 */
export function gpuKind(name: string): GpuKind {
  const want = name.toLowerCase();
  let found = GPU_KINDS.find((k) => k.name.toLowerCase() === want);
  if (!found) {
    const family = GPU_KINDS.filter((k) => k.name.toLowerCase().startsWith(`${want}-`));
    if (family.length > 1) {
      throw new Error(
        `--gpu ${name}: which one? ${
          family.map((k) => k.name).join(" or ")
        } (their memory differs)`,
      );
    }
    found = family[0];
  }
  if (!found) {
    throw new Error(
      `--gpu ${name}: unknown GPU kind; known: ${GPU_KINDS.map((k) => k.name).join(", ")} ` +
        "(--gpu-memory GiB plans for any other)",
    );
  }
  return found;
}
