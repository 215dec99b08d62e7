/**
 * `distflash plan`: the per-GPU memory of a training run by kind, the total against the GPU's
 * memory, and the longest --model-max-length that fits; takes the same flags as `train`.
 */
import type { Command } from "npm:commander@^14.0.0";
import { flagName, TRAIN_SPECS } from "../src/train/option_table.ts";
import { resolveTrainOptions } from "../src/train/resolve_options.ts";
import { withConfigFile } from "../src/train/config_file.ts";
import { CONFIG_FLAG, CONFIG_HELP } from "./train.ts";
import { formatPlan, hostAvailableBytes, type HostBudget } from "../src/train/plan.ts";
import { resolveModel } from "../src/model/hf.ts";
import { Device } from "../src/runtime/device.ts";

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

export function registerPlan(program: Command): void {
  const cmd = program
    .command("plan")
    .description(
      "per-GPU memory of a training run and the longest sequence that fits (train's flags)",
    )
    .option(
      "--gpu-memory <GiB>",
      "memory per GPU to plan for (default: GPU 0's free memory, else 80; --device cpu: the host's)",
    )
    .option(
      "--host-memory <GiB>",
      "host memory of a node for offloaded state (default: what this host has available)",
    )
    .option(
      "--doc-length <n>",
      "with --attention-mask document: mean document length to report the attention work for",
    );
  cmd.option(CONFIG_FLAG, CONFIG_HELP);
  for (const spec of TRAIN_SPECS) {
    const flag = flagName(spec.key);
    cmd.option(spec.kind === "bool" ? `${flag} [bool]` : `${flag} <value>`, spec.help);
  }
  cmd.action(async (raw: Record<string, unknown>) => {
    const { gpuMemory, hostMemory, docLength, ...flags } = raw;
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
    let budget: number, source: string;
    if (gpuMemory !== undefined) {
      const gib = Number(gpuMemory);
      if (!(gib > 0)) {
        throw new Error(`--gpu-memory: expected a positive number of GiB, got ${gpuMemory}`);
      }
      budget = gib * 2 ** 30;
      source = "--gpu-memory";
    } else if (options.device === "cpu") {
      // The CPU backend's device memory is this host's memory.
      budget = hostAvailableBytes();
      source = "--device cpu: available on this host";
    } else {
      const free = gpuFreeBytes();
      budget = free ?? 80 * 2 ** 30;
      source = free ? "free on GPU 0" : "assumed 80 GiB: no GPU here, --gpu-memory sets it";
    }
    let host: HostBudget = { bytes: hostAvailableBytes(), source: "available on this host" };
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
