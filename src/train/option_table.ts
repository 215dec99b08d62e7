/**
 * The option table: for each TrainOptions key its kind, help, range and choices, from which the CLI
 * registers its flags and resolve_options.ts checks a typed object (so both paths reject the same
 * bad values naming the flag); the Hugging Face aliases are rows of it. Also the flags' spelling:
 * camelCase keys as --kebab-case, and the paper's snake_case accepted.
 */
import type { TrainOptions } from "./options.ts";
import { ATTENTION_KERNEL_HELP, ATTENTION_KERNELS } from "../runtime/attention_kernel.ts";

const EVAL_STRATEGIES = ["no", "steps", "epoch"] as const;

/** How an option's value is read. */
export type Kind = "string" | "int" | "float" | "bool" | "choice";

/** One row of the option table. */
export interface Spec {
  key: keyof TrainOptions;
  kind: Kind;
  help: string;
  choices?: readonly string[];
  min?: number;
  max?: number;
  /** min is exclusive */
  positive?: boolean;
  /** accepted for compatibility, reported as having no effect */
  noEffect?: boolean;
}

/** One row per TrainOptions key: what the CLI registers and what resolution checks. */
export const TRAIN_SPECS: readonly Spec[] = [
  { key: "model", kind: "string", help: "preset name or Hugging Face model folder" },
  {
    key: "dataPath",
    kind: "string",
    help: "JSONL/JSON, Parquet, .npy token or .pkl file(s), or a folder of them",
  },
  { key: "synthetic", kind: "bool", help: "train on random tokens (throughput runs)" },
  { key: "textField", kind: "string", help: "text field of JSON/Parquet records" },
  { key: "outputDir", kind: "string", help: "where checkpoints and metrics.jsonl go" },
  { key: "numTrainEpochs", kind: "float", help: "passes over the data", positive: true },
  { key: "maxSteps", kind: "int", help: "optimizer steps (overrides epochs when > 0)", min: -1 },
  { key: "perDeviceTrainBatchSize", kind: "int", help: "sequences per micro-batch", min: 1 },
  { key: "gradientAccumulationSteps", kind: "int", help: "micro-batches per step", min: 1 },
  { key: "learningRate", kind: "float", help: "peak learning rate", min: 0 },
  { key: "weightDecay", kind: "float", help: "AdamW decoupled weight decay", min: 0 },
  { key: "warmupRatio", kind: "float", help: "fraction of steps warming up", min: 0, max: 1 },
  { key: "warmupSteps", kind: "int", help: "warmup steps (overrides the ratio)", min: 0 },
  {
    key: "lrSchedulerType",
    kind: "choice",
    help: "learning-rate schedule",
    choices: ["linear", "cosine", "constant", "constant_with_warmup"],
  },
  { key: "adamBeta1", kind: "float", help: "AdamW beta1", min: 0, max: 1 },
  { key: "adamBeta2", kind: "float", help: "AdamW beta2", min: 0, max: 1 },
  { key: "adamEpsilon", kind: "float", help: "AdamW epsilon", positive: true },
  { key: "maxGradNorm", kind: "float", help: "gradient clipping norm (0: off)", min: 0 },
  { key: "loggingSteps", kind: "int", help: "log every N steps", min: 1 },
  {
    key: "saveStrategy",
    kind: "choice",
    help: "when to save checkpoints",
    choices: ["steps", "epoch", "no"],
  },
  { key: "saveSteps", kind: "int", help: "save every N steps", min: 1 },
  { key: "saveTotalLimit", kind: "int", help: "keep at most N checkpoints (0: all)", min: 0 },
  {
    key: "saveFinalModel",
    kind: "bool",
    help: "write the final model to --output-dir at the end (false: throughput runs)",
  },
  { key: "modelMaxLength", kind: "int", help: "tokens per training sequence", min: 2 },
  { key: "bf16", kind: "bool", help: "bf16 compute (fp32 master weights)" },
  {
    key: "saveDtype",
    kind: "choice",
    help:
      "weights of the final model and checkpoints: fp32 (the master weights, as HF Trainer saves) or bf16 (half the size)",
    choices: ["fp32", "bf16"],
  },
  {
    key: "device",
    kind: "choice",
    help: "where to train",
    choices: ["auto", "cuda", "cpu"],
  },
  { key: "seed", kind: "int", help: "random seed (init and data order)", min: 0 },
  { key: "resumeFromCheckpoint", kind: "string", help: 'checkpoint folder, or "last"' },
  {
    key: "overwriteOutputDir",
    kind: "bool",
    help: "start over in an output folder holding an earlier run (deletes its checkpoints)",
  },
  {
    key: "gradientCheckpointing",
    kind: "bool",
    help: "rematerialisation-aware checkpointing (always on)",
  },
  { key: "fsdp", kind: "string", help: 'parameter sharding: "full_shard", "no_shard"' },
  { key: "nprocPerNode", kind: "int", help: "rank processes per node", min: 1 },
  { key: "nnodes", kind: "int", help: "nodes in the job", min: 1 },
  { key: "nodeRank", kind: "int", help: "this node's index", min: 0 },
  { key: "masterAddr", kind: "string", help: "rendezvous host (rank 0's node)" },
  {
    key: "masterPort",
    kind: "int",
    help: "rendezvous port (0: pick a free one)",
    min: 0,
    max: 65535,
  },
  { key: "spSize", kind: "int", help: "ranks per sequence (0: all ranks)", min: 0 },
  { key: "distattnBalanced", kind: "bool", help: "load-balanced DistAttn schedule" },
  { key: "distattnOverlap", kind: "bool", help: "overlap DistAttn communication with compute" },
  {
    key: "distattnLayout",
    kind: "choice",
    help: "sequence split: zigzag chunks on a ring, or the paper's contiguous slices (DistAttn)",
    choices: ["contiguous", "zigzag"],
  },
  {
    key: "attentionHeadGroups",
    kind: "int",
    help: "run sequence-parallel attention in G head groups: its buffers G x smaller (long runs)",
    min: 1,
  },
  {
    key: "attentionMask",
    kind: "choice",
    help:
      "causal over the whole window, or document: packed documents (split at BOS) do not see each other",
    choices: ["causal", "document"],
  },
  {
    key: "attentionKernel",
    kind: "choice",
    help: ATTENTION_KERNEL_HELP,
    choices: ATTENTION_KERNELS,
  },
  {
    key: "checkpointBoundary",
    kind: "choice",
    help: "recompute from the attention output (DistFlashAttention) or the layer input",
    choices: ["attention", "layer"],
  },
  { key: "vocabChunk", kind: "int", help: "vocabulary rows per LM-head chunk", min: 1 },
  {
    key: "mlpTile",
    kind: "int",
    help: "tokens per tile of everything but attention: norms, projections, MLP, LM head",
    min: 1,
  },
  {
    key: "offloadOptimizer",
    kind: "bool",
    help: "fp32 master weights and AdamW state in host memory, updated on the CPU",
  },
  {
    key: "offloadGradients",
    kind: "bool",
    help: "each unit's gradient to host memory as its backward ends (implies --offload-optimizer)",
  },
  {
    key: "offloadCheckpoints",
    kind: "bool",
    help: "each layer's saved activations in host memory between forward and backward",
  },
  { key: "tf32", kind: "string", help: "HF trainer flag; no effect", noEffect: true },
  { key: "lazyPreprocess", kind: "string", help: "HF trainer flag; no effect", noEffect: true },
  {
    key: "fsdpTransformerLayerClsToWrap",
    kind: "string",
    help: "HF trainer flag; no effect (every layer is a unit)",
    noEffect: true,
  },
  { key: "modelNameOrPath", kind: "string", help: "Hugging Face's name for --model" },
  { key: "evalDataPath", kind: "string", help: "validation data (formats of --data-path)" },
  {
    key: "validationSplitPercentage",
    kind: "float",
    help: "hold out this % of the training sequences for evaluation",
    min: 0,
    max: 50,
  },
  {
    key: "evaluationStrategy",
    kind: "choice",
    help: "when to evaluate (and always at the end when there is validation data)",
    choices: EVAL_STRATEGIES,
  },
  {
    key: "evalStrategy",
    kind: "choice",
    help: "same as --evaluation-strategy",
    choices: EVAL_STRATEGIES,
  },
  {
    key: "evalSteps",
    kind: "int",
    help: "evaluate every N steps (default: --logging-steps)",
    min: 1,
  },
  { key: "perDeviceEvalBatchSize", kind: "int", help: "sequences per evaluation batch", min: 1 },
  {
    key: "reportTo",
    kind: "string",
    help: "tracking: none, tensorboard or all (TensorBoard event files in <output-dir>/runs)",
  },
  {
    key: "peakTflops",
    kind: "float",
    help: "bf16 peak TFLOP/s per device for the logged MFU (default: known GPUs by name)",
    positive: true,
  },
];

/** camelCase -> --kebab-case */
export function flagName(key: string): string {
  return "--" + key.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase());
}

/** Rewrites the paper's snake_case flags (--learning_rate) to the documented kebab-case. */
export function normalizeFlags(argv: string[]): string[] {
  return argv.map((arg) => {
    if (!arg.startsWith("--")) return arg;
    const eq = arg.indexOf("=");
    const name = eq < 0 ? arg : arg.slice(0, eq);
    return name.replaceAll("_", "-") + (eq < 0 ? "" : arg.slice(eq));
  });
}
