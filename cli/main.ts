/**
 * The distflash command line. Subcommands live one per file in cli/.
 *
 * Built on the npm package commander: JSR packages (cliffy, @std/cli) cannot be installed on the
 * machines this project is developed on.
 */
import { Command, CommanderError } from "npm:commander@^14.0.0";
import { VERSION } from "../src/runtime/info.ts";
import { registerInfo } from "./info.ts";
import { registerDemo } from "./demo.ts";
import { registerTrain } from "./train.ts";
import { registerBench } from "./bench.ts";
import { registerPlan } from "./plan.ts";
import { registerTokenize } from "./tokenize.ts";
import { registerPlot } from "./plot.ts";
import { registerPresets } from "./presets.ts";
import { normalizeFlags } from "../src/train/option_table.ts";
import { MASTER_PORT_TAKEN_EXIT_CODE, MasterPortTakenError } from "../src/comm/comm.ts";

export function buildProgram(argv: string[] = []): Command {
  const program = new Command()
    .name("distflash")
    .description(
      "long-context Llama training with DistFlashAttention (sequence-parallel attention)",
    )
    .version(VERSION, "-V, --version")
    .showHelpAfterError("(run `distflash --help` for usage)")
    .exitOverride();
  registerInfo(program);
  registerDemo(program);
  registerTrain(program, argv);
  registerBench(program, argv);
  registerPlan(program);
  registerTokenize(program);
  registerPlot(program);
  registerPresets(program);
  return program;
}

export async function main(argv: string[]): Promise<number> {
  try {
    const args = normalizeFlags(argv);
    await buildProgram(args).parseAsync(args, { from: "user" });
    return 0;
  } catch (error) {
    if (error instanceof CommanderError) return error.exitCode; // commander printed the message
    console.error(`distflash: ${(error as Error).message}`);
    // Tells the launcher that another process holds the port it chose: it retries on another one.
    return error instanceof MasterPortTakenError ? MASTER_PORT_TAKEN_EXIT_CODE : 1;
  }
}

/**
 * `deno task` runs its command in the repository, not where the user stands: the tasks pass the
 * caller's folder (deno task's INIT_CWD) as DISTFLASH_CWD, and the command moves there before
 * anything reads a path, so relative --data-path, --output-dir and --model mean what they say.
 * Every file distflash itself needs is found from its own location (import.meta.url), never the
 * working folder. Rank processes inherit both the folder and the variable.
 */
export function enterCallerFolder(env: Record<string, string | undefined>): void {
  const folder = env.DISTFLASH_CWD;
  if (!folder) return;
  try {
    Deno.chdir(folder);
  } catch (error) {
    throw new Error(`DISTFLASH_CWD=${folder}: cannot work there (${(error as Error).message})`);
  }
}

if (import.meta.main) {
  try {
    enterCallerFolder(Deno.env.toObject());
  } catch (error) {
    console.error(`distflash: ${(error as Error).message}`);
    Deno.exit(1);
  }
  Deno.exit(await main(Deno.args));
}
