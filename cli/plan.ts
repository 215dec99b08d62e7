/**
 * `distflash plan`: the per-GPU memory of a training run by kind, the total against the GPU's
 * memory, and the longest --model-max-length that fits; takes the same flags as `train`.
 */
import { type Command, Option } from "npm:commander@^14.0.0";
import { resolveTrainOptions } from "../src/train/resolve_options.ts";
import { withConfigFile } from "../src/train/config_file.ts";
import { addTrainFlags } from "./train.ts";
import { formatPlan, hostAvailableBytes, type HostBudget } from "../src/train/plan.ts";
import { resolveModel } from "../src/model/hf.ts";
import { Device } from "../src/runtime/device.ts";
import { formatBytes } from "../src/runtime/memory.ts";
import {
  CONTEXT_OVERHEAD_BYTES,
  DEFAULT_GPU_KIND,
  GPU_KINDS,
  type GpuKind,
  gpuKind,
} from "../src/train/gpu_kinds.ts";

/** Free memory of GPU 0 when one is present. */
function gpuFreeBytes(): number | null {
  try {
    const device = Device.open("cuda");
    try {
      if (device.deviceCount() === 0) return null;
      device.setDevice(0);
      return device.memInfo().free;
    } finally {
      device.close();
    }
  } catch {
    return null;
  }
}

/**
 * The GPU memory a plan is made for, where it comes from, and whether that is this machine (then
 * its host memory is the node's too): --gpu-memory, else --gpu's usable memory, else --device
 * cpu's host memory, else GPU 0's free memory, else the default kind's.
 */
export function gpuBudget(
  gpu: string | undefined,
  gpuMemory: string | undefined,
  device: string,
  freeOnGpu0: () => number | null = gpuFreeBytes,
): { budget: number; source: string; thisMachine: boolean } {
  if (gpu !== undefined && gpuMemory !== undefined) {
    throw new Error("--gpu and --gpu-memory both set the GPU memory: give one of the two");
  }
  if (gpuMemory !== undefined) {
    const gib = Number(gpuMemory);
    if (!(gib > 0)) {
      throw new Error(`--gpu-memory: expected a positive number of GiB, got ${gpuMemory}`);
    }
    return { budget: gib * 2 ** 30, source: "--gpu-memory", thisMachine: false };
  }
  const usable = (k: GpuKind) =>
    `usable of its ${formatBytes(k.totalBytes)}, less ${formatBytes(CONTEXT_OVERHEAD_BYTES)} ` +
    "for the CUDA context";
  if (gpu !== undefined) {
    const k = gpuKind(gpu);
    return { budget: k.usableBytes, source: `--gpu ${k.name}: ${usable(k)}`, thisMachine: false };
  }
  if (device === "cpu") {
    // The CPU backend's device memory is this host's memory.
    return {
      budget: hostAvailableBytes(),
      source: "--device cpu: available on this host",
      thisMachine: true,
    };
  }
  const free = freeOnGpu0();
  if (free) {
    return {
      budget: free,
      source: "free on GPU 0 of this machine; --gpu or --gpu-memory plans for another",
      thisMachine: true,
    };
  }
  const k = gpuKind(DEFAULT_GPU_KIND);
  return {
    budget: k.usableBytes,
    source: `no GPU here, so --gpu ${k.name}: ${usable(k)}; --gpu or --gpu-memory sets it`,
    thisMachine: false,
  };
}

/** The heading of plan's own flags in its help. */
const PLAN_HEADING = "Plan options:";

export function registerPlan(program: Command): void {
  const cmd = program
    .command("plan")
    .description(
      "per-GPU memory of a training run and the longest sequence that fits (train's flags)",
    )
    .addOption(
      new Option(
        "--gpu <kind>",
        `the GPU to plan for, with the memory a run can use on it: ${
          GPU_KINDS.map((k) => `${k.name} ${(k.usableBytes / 2 ** 30).toFixed(1)}`).join(", ")
        } GiB (default: GPU 0 of this machine, else ${DEFAULT_GPU_KIND})`,
      ).helpGroup(PLAN_HEADING),
    )
    .addOption(
      new Option(
        "--gpu-memory <GiB>",
        "memory per GPU to plan for, any figure (default: see --gpu; --device cpu: the host's)",
      ).helpGroup(PLAN_HEADING),
    )
    .addOption(
      new Option(
        "--host-memory <GiB>",
        "host memory of a node for offloaded state (default: this host's available memory when " +
          "planning for this machine's GPU or --device cpu; else not checked)",
      ).helpGroup(PLAN_HEADING),
    )
    .addOption(
      new Option(
        "--doc-length <n>",
        "with --attention-mask document: mean document length to report the attention work for",
      ).helpGroup(PLAN_HEADING),
    );
  // Every train flag is accepted (a train command line plans as it is); the help lists only the
  // ones that change memory.
  addTrainFlags(cmd, true);
  cmd.addHelpText(
    "after",
    "\nOnly the flags that change memory are listed; every other flag of `train` is accepted " +
      "(it does not change the plan).\n\nExample:\n  distflash plan --model llama-2-7b --bf16 --model-max-length 65536 " +
      "--nproc-per-node 2 --fsdp full_shard --gpu H100-80GB\n",
  );
  cmd.action(async (raw: Record<string, unknown>) => {
    const { gpu, gpuMemory, hostMemory, docLength, ...flags } = raw;
    const { input: rest, sources } = withConfigFile(flags);
    // Planning needs no data: a placeholder keeps the data-path check quiet.
    if (!rest.dataPath && !rest.synthetic) rest.synthetic = true;
    const { options } = resolveTrainOptions(rest, sources);
    let meanDocLength: number | undefined;
    if (docLength !== undefined) {
      meanDocLength = Number(docLength);
      if (!Number.isInteger(meanDocLength) || meanDocLength < 1) {
        throw new Error(`--doc-length: expected a positive integer, got ${docLength}`);
      }
      if (options.attentionMask !== "document") {
        throw new Error("--doc-length needs --attention-mask document");
      }
    }
    const cfg = (await resolveModel(options.model)).config;
    const { budget, source, thisMachine } = gpuBudget(
      gpu as string | undefined,
      gpuMemory as string | undefined,
      options.device,
    );
    let host: HostBudget = thisMachine
      ? { bytes: hostAvailableBytes(), source: "available on this host; --host-memory sets it" }
      : {
        bytes: Infinity,
        source: "not checked: planning for another machine, --host-memory GiB sets it",
      };
    if (hostMemory !== undefined) {
      const gib = Number(hostMemory);
      if (!(gib > 0)) {
        throw new Error(`--host-memory: expected a positive number of GiB, got ${hostMemory}`);
      }
      host = { bytes: gib * 2 ** 30, source: "--host-memory" };
    }
    const world = options.nprocPerNode * options.nnodes;
    const { text, fits } = formatPlan(cfg, options, world, budget, source, host, meanDocLength);
    console.log(text);
    if (!fits) Deno.exit(3);
  });
}
