/**
 * `--config FILE`: training arguments kept in a JSON or YAML file, as Hugging Face users keep
 * theirs. Keys may be spelled as HF's TrainingArguments (snake_case: `learning_rate`), as
 * distflash's flags (`learning-rate`) or as its TrainOptions keys (`learningRate`); a key that is
 * none of these is an error naming it and the file. Values are not checked here: they go through
 * resolveTrainOptions with the command line's, so a file and a flag reject the same values (the
 * message names the key and the file). Flags on the command line override the file.
 *
 * training_args.json, which every run writes (src/train/state.ts), is such a file: `--config
 * <output-dir>/training_args.json` repeats the run.
 *
 * YAML is read by the npm package `yaml` (YAML 1.2, the format HF's example configs use).
 */
import { extname } from "node:path";
import { parse as parseYaml } from "npm:yaml@^2.8.0";
import type { TrainOptions } from "./options.ts";
import { TRAIN_SPECS } from "./option_table.ts";
import { OptionError } from "./resolve_options.ts";

/** Keys whose HF form is a list (TrainingArguments saves `fsdp` and `report_to` as lists). */
const LIST_JOINERS: Partial<Record<keyof TrainOptions, string>> = {
  fsdp: " ",
  reportTo: ",",
};

/** What a config file gives: the values by option key, and where each came from. */
export interface ConfigValues {
  /** Values by TrainOptions key, as written in the file (checked later, with the flags). */
  values: Partial<Record<keyof TrainOptions, unknown>>;
  /** For each key the file set: `<file>: <key as written>`, for error messages. */
  sources: Partial<Record<keyof TrainOptions, string>>;
}

/** `learning_rate`, `learning-rate` and `learningRate` all name the option learningRate. */
export function optionKey(written: string): string {
  return written.replace(/[-_]+([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/** Parses the text of a config file (JSON or YAML by the file's extension). */
export function parseConfigText(text: string, file: string): ConfigValues {
  const ext = extname(file).toLowerCase();
  let doc: unknown;
  try {
    doc = ext === ".json" ? JSON.parse(text) : parseYaml(text);
  } catch (error) {
    throw new OptionError(
      `--config ${file}: not valid ${ext === ".json" ? "JSON" : "YAML"}: ${
        (error as Error).message.split("\n")[0]
      }`,
    );
  }
  if (doc === null || doc === undefined) doc = {}; // an empty YAML file
  if (typeof doc !== "object" || Array.isArray(doc)) {
    throw new OptionError(`--config ${file}: expected a mapping of option names to values`);
  }
  const specs = new Map(TRAIN_SPECS.map((s) => [s.key as string, s]));
  const values: Record<string, unknown> = {};
  const sources: Record<string, string> = {};
  for (const [written, raw] of Object.entries(doc as Record<string, unknown>)) {
    const key = optionKey(written);
    const spec = specs.get(key);
    if (spec === undefined) {
      throw new OptionError(`--config ${file}: unknown key "${written}"`);
    }
    if (key in sources) {
      throw new OptionError(
        `--config ${file}: "${written}" and "${sources[key].split(": ").at(-1)}" name the same ` +
          "option: give one of the two",
      );
    }
    sources[key] = `${file}: ${written}`;
    let value = raw;
    if (Array.isArray(raw)) {
      const joiner = LIST_JOINERS[key as keyof TrainOptions];
      if (joiner === undefined || raw.some((v) => typeof v !== "string")) {
        throw new OptionError(`--config ${file}: "${written}" takes one value, not a list`);
      }
      value = raw.join(joiner);
    } else if (raw !== null && typeof raw === "object") {
      throw new OptionError(`--config ${file}: "${written}" takes one value, not a mapping`);
    } else if (spec.kind === "string" && raw === "") {
      value = null; // unset, as null: training_args.json writes `"fsdp": ""` for no sharding
    } else if (spec.kind === "string" && (typeof raw === "number" || typeof raw === "boolean")) {
      value = String(raw); // as the same word on the command line (HF files say `tf32: true`)
    }
    values[key] = value;
  }
  return { values, sources } as ConfigValues;
}

/** Reads a JSON (`.json`) or YAML (any other extension: `.yaml`, `.yml`) config file. */
export function readConfigFile(file: string): ConfigValues {
  let text: string;
  try {
    text = Deno.readTextFileSync(file);
  } catch (error) {
    throw new OptionError(`--config ${file}: cannot read it (${(error as Error).message})`);
  }
  return parseConfigText(text, file);
}

/**
 * The command line's options over the config file's (when `--config` was given): the input for
 * resolveTrainOptions, and the file's sources for its messages.
 */
export function withConfigFile(
  raw: Record<string, unknown>,
): { input: Record<string, unknown>; sources: Record<string, string> } {
  const { config, ...flags } = raw;
  if (config === undefined) return { input: flags, sources: {} };
  if (typeof config !== "string" || config === "") {
    throw new OptionError("--config: expected a file name");
  }
  const file = readConfigFile(config);
  const sources: Record<string, string> = {};
  for (const [key, source] of Object.entries(file.sources)) {
    if (flags[key] === undefined) sources[key] = source!;
  }
  return { input: { ...file.values, ...flags }, sources };
}
