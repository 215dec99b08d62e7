/**
 * `distflash train`: flags registered from the one option table in src/train/option_table.ts. With
 * --nproc-per-node > 1 this process becomes the launcher: it starts one rank process per GPU (or
 * CPU rank) running the same command, shows rank 0's output and stops every rank if one fails.
 */
import { type Command, Option } from "npm:commander@^14.0.0";
import { flagName, TRAIN_SPECS } from "../src/train/option_table.ts";
import {
  groupHeading,
  GROUPS,
  MEMORY_OPTIONS,
  OPTION_GROUP,
  shownDefault,
} from "../src/train/option_groups.ts";
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

/** The heading of --config and --help in the help of `train` and `plan`. */
const RUN_HEADING = "Run options:";

/** The two examples at the end of `train --help`. */
export const TRAIN_EXAMPLES = `
Examples:
  # fine-tune a Hugging Face folder on one GPU, evaluating on 2% of the data, with TensorBoard
  distflash train --model ./TinyLlama-1.1B --data-path data.jsonl --bf16 \\
    --model-max-length 16384 --validation-split-percentage 2 --evaluation-strategy steps \\
    --eval-steps 100 --report-to tensorboard --output-dir outputs/run1

  # Llama-2-7B on 8 GPUs: each 128K-token sequence split over them, parameters sharded
  distflash train --nproc-per-node 8 --fsdp full_shard --model ./Llama-2-7b-hf \\
    --data-path data.jsonl --bf16 --model-max-length 131072 --warmup-steps 20 \\
    --validation-split-percentage 2 --report-to tensorboard --output-dir outputs/run8
`;

/**
 * Registers --config and every flag of the option table on `cmd`, each under its group's heading
 * (src/train/option_groups.ts, the groups of README's flag table). With `memoryOnly` (plan), the
 * flags that do not change memory are still accepted, so a train command line plans as it is,
 * but left out of the help.
 */
export function addTrainFlags(cmd: Command, memoryOnly: boolean): void {
  cmd.addOption(new Option(CONFIG_FLAG, CONFIG_HELP).helpGroup(RUN_HEADING));
  cmd.addHelpOption(new Option("-h, --help", "display help for command").helpGroup(RUN_HEADING));
  // Registered group by group: commander shows the groups in the order they first appear.
  const ordered = GROUPS.flatMap(({ group }) =>
    TRAIN_SPECS.filter((spec) => OPTION_GROUP[spec.key] === group)
  );
  for (const spec of ordered) {
    const flag = flagName(spec.key);
    const dflt = shownDefault(spec);
    const choices = spec.choices ? ` [${spec.choices.join("|")}]` : "";
    // Booleans take an optional value so both `--bf16` and the HF-style `--bf16 True` work.
    const syntax = spec.kind === "bool" ? `${flag} [bool]` : `${flag} <value>`;
    const option = new Option(syntax, `${spec.help}${choices}${dflt ? ` (default: ${dflt})` : ""}`)
      .helpGroup(groupHeading(OPTION_GROUP[spec.key]));
    if (memoryOnly && !MEMORY_OPTIONS.has(spec.key)) option.hideHelp();
    cmd.addOption(option);
  }
}

export function registerTrain(program: Command, argv: string[]): void {
  const cmd = program
    .command("train")
    .description(
      "train a Llama model (flags follow Hugging Face TrainingArguments; the paper's snake_case " +
        "spellings such as --learning_rate are accepted too)",
    );
  addTrainFlags(cmd, false);
  cmd.addHelpText("after", TRAIN_EXAMPLES);
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
        portIsDefault: input.masterPort === undefined,
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
