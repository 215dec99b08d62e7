/** `distflash train`: flags registered from the one option table in src/train/options.ts. */
import type { Command } from "commander";
import { flagName, TRAIN_DEFAULTS, TRAIN_SPECS } from "../src/train/options.ts";
import { train } from "../src/train/trainer.ts";

export function registerTrain(program: Command): void {
  const cmd = program
    .command("train")
    .description(
      "train a Llama model (flags follow Hugging Face TrainingArguments; the paper's snake_case " +
        "spellings such as --learning_rate are accepted too)",
    );
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
    await train(raw);
  });
}
