/**
 * What `distflash train` and `train()` in mod.ts take: the TrainOptions type, its value types and
 * the defaults. The flag of each option (its kind, range, help, the Hugging Face aliases) is in
 * option_table.ts, and the checks that turn input into TrainOptions are in resolve_options.ts.
 */
import type { AttentionKernel } from "../runtime/attention_kernel.ts";

/**
 * Learning-rate schedule, with the semantics of transformers' get_scheduler.
 */
export type LrSchedulerType = "linear" | "cosine" | "constant" | "constant_with_warmup";
/**
 * When checkpoints are saved: every saveSteps steps, at the end of every epoch, or only the final
 * model.
 */
export type SaveStrategy = "steps" | "epoch" | "no";
/** The dtype of saved weights. */
export type SaveDtype = "fp32" | "bf16";
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
  /**
   * The dtype of the weights in the final model and the checkpoints: "fp32" (default, the fp32
   * master weights, as HF Trainer saves a bf16 run's model) or "bf16" (half the size). Resuming
   * reads the master weights from the optimizer file either way.
   */
  saveDtype: SaveDtype;
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
  /** Attention kernels (default "auto"): see ATTENTION_KERNELS in runtime/attention_kernel.ts. */
  attentionKernel: AttentionKernel;
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
  saveDtype: "fp32",
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
  attentionKernel: "auto",
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
