/**
 * How the flags of `train` are presented: the group each option belongs to (the sections of
 * `train --help` and of README's flag table), its spelling in the Hugging Face tools it comes from
 * (TrainingArguments, run_clm, FastChat's train.py, torchrun), and which options change the memory
 * a run needs (the only ones `plan --help` shows). The records are keyed by every TrainOptions key,
 * so an option added to the table without a group does not type-check.
 */
import type { TrainOptions } from "./options.ts";
import { flagName, type Spec, TRAIN_SPECS } from "./option_table.ts";
import { TRAIN_DEFAULTS } from "./options.ts";

/** The sections of the flags. */
export type Group =
  | "model"
  | "data"
  | "parallelism"
  | "memory"
  | "optimisation"
  | "saving"
  | "reporting";

/** The groups in the order shown, with their headings. */
export const GROUPS: readonly { group: Group; title: string }[] = [
  { group: "model", title: "Model" },
  { group: "data", title: "Data" },
  { group: "parallelism", title: "Parallelism" },
  { group: "memory", title: "Memory" },
  { group: "optimisation", title: "Optimisation" },
  { group: "saving", title: "Saving" },
  { group: "reporting", title: "Reporting and evaluation" },
];

/** The group of every option. */
export const OPTION_GROUP: Record<keyof TrainOptions, Group> = {
  model: "model",
  modelNameOrPath: "model",
  device: "model",
  bf16: "model",
  attentionKernel: "model",
  tf32: "model",

  dataPath: "data",
  synthetic: "data",
  textField: "data",
  modelMaxLength: "data",
  attentionMask: "data",
  evalDataPath: "data",
  validationSplitPercentage: "data",
  lazyPreprocess: "data",

  nprocPerNode: "parallelism",
  nnodes: "parallelism",
  nodeRank: "parallelism",
  masterAddr: "parallelism",
  masterPort: "parallelism",
  spSize: "parallelism",
  fsdp: "parallelism",
  fsdpTransformerLayerClsToWrap: "parallelism",
  distattnLayout: "parallelism",
  distattnBalanced: "parallelism",
  distattnOverlap: "parallelism",

  gradientCheckpointing: "memory",
  checkpointBoundary: "memory",
  attentionHeadGroups: "memory",
  offloadOptimizer: "memory",
  offloadGradients: "memory",
  offloadCheckpoints: "memory",
  mlpTile: "memory",
  vocabChunk: "memory",

  numTrainEpochs: "optimisation",
  maxSteps: "optimisation",
  perDeviceTrainBatchSize: "optimisation",
  gradientAccumulationSteps: "optimisation",
  learningRate: "optimisation",
  lrSchedulerType: "optimisation",
  warmupRatio: "optimisation",
  warmupSteps: "optimisation",
  weightDecay: "optimisation",
  adamBeta1: "optimisation",
  adamBeta2: "optimisation",
  adamEpsilon: "optimisation",
  maxGradNorm: "optimisation",
  seed: "optimisation",

  outputDir: "saving",
  overwriteOutputDir: "saving",
  saveStrategy: "saving",
  saveSteps: "saving",
  saveTotalLimit: "saving",
  saveFinalModel: "saving",
  saveDtype: "saving",
  resumeFromCheckpoint: "saving",

  loggingSteps: "reporting",
  reportTo: "reporting",
  peakTflops: "reporting",
  evaluationStrategy: "reporting",
  evalStrategy: "reporting",
  evalSteps: "reporting",
  perDeviceEvalBatchSize: "reporting",
};

/**
 * The name of each option in the Hugging Face tool it comes from, where it has one; without a
 * note, a TrainingArguments field. Every flag is also accepted in snake_case (`--learning_rate`).
 */
export const HF_NAME: Partial<Record<keyof TrainOptions, string>> = {
  model: "model_name_or_path (run_clm, FastChat)",
  modelNameOrPath: "model_name_or_path (run_clm, FastChat)",
  bf16: "bf16",
  tf32: "tf32",
  dataPath: "data_path (FastChat)",
  modelMaxLength: "model_max_length (FastChat)",
  evalDataPath: "eval_data_path (FastChat)",
  validationSplitPercentage: "validation_split_percentage (run_clm)",
  lazyPreprocess: "lazy_preprocess (FastChat)",
  nprocPerNode: "nproc_per_node (torchrun)",
  nnodes: "nnodes (torchrun)",
  nodeRank: "node_rank (torchrun)",
  masterAddr: "master_addr (torchrun)",
  masterPort: "master_port (torchrun)",
  fsdp: "fsdp",
  fsdpTransformerLayerClsToWrap: "fsdp_transformer_layer_cls_to_wrap",
  gradientCheckpointing: "gradient_checkpointing",
  numTrainEpochs: "num_train_epochs",
  maxSteps: "max_steps",
  perDeviceTrainBatchSize: "per_device_train_batch_size",
  gradientAccumulationSteps: "gradient_accumulation_steps",
  learningRate: "learning_rate",
  lrSchedulerType: "lr_scheduler_type",
  warmupRatio: "warmup_ratio",
  warmupSteps: "warmup_steps",
  weightDecay: "weight_decay",
  adamBeta1: "adam_beta1",
  adamBeta2: "adam_beta2",
  adamEpsilon: "adam_epsilon",
  maxGradNorm: "max_grad_norm",
  seed: "seed",
  outputDir: "output_dir",
  overwriteOutputDir: "overwrite_output_dir",
  saveStrategy: "save_strategy",
  saveSteps: "save_steps",
  saveTotalLimit: "save_total_limit",
  resumeFromCheckpoint: "resume_from_checkpoint",
  loggingSteps: "logging_steps",
  reportTo: "report_to",
  evaluationStrategy: "evaluation_strategy",
  evalStrategy: "eval_strategy",
  evalSteps: "eval_steps",
  perDeviceEvalBatchSize: "per_device_eval_batch_size",
};

/**
 * The options that change a run's memory (what `plan` computes from): the model and sequence,
 * the batch, the dtype and device, the ranks and their layout, and every memory-saving option.
 */
export const MEMORY_OPTIONS: ReadonlySet<keyof TrainOptions> = new Set<keyof TrainOptions>([
  "model",
  "modelNameOrPath",
  "device",
  "bf16",
  "attentionKernel",
  "modelMaxLength",
  "attentionMask",
  "perDeviceTrainBatchSize",
  "nprocPerNode",
  "nnodes",
  "spSize",
  "fsdp",
  "distattnLayout",
  "distattnBalanced",
  "distattnOverlap",
  "checkpointBoundary",
  "attentionHeadGroups",
  "offloadOptimizer",
  "offloadGradients",
  "offloadCheckpoints",
  "mlpTile",
  "vocabChunk",
]);

/** The help heading of a group, as commander prints it. */
export function groupHeading(group: Group): string {
  return `${GROUPS.find((g) => g.group === group)!.title} options:`;
}

/** One line of the flag table: what README shows for an option. */
export interface FlagRow {
  group: Group;
  flag: string;
  hf: string;
  description: string;
}

/** The value shown as an option's default, or "" when it has none worth showing. */
export function shownDefault(spec: Spec): string {
  const dflt = (TRAIN_DEFAULTS as Record<string, unknown>)[spec.key];
  return dflt === undefined || dflt === "" ? "" : String(dflt);
}

/** The flag table's rows, in group order then table order. */
export function flagRows(): FlagRow[] {
  const rows: FlagRow[] = [];
  for (const { group } of GROUPS) {
    for (const spec of TRAIN_SPECS) {
      if (OPTION_GROUP[spec.key] !== group) continue;
      const choices = spec.choices ? ` [${spec.choices.join("|")}]` : "";
      const dflt = shownDefault(spec);
      rows.push({
        group,
        flag: flagName(spec.key),
        hf: HF_NAME[spec.key] ?? "",
        description: `${spec.help}${choices}${dflt ? ` (default: ${dflt})` : ""}`,
      });
    }
  }
  return rows;
}

/**
 * README's flag table as Markdown: one table per group. `deno run -A scripts/flag_table.ts` prints
 * it; tests/docs.test.ts checks README against the rows.
 */
export function flagTableMarkdown(): string {
  const out: string[] = [];
  const rows = flagRows();
  for (const { group, title } of GROUPS) {
    out.push(`### ${title}`, "", "| Flag | HF name | What it does |", "| --- | --- | --- |");
    for (const r of rows.filter((row) => row.group === group)) {
      const hf = r.hf === ""
        ? ""
        : r.hf.includes(" (")
        ? "`" + r.hf.replace(" (", "` (")
        : "`" + r.hf + "`";
      const desc = r.description.replaceAll("|", "\\|");
      out.push(`| \`${r.flag}\` | ${hf} | ${desc} |`);
    }
    out.push("");
  }
  return out.join("\n");
}
