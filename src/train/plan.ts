/**
 * The memory planner behind `distflash plan` and the check `train` makes before it starts: the
 * per-GPU bytes of every kind of tensor a run allocates, computed from the same memory plan the
 * model and DistAttn reserve (nothing is allocated), plus the libraries' workspaces, and the
 * longest --model-max-length that fits.
 */
import { cudnnScratchBytes } from "../runtime/attention_kernel.ts";
import type { Device } from "../runtime/device.ts";
import { DType } from "../runtime/ops.ts";
import { formatBytes } from "../runtime/memory.ts";
import { type ModelConfig, windowDescription, windowedLayers } from "../model/config.ts";
import { type AttentionGeometry, attentionGeometry } from "../model/attention.ts";
import { DecoderModel, type ModelOptions } from "../model/decoder.ts";
import type { ParamStoreSpec } from "../model/params.ts";
import { buildSequenceAttention, type SequenceAttention } from "../parallel/sequence_attention.ts";
import type { Communicator } from "../comm/comm.ts";
import { ParallelLayout } from "../parallel/layout.ts";
import {
  attentionWorkPerRank,
  imbalance,
  randomDocumentStarts,
} from "../parallel/document_work.ts";
import { balanceDocuments } from "../parallel/document_balance.ts";
import type { TrainOptions } from "./options.ts";
import { freemem } from "node:os";

/** What one GPU holds for a run. */
export interface MemoryEstimate {
  kinds: { kind: string; bytes: number }[];
  totalBytes: number;
  /** Host memory per rank for the offloaded optimizer state and checkpoints. */
  hostBytes: number;
  world: number;
  sp: number;
  fullShard: boolean;
}

/**
 * Workspaces the plan does not see: cuBLASLt's workspace (32 MiB per stream), NCCL's buffers, the
 * flash-attention scratch. An allowance: on 2 H100s (Llama-2-7B, 32K to 128K tokens) a step used
 * 0.9 to 1.1 GiB more than the itemised plan (BENCHMARKS.md); tests/plan.test.ts checks the whole
 * within 10% on a GPU.
 */
export const WORKSPACE_ALLOWANCE_BYTES = 1.5 * 2 ** 30;

/**
 * What a run holds on the device outside its memory plan, by kind: the libraries' workspaces and,
 * where cuDNN runs attention, its scratch (its largest call: one block pair of `tokensPerRank`
 * queries and keys, csrc/cuda/cudnn_attention.cu). The one computation behind `plan` and the check
 * `train` makes before it allocates (`cudnn`: whether this run's attention goes through cuDNN; the
 * CPU backend has neither).
 */
export function libraryKinds(
  geometry: AttentionGeometry,
  o: TrainOptions,
  tokensPerRank: number,
  backend: "cuda" | "cpu",
  cudnn: boolean,
): { kind: string; bytes: number }[] {
  if (backend === "cpu") return [];
  const kinds = [{ kind: "library workspaces (allowance)", bytes: WORKSPACE_ALLOWANCE_BYTES }];
  if (cudnn && o.bf16) {
    const g = o.attentionHeadGroups;
    kinds.push({
      kind: "cuDNN attention scratch",
      bytes: cudnnScratchBytes(
        tokensPerRank,
        geometry.numHeads / g,
        geometry.numKvHeads / g,
        geometry.headDim,
      ),
    });
  }
  return kinds;
}

/** A stand-in for the device and communicator: planning only reserves, it never calls them. */
const PLAN_ONLY_DEVICE = { backend: "cuda" } as unknown as Device;

function fakeComm(size: number, rank = 0): Communicator {
  return { rank, size } as unknown as Communicator;
}

/**
 * The model a run's options select, for `seqLen` tokens per rank, with its parameter store
 * (train builds it, plan sizes it).
 */
export function modelOptions(
  o: TrainOptions,
  seqLen: number,
  params: ParamStoreSpec,
): ModelOptions {
  return {
    dtype: o.bf16 ? DType.bf16 : DType.f32,
    batch: o.perDeviceTrainBatchSize,
    seqLen,
    vocabChunk: o.vocabChunk,
    mlpTile: o.mlpTile,
    offloadCheckpoints: o.offloadCheckpoints,
    checkpointBoundary: o.checkpointBoundary,
    params,
  };
}

/** Per-GPU memory of a run with these options on `world` ranks (no allocation happens). */
export function estimateMemory(
  cfg: ModelConfig,
  o: TrainOptions,
  world: number,
  seqLen = o.modelMaxLength,
): MemoryEstimate {
  const parallel = new ParallelLayout(world, 0, o);
  const { sp, fullShard } = parallel;
  const dtype = o.bf16 ? DType.bf16 : DType.f32;
  const S = Math.ceil(seqLen / sp);
  // DistAttn's buffers differ by rank (who sends and who receives partials): plan for the largest.
  let attention: SequenceAttention | undefined;
  if (sp > 1) {
    const slice = parallel.plannedSlice(seqLen);
    for (let rank = 0; rank < sp; rank++) {
      const candidate = buildSequenceAttention(
        PLAN_ONLY_DEVICE,
        attentionGeometry(cfg),
        slice,
        dtype,
        fakeComm(sp, rank),
        {
          layout: o.distattnLayout,
          balanced: o.distattnBalanced,
          overlap: o.distattnOverlap,
          headGroups: o.attentionHeadGroups,
        },
      );
      if (!attention || candidate.plan.totalBytes > attention.plan.totalBytes) {
        attention = candidate;
      }
    }
  }
  // The offloaded optimizer shards even over a world of one.
  const comm = world > 1 || o.offloadOptimizer ? fakeComm(world) : null;
  const model = new DecoderModel(
    PLAN_ONLY_DEVICE,
    cfg,
    modelOptions(o, S, parallel.paramStore(comm, o.offloadOptimizer)),
    attention,
  );
  const kinds = [...model.plan.totals(), ...(attention?.plan.totals() ?? [])];
  // The planner cannot look for cuDNN: on a GPU it counts cuDNN's scratch unless told native.
  const backend = o.device === "cpu" ? "cpu" : "cuda";
  kinds.push(
    ...libraryKinds(cfg, o, S, backend, backend === "cuda" && o.attentionKernel !== "native"),
  );
  return {
    kinds,
    totalBytes: kinds.reduce((a, k) => a + k.bytes, 0),
    hostBytes: model.hostBytes,
    world,
    sp,
    fullShard,
  };
}

/**
 * Host memory a node needs for a run: the offloaded state of each of its ranks (optimizer,
 * gradients, checkpoints) and, on the CPU backend, where device memory is host memory, each
 * rank's device plan as well (`backend`: the one the run uses; the planner infers it from
 * `--device`). `train` checks the same sum before it allocates.
 */
export function nodeHostBytes(
  hostBytes: number,
  deviceBytes: number,
  o: TrainOptions,
  backend: "cuda" | "cpu" = o.device === "cpu" ? "cpu" : "cuda",
): number {
  return (hostBytes + (backend === "cpu" ? deviceBytes : 0)) * o.nprocPerNode;
}

/** Whether an estimate fits one GPU's budget and its node's host memory. */
function fitsBoth(e: MemoryEstimate, o: TrainOptions, gpuBytes: number, hostBytes: number) {
  return e.totalBytes <= gpuBytes && nodeHostBytes(e.hostBytes, e.totalBytes, o) <= hostBytes;
}

/**
 * The longest sequence (a multiple of `step`, at most `limit`) whose estimate fits in
 * `budgetBytes` per GPU (and the node's host memory `hostBudgetBytes`), or 0 when even `step`
 * tokens do not fit. Memory grows monotonically with length, so a binary search over multiples
 * of `step` finds it.
 */
export function longestFitting(
  cfg: ModelConfig,
  o: TrainOptions,
  world: number,
  budgetBytes: number,
  { step = 1024, limit = 16 * 2 ** 20, hostBudgetBytes = Infinity } = {},
): number {
  const unit = Math.max(step, new ParallelLayout(world, 0, o).sp);
  const fits = (n: number) =>
    fitsBoth(estimateMemory(cfg, o, world, n * unit), o, budgetBytes, hostBudgetBytes);
  if (!fits(1)) return 0;
  let lo = 1, hi = 2;
  while (hi * unit <= limit && fits(hi)) {
    lo = hi;
    hi *= 2;
  }
  hi = Math.min(hi, Math.floor(limit / unit) + 1);
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (fits(mid)) lo = mid;
    else hi = mid;
  }
  return lo * unit;
}

/**
 * Host memory the offloaded state may use: MemAvailable of /proc/meminfo (what can be allocated
 * without swapping), else the free memory Node.js reports.
 */
export function hostAvailableBytes(): number {
  try {
    const m = /^MemAvailable:\s+(\d+) kB/m.exec(Deno.readTextFileSync("/proc/meminfo"));
    if (m) return Number(m[1]) * 1024;
  } catch { /* not Linux */ }
  return freemem();
}

/** Host memory to plan the offloaded state of this node's ranks against. */
export interface HostBudget {
  bytes: number;
  source: string;
}

/** The report `distflash plan` prints (and `train` when a run does not fit). */
export function formatPlan(
  cfg: ModelConfig,
  o: TrainOptions,
  world: number,
  budgetBytes: number,
  budgetSource: string,
  host: HostBudget = { bytes: hostAvailableBytes(), source: "available on this host" },
  docLength?: number,
): { text: string; fits: boolean } {
  const e = estimateMemory(cfg, o, world);
  const hostText = Number.isFinite(host.bytes)
    ? `${formatBytes(host.bytes)} (${host.source})`
    : host.source;
  const lines = [
    `planned for: GPU memory ${formatBytes(budgetBytes)} (${budgetSource}); host memory of a ` +
    `node: ${hostText}`,
    `memory per GPU for ${o.model}, ${o.perDeviceTrainBatchSize} x ${o.modelMaxLength} tokens, ` +
    `${world} rank(s) (sp ${e.sp}), ${
      e.fullShard
        ? "full_shard"
        : o.offloadOptimizer
        ? "sharded over this rank (offload)"
        : "no_shard"
    }, ` +
    `${o.bf16 ? "bf16" : "fp32"}:`,
  ];
  for (const k of e.kinds) {
    lines.push(`  ${k.kind.padEnd(38)} ${formatBytes(k.bytes).padStart(10)}`);
  }
  const gpuFits = e.totalBytes <= budgetBytes;
  lines.push(
    `  ${"total".padEnd(38)} ${formatBytes(e.totalBytes).padStart(10)} of ${
      formatBytes(budgetBytes)
    }: ${gpuFits ? "fits" : "does NOT fit"}`,
  );
  // Every rank of a node offloads into the same host memory.
  const node = nodeHostBytes(e.hostBytes, e.totalBytes, o);
  const hostFits = node <= host.bytes;
  if (node > 0) {
    const what = o.device === "cpu"
      ? "host memory (--device cpu: the device plan and offloaded state)"
      : "host memory for offloaded state";
    lines.push(
      `${what}: ${formatBytes(node / o.nprocPerNode)} per rank, ` +
        `${formatBytes(node)} for the ${o.nprocPerNode} rank(s) of a node, ` + (
          Number.isFinite(host.bytes)
            ? `of ${formatBytes(host.bytes)} (${host.source}): ${
              hostFits ? "fits" : "does NOT fit"
            }`
            : host.source
        ),
    );
  }
  lines.push(...windowWorkLines(cfg, o, world));
  lines.push(...documentWorkLines(cfg, o, world, docLength));
  const fits = gpuFits && hostFits;
  const longest = longestFitting(cfg, o, world, budgetBytes, { hostBudgetBytes: host.bytes });
  lines.push(
    longest > 0
      ? `longest --model-max-length that fits with these options: ${longest}`
      : "not even 1024 tokens fit with these options",
  );
  if (!hostFits) {
    lines.push(`to fit the host: ${hostHints(cfg, o, world, budgetBytes, host, longest)}`);
  }
  if (!gpuFits) {
    const hints: string[] = [];
    if (world === 1) hints.push("more GPUs (--nproc-per-node) with --fsdp full_shard");
    if (o.perDeviceTrainBatchSize > 1) hints.push("a smaller --per-device-train-batch-size");
    const saving = cheapestSaving(cfg, o, world, budgetBytes, host.bytes);
    if (saving) hints.push(saving.flags.join(" "));
    else if (!e.fullShard && world > 1) {
      hints.push("--fsdp full_shard (shards weights and optimizer state)");
    }
    if (longest > 0) hints.push(`--model-max-length ${longest} or less`);
    lines.push(`to make it fit: ${hints.join("; ") || "a larger GPU"}`);
  }
  return { text: lines.join("\n"), fits };
}

/** A set of memory-saving options to add to a run, with its flags and its speed cost. */
export interface Saving {
  change: Partial<TrainOptions>;
  flags: string[];
  /**
   * Ordinal estimate of the speed it costs (not measured; the order the advice always had):
   * sharding over the ranks 1 (its gathers overlap compute), the layer boundary 2 (backward
   * recomputes attention), G head groups 2 + log2(G) / 4 (strided copies per group), offloaded
   * checkpoints 3 (copies overlap), the native attention kernels instead of cuDNN's 3.5 (about
   * half cuDNN's rate, BENCHMARKS.md), the host AdamW 4 (a CPU update each step), offloaded
   * gradients 1 on top of it; a set costs the sum.
   */
  cost: number;
}

/**
 * Every combination of the memory-saving options this run does not already use (sharding on
 * several ranks, the layer boundary, head groups on sequence-parallel runs, the three offloads,
 * the native attention kernels where cuDNN's scratch is counted),
 * cheapest first (ties: fewer options first, then by their flags' spelling).
 */
export function memorySavings(cfg: ModelConfig, o: TrainOptions, world: number): Saving[] {
  type Part = { change: Partial<TrainOptions>; flags: string[]; cost: number };
  const none: Part = { change: {}, flags: [], cost: 0 };
  const layout = new ParallelLayout(world, 0, o);
  const dims: Part[][] = [];
  dims.push(
    world > 1 && !layout.fullShard
      ? [none, { change: { fsdp: "full_shard" }, flags: ["--fsdp full_shard"], cost: 1 }]
      : [none],
  );
  dims.push(
    o.checkpointBoundary === "layer" ? [none] : [none, {
      change: { checkpointBoundary: "layer" },
      flags: ["--checkpoint-boundary layer"],
      cost: 2,
    }],
  );
  const groups = layout.sp > 1
    ? [2, 4, 8, 16, 32].filter((g) => g > o.attentionHeadGroups && cfg.numKvHeads % g === 0)
    : [];
  dims.push([
    none,
    ...groups.map((g) => ({
      change: { attentionHeadGroups: g },
      flags: [`--attention-head-groups ${g}`],
      cost: 2 + Math.log2(g) / 4,
    })),
  ]);
  dims.push(
    o.offloadCheckpoints ? [none] : [none, {
      change: { offloadCheckpoints: true },
      flags: ["--offload-checkpoints"],
      cost: 3,
    }],
  );
  // The plan counts cuDNN's scratch on a GPU unless the kernel is native (estimateMemory).
  const cudnnCounted = o.device !== "cpu" && o.bf16 && o.attentionKernel !== "native";
  dims.push(
    cudnnCounted
      ? [none, {
        change: { attentionKernel: "native" },
        flags: ["--attention-kernel native"],
        cost: 3.5,
      }]
      : [none],
  );
  const offload: Part[] = [none];
  if (!o.offloadOptimizer) {
    offload.push({ change: { offloadOptimizer: true }, flags: ["--offload-optimizer"], cost: 4 });
  }
  if (!o.offloadGradients) {
    offload.push({
      change: { offloadOptimizer: true, offloadGradients: true },
      flags: ["--offload-gradients"],
      cost: (o.offloadOptimizer ? 0 : 4) + 1,
    });
  }
  dims.push(offload);
  let sets: Part[] = [none];
  for (const dim of dims) {
    sets = sets.flatMap((a) =>
      dim.map((b) => ({
        change: { ...a.change, ...b.change },
        flags: [...a.flags, ...b.flags],
        cost: a.cost + b.cost,
      }))
    );
  }
  const name = (p: Part) => p.flags.join(" ");
  return sets.filter((p) => p.flags.length > 0).sort((a, b) =>
    a.cost - b.cost || a.flags.length - b.flags.length || (name(a) < name(b) ? -1 : 1)
  );
}

/**
 * The cheapest combination of memory-saving options with which this very run fits `gpuBytes`
 * per GPU and `hostBytes` per node, or undefined when none does.
 */
export function cheapestSaving(
  cfg: ModelConfig,
  o: TrainOptions,
  world: number,
  gpuBytes: number,
  hostBytes: number,
): Saving | undefined {
  for (const saving of memorySavings(cfg, o, world)) {
    const changed = { ...o, ...saving.change };
    if (fitsBoth(estimateMemory(cfg, changed, world), changed, gpuBytes, hostBytes)) return saving;
  }
  return undefined;
}

/**
 * With a sliding window (Mistral v0.1; Qwen2's last layers) shorter than the training window: the
 * visible (query, key) pairs of a windowed layer against causal's, and on several sp ranks the
 * busiest rank's share over the mean (block pairs wholly outside the window are skipped, so their
 * work is not counted); when only some layers use the window, which ones.
 */
function windowWorkLines(cfg: ModelConfig, o: TrainOptions, world: number): string[] {
  const layout = new ParallelLayout(world, 0, o), L = o.modelMaxLength, W = cfg.slidingWindow ?? 0;
  const windowed = windowedLayers(cfg);
  if (W <= 0 || W >= L || windowed === 0 || L % layout.lengthUnit !== 0) return [];
  const work = attentionWorkPerRank(layout, L, [0], W);
  const fraction = work.reduce((a, b) => a + b, 0) / ((L * (L + 1)) / 2);
  const spread = layout.sp > 1
    ? `; busiest / mean over the ${layout.sp} sp ranks (${layout.sequence}): ${
      imbalance(work).toFixed(2)
    }`
    : "";
  const full = cfg.numLayers - windowed; // the first layers (windowFromLayer)
  const others = full === 0 ? "" : ` (the first ${full} layers attend causally)`;
  return [
    `attention work under the ${windowDescription(cfg)}${others}, share of causal's: ` +
    `${fraction.toFixed(3)}${spread}`,
  ];
}

/**
 * With --attention-mask document: the attention work of random-length documents (mean `docLength`,
 * plan's --doc-length; else a few means) against causal over the window, and on several sp ranks
 * the busiest rank's work over the mean (causal zigzag: 1.00); under zigzag both as the window
 * comes and with its documents reordered as training does (src/parallel/document_balance.ts),
 * each counted pair by pair (attentionWorkPerRank), averaged over the layers (a sliding window
 * counts on the layers that have it).
 */
function documentWorkLines(
  cfg: ModelConfig,
  o: TrainOptions,
  world: number,
  docLength?: number,
): string[] {
  const layout = new ParallelLayout(world, 0, o), L = o.modelMaxLength;
  if (o.attentionMask !== "document" || L % layout.lengthUnit !== 0) return [];
  // Per rank, the mean over the layers: the windowed layers' work under the window, the others'
  // causal (documents only).
  const windowed = windowedLayers(cfg), W = cfg.slidingWindow ?? 0;
  const layerMean = (starts: number[]) => {
    const plain = attentionWorkPerRank(layout, L, starts, 0);
    if (windowed === 0) return plain;
    const under = attentionWorkPerRank(layout, L, starts, W);
    return plain.map((p, r) =>
      (p * (cfg.numLayers - windowed) + under[r] * windowed) / cfg.numLayers
    );
  };
  const means = docLength ? [docLength] : [L / 64, L / 16, L / 4].filter((n) => n >= 1);
  const cases = means.map((mean) => {
    const starts = randomDocumentStarts(L, Math.round(mean));
    const work = layerMean(starts);
    const fraction = work.reduce((a, b) => a + b, 0) / ((L * (L + 1)) / 2);
    const balanced = layout.sequence === "zigzag" && layout.sp > 1
      ? imbalance(layerMean(balanceDocuments(starts, L, layout.sp).starts))
      : undefined;
    return { mean: Math.round(mean), fraction, imbalance: imbalance(work), balanced };
  });
  const lines = [
    `attention work with documents, share of causal's (random lengths): ${
      cases.map((c) => `${c.fraction.toFixed(3)} (documents of ~${c.mean} tokens)`).join(", ")
    }`,
  ];
  if (layout.sp > 1) {
    lines.push(
      `attention work per rank with documents, busiest / mean over the ${layout.sp} sp ranks ` +
        `(${layout.sequence}, random lengths): ${
          cases.map((c) =>
            `${
              c.balanced === undefined ? c.imbalance.toFixed(2) : `${c.balanced.toFixed(2)} ` +
                `with whole documents reordered (${c.imbalance.toFixed(2)} without)`
            } (documents of ~${c.mean} tokens)`
          ).join(", ")
        }`,
    );
  }
  return lines;
}

/**
 * What makes a run fit its node's host memory: dropping an offload whose state then fits the GPU
 * (the gradient offload first: it saves the least host memory), else the longest length that fits
 * with these options or with one offload dropped, whichever is longer.
 */
function hostHints(
  cfg: ModelConfig,
  o: TrainOptions,
  world: number,
  gpuBytes: number,
  host: HostBudget,
  longest: number,
): string {
  const drops: [Partial<TrainOptions>, string][] = [
    [{ offloadGradients: false }, "without --offload-gradients"],
    [{ offloadCheckpoints: false }, "without --offload-checkpoints"],
    [
      { offloadGradients: false, offloadOptimizer: false },
      "without --offload-optimizer (nor --offload-gradients)",
    ],
  ].filter(([change]) =>
    Object.entries(change).some(([k, v]) => o[k as keyof TrainOptions] !== v)
  ) as [Partial<TrainOptions>, string][];
  for (const [change, text] of drops) {
    const changed = { ...o, ...change };
    if (fitsBoth(estimateMemory(cfg, changed, world), changed, gpuBytes, host.bytes)) return text;
  }
  const fewer = o.nprocPerNode > 1 ? ", or fewer ranks per node" : "";
  let best = { length: longest, text: "" };
  for (const [change, text] of drops) {
    const length = longestFitting(cfg, { ...o, ...change }, world, gpuBytes, {
      hostBudgetBytes: host.bytes,
    });
    if (length > best.length) best = { length, text: ` ${text}` };
  }
  return best.length > 0
    ? `--model-max-length ${best.length} or less${best.text}${fewer}`
    : `no length fits this host's memory with these options${fewer}`;
}
