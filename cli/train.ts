/**
 * `distflash train`: flags registered from the one option table in src/train/option_table.ts. With
 * --nproc-per-node > 1 this process becomes the launcher: it starts one rank process per GPU (or
 * CPU rank) running the same command, shows rank 0's output and stops every rank if one fails.
 */
import type { Command } from "npm:commander@^14.0.0";
import { TRAIN_DEFAULTS } from "../src/train/options.ts";
import { flagName, TRAIN_SPECS } from "../src/train/option_table.ts";
import { resolveTrainOptions } from "../src/train/resolve_options.ts";
import { withConfigFile } from "../src/train/config_file.ts";
import { checkRun } from "../src/train/check_run.ts";
import { train, TrainingInterrupted } from "../src/train/trainer.ts";
import { openBackend } from "../src/runtime/info.ts";
import { isLaunchedRank, launch } from "../src/launch/launcher.ts";
import { COMM_FAILURE_EXIT_CODE, CommError } from "../src/comm/comm.ts";

/** The --config flag of `train` and `plan`. */
export const CONFIG_FLAG = "--config <file>";
/** Its help. */
export const CONFIG_HELP =
  "training arguments from a JSON or YAML file (HF TrainingArguments names, snake_case, or " +
  "these flags' names); flags given here override it; <output-dir>/training_args.json repeats a run";

export function registerTrain(program: Command, argv: string[]): void {
  const cmd = program
    .command("train")
    .description(
      "train a Llama model (flags follow Hugging Face TrainingArguments; the paper's snake_case " +
        "spellings such as --learning_rate are accepted too)",
    );
  cmd.option(CONFIG_FLAG, CONFIG_HELP);
  for (const spec of TRAIN_SPECS) {
    const flag = flagName(spec.key);
    const dflt = (TRAIN_DEFAULTS as Record<string, unknown>)[spec.key];
    const shown = dflt === undefined || dflt === "" ? "" : ` (default: ${dflt})`;
    const choices = spec.choices ? ` [${spec.choices.join("|")}]` : "";
    // Booleans take an optional value so both `--bf16` and the HF-style `--bf16 True` work.
    const syntax = spec.kind === "bool" ? `${flag} [bool]` : `${flag} <value>`;
    cmd.option(syntax, `${spec.help}${choices}${shown}`);
  }
  cmd.action(async (raw: Record<string, unknown>) => {
    // Validate everything before starting any process.
    const { input, sources } = withConfigFile(raw);
    const { options } = resolveTrainOptions(input, sources);
    if (options.nprocPerNode * options.nnodes > 1 && !isLaunchedRank()) {
      // What the ranks would refuse, refused before any of them starts.
      checkRankCount(options.nprocPerNode, options.device);
      const { resumeNotes } = await checkRun(
        options,
        options.nprocPerNode * options.nnodes,
        0,
        true,
      );
      for (const note of resumeNotes) console.error(`distflash: note: ${note}`);
      const result = await launch({
        nprocPerNode: options.nprocPerNode,
        nnodes: options.nnodes,
        nodeRank: options.nodeRank,
        masterAddr: options.masterAddr,
        masterPort: options.masterPort,
        args: argv,
        outputDir: options.outputDir,
      });
      if (result.code !== 0) Deno.exit(result.code);
      return;
    }
    try {
      await train(input);
    } catch (error) {
      if (error instanceof TrainingInterrupted) {
        console.error(`distflash: ${error.message}`);
        Deno.exit(error.exitCode);
      }
      if (error instanceof CommError) {
        console.error(`distflash: ${error.message}`);
        Deno.exit(COMM_FAILURE_EXIT_CODE); // tells the launcher this rank only noticed a peer's failure
      }
      throw error;
    }
  });
}

/**
 * Ranks per node: at most one per GPU; on the CPU backend at most 4 per core (more only slows
 * every rank down and exhausts memory).
 */
function checkRankCount(nproc: number, choice: "auto" | "cuda" | "cpu"): void {
  const device = openBackend(choice);
  try {
    if (device.backend === "cuda") {
      const gpus = device.deviceCount();
      if (nproc > gpus) {
        throw new Error(
          `--nproc-per-node ${nproc}: this node has ${gpus} usable GPU${gpus === 1 ? "" : "s"} ` +
            "(one rank per GPU; see CUDA_VISIBLE_DEVICES)",
        );
      }
    } else {
      const cores = navigator.hardwareConcurrency;
      if (nproc > 4 * cores) {
        throw new Error(
          `--nproc-per-node ${nproc}: CPU ranks are limited to 4 per core (${cores} cores: at ` +
            `most ${4 * cores})`,
        );
      }
    }
  } finally {
    device.close();
  }
}
