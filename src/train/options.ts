/**
 * The options of `distflash train` and of `train()` in mod.ts: one table that the CLI registers
 * its flags from and that validates a typed object, so both paths reject the same bad values with
 * an error naming the flag.
 */

/**
 * Learning-rate schedule, with the semantics of transformers' get_scheduler.
 */
export type LrSchedulerType = "linear" | "cosine" | "constant" | "constant_with_warmup";
/**
 * When checkpoints are saved: every saveSteps steps, at the end of every epoch, or only the final
 * model.
 */
export type SaveStrategy = "steps" | "epoch" | "no";
/**
 * The backend to train on; "auto" picks CUDA when a GPU is usable, else the CPU.
 */
export type DeviceChoice = "auto" | "cuda" | "cpu";

/** Everything `train` takes. Names are the camelCase of Hugging Face TrainingArguments. */
export interface TrainOptions {
  /** A preset name (llama-2-7b, debug-small, ...) or a Hugging Face model folder. */
  model: string;
  /** JSONL/JSON, Parquet, .npy token files, or a folder of them. */
  dataPath?: string;
  /** Random tokens instead of data (throughput runs). */
  synthetic: boolean;
  /** The text field of JSON/JSONL/Parquet records. */
  textField: string;
  /** Where checkpoints, metrics.jsonl and the final model are written. */
  outputDir: string;
  /** Passes over the data (may be fractional); used when maxSteps is not > 0. */
  numTrainEpochs: number;
  /** Optimizer steps to run; overrides numTrainEpochs when > 0. */
  maxSteps: number;
  /** Sequences per micro-batch; the sequence-parallel ranks of a group share them. */
  perDeviceTrainBatchSize: number;
  /** Micro-batches per optimizer step. */
  gradientAccumulationSteps: number;
  /** Peak learning rate (the schedule scales it). */
  learningRate: number;
  /** AdamW decoupled weight decay. */
  weightDecay: number;
  /** Fraction of the total steps spent warming up (rounded up to whole steps). */
  warmupRatio: number;
  /** Warmup steps; overrides warmupRatio when > 0. */
  warmupSteps: number;
  /**
   * Learning-rate schedule, as transformers' get_scheduler: "linear", "cosine", "constant" or
   * "constant_with_warmup".
   */
  lrSchedulerType: LrSchedulerType;
  /** AdamW beta1. */
  adamBeta1: number;
  /** AdamW beta2. */
  adamBeta2: number;
  /** AdamW epsilon. */
  adamEpsilon: number;
  /** Global gradient-norm clipping threshold; 0 disables clipping. */
  maxGradNorm: number;
  /** Log metrics (and append to metrics.jsonl) every this many steps. */
  loggingSteps: number;
  /** When to save checkpoints: "steps" (every saveSteps), "epoch", or "no" (final model only). */
  saveStrategy: SaveStrategy;
  /** Save a checkpoint every this many steps when saveStrategy is "steps". */
  saveSteps: number;
  /** Keep at most this many checkpoints (0: keep all). */
  saveTotalLimit: number;
  /** Write the final model (and trainer state) to outputDir when training ends. */
  saveFinalModel: boolean;
  /** Tokens per training sequence. */
  modelMaxLength: number;
  /** bf16 weights and activations (fp32 master weights and optimizer state). */
  bf16: boolean;
  /** Where to train: "auto" (CUDA when a GPU is usable, else the CPU), "cuda" or "cpu". */
  device: DeviceChoice;
  /** Random seed of the initialisation and the data order. */
  seed: number;
  /** A checkpoint folder to resume from, or "last" for the newest in outputDir. */
  resumeFromCheckpoint?: string;
  /** Start over in an output folder that holds an earlier run (its checkpoints are deleted). */
  overwriteOutputDir: boolean;
  /** Activation checkpointing; always on (see checkpointBoundary for where it cuts). */
  gradientCheckpointing: boolean;
  /** Parameter sharding over ranks: "full_shard" (ZeRO-3), "no_shard"; "" for none. */
  fsdp: string;
  /** Rank processes per node; more than 1 starts the launcher (one process per GPU or CPU rank). */
  nprocPerNode: number;
  /** Nodes in the job, this node's index, and the rendezvous address (torchrun's meanings). */
  nnodes: number;
  /** This node's index, below nnodes. */
  nodeRank: number;
  /** Host of the rendezvous store (rank 0's node). */
  masterAddr: string;
  /** Port of the rendezvous store (0: pick a free one). */
  masterPort: number;
  /** Ranks sharing one sequence (DistAttn); 0 means the whole world. dp = world / sp. */
  spSize: number;
  /** DistAttn's load-balanced schedule (off: the plain causal ring, for comparison). */
  distattnBalanced: boolean;
  /** Overlap DistAttn's communication with compute (off: for comparison). */
  distattnOverlap: boolean;
  /**
   * How a sequence is split over its sp ranks: "contiguous" (the paper's slices, with its
   * load-balanced schedule) or "zigzag" (chunks r and 2P-1-r on a ring: balanced for any P).
   */
  distattnLayout: "contiguous" | "zigzag";
  /** Sequence-parallel attention runs in this many head groups (its buffers that many times smaller). */
  attentionHeadGroups: number;
  /**
   * "causal" (default): every token attends to every earlier token of its window. "document":
   * packed documents do not see each other (a document begins at every BOS of the model's
   * bos_token_id and at each window's start), RoPE positions restart per document, and the
   * prediction of a document's first token from the previous document is not trained on.
   */
  attentionMask: "causal" | "document";
  /** Attention kernels: "auto" (cuDNN where it loads and takes the shape), "native" or "cudnn". */
  attentionKernel: "auto" | "native" | "cudnn";
  /** "attention" (rematerialisation-aware, default) or "layer" (classic, for comparison). */
  checkpointBoundary: "attention" | "layer";
  /** Vocabulary rows per LM-head chunk. */
  vocabChunk: number;
  /** Tokens per tile of the MLP and the LM head: their scratch holds one tile. */
  mlpTile: number;
  /** fp32 master weights and AdamW moments in host memory, updated on the CPU (implies full_shard). */
  offloadOptimizer: boolean;
  /**
   * Each unit's gradient goes to host memory as soon as its backward produces it; the device keeps
   * no gradient shard (implies offloadOptimizer).
   */
  offloadGradients: boolean;
  /** Each layer's saved tensors in host memory between its forward and its backward. */
  offloadCheckpoints: boolean;
  /** Flags of the Hugging Face trainer that have no effect here (reported once). */
  tf32?: string;
  /** Hugging Face trainer flag; accepted and reported as having no effect. */
  lazyPreprocess?: string;
  /** Hugging Face trainer flag; no effect (every layer is a unit). */
  fsdpTransformerLayerClsToWrap?: string;
  // Evaluation, tracking and the Hugging Face spellings of the paper's command (src/train/eval.ts,
  // src/train/tensorboard.ts).
  /** Hugging Face's name for `model`; give one of the two. */
  modelNameOrPath?: string;
  /** Validation data, in the formats of dataPath. */
  evalDataPath?: string;
  /** Hold out this share (percent) of the training windows for evaluation when no evalDataPath. */
  validationSplitPercentage: number;
  /** When to evaluate: "no", every evalSteps ("steps"), or at each epoch's end; always at the end when there is validation data. */
  evaluationStrategy: EvalStrategy;
  /** Hugging Face's newer name for evaluationStrategy. */
  evalStrategy?: EvalStrategy;
  /** Evaluate every this many steps under the "steps" strategy (default: loggingSteps). */
  evalSteps?: number;
  /** Sequences per evaluation micro-batch (at most perDeviceTrainBatchSize run at once). */
  perDeviceEvalBatchSize: number;
  /** Experiment tracking: "none", "tensorboard" or "all" (TensorBoard is the one integration). */
  reportTo: string;
  /** Dense bf16 peak TFLOP/s of one device, for `mfu` (default: the GPU's by name; CPU: none). */
  peakTflops?: number;
}

/** When evaluation runs, as Hugging Face's eval_strategy. */
export type EvalStrategy = "no" | "steps" | "epoch";

const EVAL_STRATEGIES = ["no", "steps", "epoch"] as const;

type Kind = "string" | "int" | "float" | "bool" | "choice";

interface Spec {
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

/** The value of every option except `model` when it is not given. */
export const TRAIN_DEFAULTS: Omit<TrainOptions, "model"> = {
  synthetic: false,
  textField: "text",
  outputDir: "outputs",
  numTrainEpochs: 3,
  maxSteps: -1,
  perDeviceTrainBatchSize: 1,
  gradientAccumulationSteps: 1,
  learningRate: 5e-5,
  weightDecay: 0,
  warmupRatio: 0,
  warmupSteps: 0,
  lrSchedulerType: "linear",
  adamBeta1: 0.9,
  adamBeta2: 0.999,
  adamEpsilon: 1e-8,
  maxGradNorm: 1,
  loggingSteps: 10,
  saveStrategy: "steps",
  saveSteps: 500,
  saveTotalLimit: 0,
  saveFinalModel: true,
  modelMaxLength: 2048,
  bf16: false,
  device: "auto",
  seed: 42,
  overwriteOutputDir: false,
  gradientCheckpointing: true,
  fsdp: "",
  nprocPerNode: 1,
  nnodes: 1,
  nodeRank: 0,
  masterAddr: "127.0.0.1",
  masterPort: 29500,
  spSize: 0,
  distattnBalanced: true,
  distattnOverlap: true,
  distattnLayout: "zigzag",
  attentionHeadGroups: 1,
  attentionMask: "causal",
  attentionKernel: "native",
  checkpointBoundary: "attention",
  vocabChunk: 4096,
  mlpTile: 4096,
  offloadOptimizer: false,
  offloadGradients: false,
  offloadCheckpoints: false,
  validationSplitPercentage: 0,
  evaluationStrategy: "no",
  perDeviceEvalBatchSize: 8,
  reportTo: "none",
};

export const TRAIN_SPECS: readonly Spec[] = [
  { key: "model", kind: "string", help: "preset name or Hugging Face model folder" },
  { key: "dataPath", kind: "string", help: "JSONL/JSON, Parquet or .npy token file(s)" },
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
    help: "attention kernels: cuDNN where it loads and takes the shape (auto), native, or cudnn",
    choices: ["auto", "native", "cudnn"],
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

/** Integrations `--report-to` names that this trainer has; others are noted and ignored. */
const REPORT_TARGETS = ["none", "tensorboard", "all"];

/**
 * Checks the evaluation and tracking options and resolves their aliases (model_name_or_path,
 * eval_strategy) in place; returns a note for each accepted name that has no effect.
 */
function resolveHfOptions(
  options: TrainOptions,
  input: Partial<Record<keyof TrainOptions, unknown>>,
): string[] {
  const notes: string[] = [];
  if (options.modelNameOrPath) {
    if (input.model !== undefined && input.model !== options.modelNameOrPath) {
      throw new OptionError(
        "--model and --model-name-or-path name different models: give one of the two",
      );
    }
    options.model = options.modelNameOrPath;
  }
  if (options.evalStrategy) {
    if (
      input.evaluationStrategy !== undefined && input.evaluationStrategy !== options.evalStrategy
    ) {
      throw new OptionError(
        "--eval-strategy and --evaluation-strategy differ: give one of the two",
      );
    }
    options.evaluationStrategy = options.evalStrategy;
  }
  if (options.evalDataPath && options.validationSplitPercentage > 0) {
    throw new OptionError(
      "--eval-data-path and --validation-split-percentage exclude each other: choose one",
    );
  }
  const hasEvalData = !!options.evalDataPath || options.validationSplitPercentage > 0;
  if (options.evaluationStrategy !== "no" && !hasEvalData) {
    throw new OptionError(
      `--evaluation-strategy ${options.evaluationStrategy} needs validation data: ` +
        "--eval-data-path or --validation-split-percentage",
    );
  }
  if (options.evalDataPath && options.synthetic) {
    throw new OptionError("--eval-data-path needs real training data, not --synthetic");
  }
  const words = options.reportTo.split(/[\s,]+/).filter((w) => w !== "");
  for (const w of words) {
    if (!REPORT_TARGETS.includes(w)) {
      notes.push(`--report-to ${w}: not available here (only tensorboard); ignored`);
    }
  }
  return notes;
}

/** True when TensorBoard event files are to be written. */
export function reportsToTensorBoard(options: TrainOptions): boolean {
  const words = options.reportTo.split(/[\s,]+/);
  return words.includes("tensorboard") || words.includes("all");
}

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

/** A flag value that is wrong, with the flag's name in the message. */
export class OptionError extends Error {
  /** Creates the error; `message` says what is wrong and names the flag. */
  constructor(message: string) {
    super(message);
    this.name = "OptionError";
  }
}

function parseBool(flag: string, v: unknown): boolean {
  if (typeof v === "boolean") return v;
  const s = String(v).toLowerCase();
  if (["true", "1", "yes"].includes(s)) return true;
  if (["false", "0", "no"].includes(s)) return false;
  throw new OptionError(`${flag}: expected true or false, got ${JSON.stringify(v)}`);
}

/**
 * Fills defaults and checks every option; strings from the command line are converted. Throws an
 * OptionError naming the flag and the allowed values. Returns the options and a note for each
 * accepted flag that has no effect.
 */
export function resolveTrainOptions(
  input: Partial<Record<keyof TrainOptions, unknown>>,
): { options: TrainOptions; noEffect: string[] } {
  const known = new Set(TRAIN_SPECS.map((s) => s.key as string));
  for (const key of Object.keys(input)) {
    if (!known.has(key)) throw new OptionError(`unknown option ${flagName(key)} (${key})`);
  }
  const out: Record<string, unknown> = { ...TRAIN_DEFAULTS };
  const noEffect: string[] = [];
  for (const spec of TRAIN_SPECS) {
    const raw = input[spec.key];
    if (raw === undefined || raw === null) continue;
    const flag = flagName(spec.key);
    let value: unknown = raw;
    switch (spec.kind) {
      case "bool":
        value = parseBool(flag, raw);
        break;
      case "int":
      case "float": {
        const n = typeof raw === "number" ? raw : Number(String(raw).trim());
        if (String(raw).trim() === "" || !Number.isFinite(n)) {
          throw new OptionError(`${flag}: expected a number, got ${JSON.stringify(raw)}`);
        }
        if (spec.kind === "int" && !Number.isInteger(n)) {
          throw new OptionError(`${flag}: expected an integer, got ${JSON.stringify(raw)}`);
        }
        if (spec.positive && !(n > 0)) throw new OptionError(`${flag}: must be > 0, got ${n}`);
        if (spec.min !== undefined && n < spec.min) {
          throw new OptionError(`${flag}: must be >= ${spec.min}, got ${n}`);
        }
        if (spec.max !== undefined && n > spec.max) {
          throw new OptionError(`${flag}: must be <= ${spec.max}, got ${n}`);
        }
        value = n;
        break;
      }
      case "choice":
        if (!spec.choices!.includes(String(raw))) {
          throw new OptionError(
            `${flag}: ${JSON.stringify(raw)} is not one of ${spec.choices!.join(", ")}`,
          );
        }
        value = String(raw);
        break;
      case "string":
        if (typeof raw !== "string" || raw === "") {
          throw new OptionError(`${flag}: expected a non-empty string`);
        }
        break;
    }
    if (spec.noEffect) noEffect.push(`${flag} is accepted for compatibility and has no effect`);
    out[spec.key] = value;
  }
  const options = out as unknown as TrainOptions;
  noEffect.push(...resolveHfOptions(options, input));
  if (!options.model) {
    throw new OptionError(
      "--model (or --model-name-or-path) is required (a preset name or a folder)",
    );
  }
  if (options.synthetic && options.dataPath) {
    throw new OptionError("--synthetic and --data-path exclude each other: choose one");
  }
  if (!options.synthetic && !options.dataPath) {
    throw new OptionError("--data-path is required (or --synthetic for random tokens)");
  }
  const fsdp = options.fsdp.trim().split(/\s+/).filter((w) => w !== "");
  const fsdpWords = ["full_shard", "no_shard", "auto_wrap", "shard_grad_op", "offload"];
  for (const w of fsdp) {
    if (!fsdpWords.includes(w)) {
      throw new OptionError(
        `--fsdp: unknown word ${JSON.stringify(w)} (use ${fsdpWords.join(", ")})`,
      );
    }
  }
  if (options.distattnLayout === "zigzag") {
    // The schedule flags belong to the contiguous layout's DistAttn; the ring needs neither.
    for (const key of ["distattnBalanced", "distattnOverlap"] as const) {
      if (input[key] !== undefined && input[key] !== null) {
        noEffect.push(`${flagName(key)} applies to --distattn-layout contiguous: no effect here`);
      }
    }
  }
  if (options.offloadGradients) {
    if (input.offloadOptimizer !== undefined && !options.offloadOptimizer) {
      throw new OptionError(
        "--offload-gradients needs the host AdamW of --offload-optimizer: drop --offload-optimizer false",
      );
    }
    options.offloadOptimizer = true; // the host AdamW consumes the offloaded gradients
  }
  if (options.nodeRank >= options.nnodes) {
    throw new OptionError(
      `--node-rank ${options.nodeRank} must be below --nnodes ${options.nnodes}`,
    );
  }
  return { options, noEffect };
}
