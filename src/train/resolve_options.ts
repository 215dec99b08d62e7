/**
 * Resolving `train` options: fills the defaults and checks every value against the option table,
 * resolves the Hugging Face aliases, and holds the rules that tie options together; every error is
 * an OptionError naming the flag. Also what `--report-to` asks for.
 */
import { TRAIN_DEFAULTS, type TrainOptions } from "./options.ts";
import { flagName, type Spec, TRAIN_SPECS } from "./option_table.ts";

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
 * OptionError naming the flag and the allowed values (and, for a value from a config file, where
 * it was written: `sources` maps such keys to `<file>: <key>`). Returns the options and a note for
 * each accepted flag that has no effect.
 */
export function resolveTrainOptions(
  input: Partial<Record<keyof TrainOptions, unknown>>,
  sources: Partial<Record<string, string>> = {},
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
    let value: unknown;
    try {
      value = checkValue(spec, flag, raw);
    } catch (error) {
      const source = sources[spec.key];
      if (!(error instanceof OptionError) || source === undefined) throw error;
      throw new OptionError(`${error.message} (${source})`);
    }
    if (spec.noEffect) noEffect.push(`${flag} is accepted for compatibility and has no effect`);
    out[spec.key] = value;
  }
  return finish(out, input, noEffect);
}

/** One value checked against its row of the option table; returns it converted. */
function checkValue(spec: Spec, flag: string, raw: unknown): unknown {
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
      if (spec.kind === "int" && !Number.isSafeInteger(n)) {
        // Rounded already, and trainer_state.json could not record it exactly: a --seed
        // beyond it would make every checkpoint of the run refuse to resume.
        throw new OptionError(
          `${flag}: ${String(raw).trim()} is beyond 2^53-1 (${Number.MAX_SAFE_INTEGER}), the ` +
            "largest integer kept exactly (checkpoints record it in JSON); choose a smaller one",
        );
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
  return value;
}

/** The rules that tie options together, on the checked values. */
function finish(
  out: Record<string, unknown>,
  input: Partial<Record<keyof TrainOptions, unknown>>,
  noEffect: string[],
): { options: TrainOptions; noEffect: string[] } {
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
