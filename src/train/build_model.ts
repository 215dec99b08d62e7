/**
 * The device side of a run: opens the device, joins the ranks (the sp subgroup and the sequence
 * attention), builds the model with the parameter store the parallel layout chooses, and
 * allocates them once the run is known to fit in device and host memory.
 */
import { openBackend } from "../runtime/info.ts";
import { formatBytes } from "../runtime/memory.ts";
import { DType } from "../runtime/ops.ts";
import type { Device } from "../runtime/device.ts";
import { DecoderModel } from "../model/decoder.ts";
import { windowDescription } from "../model/config.ts";
import { familyOf } from "../model/families/mod.ts";
import type { ModelSource } from "../model/hf.ts";
import type { TrainOptions } from "./options.ts";
import {
  formatPlan,
  hostAvailableBytes,
  libraryKinds,
  modelOptions,
  nodeHostBytes,
} from "./plan.ts";
import { initDistributed } from "../comm/env.ts";
import type { ParallelLayout } from "../parallel/layout.ts";
import { buildSequenceAttention, type SequenceAttention } from "../parallel/sequence_attention.ts";
import type { Communicator } from "../comm/comm.ts";
import { SelfComm } from "../comm/self_comm.ts";
import { currentAttentionKernel, selectAttentionKernel } from "../runtime/attention_kernel.ts";
import type { TrainingData } from "./training_data.ts";

/**
 * Opens the device, joins the ranks (sp subgroup, sequence attention), builds the model with the
 * parameter store the layout chooses, and allocates them once the memory check passed.
 */
export async function buildModel(
  o: TrainOptions,
  worldSize: number,
  parallel: ParallelLayout,
  source: ModelSource,
  data: TrainingData,
  log: (line: string) => void,
): Promise<{
  device: Device;
  world: Communicator | null;
  attention: SequenceAttention | undefined;
  model: DecoderModel;
  /** Free device bytes before allocation; the whole plan (tensors, workspaces, cuDNN scratch). */
  memory: { freeBefore: number; planned: number };
}> {
  const cfg = source.config, L = o.modelMaxLength, sp = parallel.sp;
  const B = o.perDeviceTrainBatchSize, accum = o.gradientAccumulationSteps;
  const { dataset, totalSteps, stepsPerEpoch } = data;
  // The device, the ranks and the memory plan.
  const device = openBackend(o.device);
  const attentionKernelLine = selectAttentionKernel(device, o.attentionKernel, { bf16: o.bf16 });
  const dtype = o.bf16 ? DType.bf16 : DType.f32;
  let world: Communicator | null = null, attention: SequenceAttention | undefined;
  const S = parallel.tokensPerRank(L); // tokens of a sequence on this rank
  if (worldSize > 1) {
    const ctx = await initDistributed({ backend: device.backend, device });
    world = ctx.world;
    // DistAttn gets a communicator of its own even when sp spans the world: its exchanges run on
    // its communication stream, concurrently with the parameter store's collectives over `world`
    // (on the store's stream); one communicator serves one stream at a time here.
    const spComm = await world.subgroup(parallel.spGroup());
    if (sp > 1) {
      // Allocated after the memory check below.
      attention = buildSequenceAttention(device, cfg, S, dtype, spComm, {
        layout: o.distattnLayout,
        balanced: o.distattnBalanced,
        overlap: o.distattnOverlap,
        headGroups: o.attentionHeadGroups,
      });
    }
    const how = o.distattnLayout === "zigzag"
      ? "zigzag ring"
      : `DistAttn ${o.distattnBalanced ? "balanced" : "unbalanced"}, ${
        o.distattnOverlap ? "overlapped" : "not overlapped"
      }`;
    log(
      `ranks: ${parallel.describe()}; ${how}; ${S} tokens per rank`,
    );
  }
  // The model makes no communicators: on one device, offloading shards over a world of one.
  const paramComm = world ?? (o.offloadOptimizer ? new SelfComm(device) : null);
  const params = parallel.paramStore(paramComm, o.offloadOptimizer);
  const model = new DecoderModel(device, cfg, modelOptions(o, S, params), attention);
  const props = device.props(0), window = windowDescription(cfg);
  log(
    `distflash train: ${source.name} (${familyOf(cfg).modelType}, ${
      (model.layout.count / 1e6).toFixed(1)
    }M parameters${window ? `, ${window}` : ""}) on ` +
      `${device.backend} (${props.name}), ${o.bf16 ? "bf16" : "fp32"} (saves ${o.saveDtype} ` +
      `weights), ${B}x${L} tokens x ${accum} ` +
      `accumulation, ${totalSteps} steps (${stepsPerEpoch} per epoch), ${dataset.describe()}` +
      (o.attentionMask === "document"
        ? "; document masking on (--attention-mask document: packed documents, split at BOS, " +
          "do not see each other)"
        : ""),
  );
  log(attentionKernelLine);
  const totals = model.plan.totals();
  if (attention) totals.push(...attention.plan.totals());
  // The libraries' workspaces and cuDNN's scratch, computed as `plan` does, for the backend this
  // run really uses: without them a run the plan rejects got past this check and ran out of memory
  // in its first collective, or in cuDNN's backward scratch.
  const cudnn = currentAttentionKernel(device) !== "native";
  totals.push(...libraryKinds(cfg, o, S, device.backend, cudnn));
  const needed = totals.reduce((a, t) => a + t.bytes, 0);
  log(
    `memory plan: ${totals.map((t) => `${t.kind} ${formatBytes(t.bytes)}`).join(", ")}; total ` +
      formatBytes(needed),
  );
  const free = device.memInfo().free;
  const planned = model.plan.totalBytes + (attention?.plan.totalBytes ?? 0);
  const hostNeeded = nodeHostBytes(model.hostBytes, planned, o, device.backend);
  const hostFree = hostAvailableBytes();
  if (needed > free || hostNeeded > hostFree) {
    // The planner's report names the options that would make the run fit.
    const host = { bytes: hostFree, source: "available on this host" };
    const { text } = formatPlan(cfg, o, worldSize, free, "free on this device", host);
    const where = needed > free ? "this device's memory" : "this host's memory";
    throw new Error(`the run does not fit in ${where}\n${text}`);
  }
  attention?.allocate();
  model.allocate();
  return { device, world, attention, model, memory: { freeBefore: free, planned: needed } };
}
