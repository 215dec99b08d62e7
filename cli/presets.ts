/** `distflash presets`: the model sizes `--model` accepts by name, with their shapes. */
import type { Command } from "npm:commander@^14.0.0";
import { PRESETS } from "../src/model/presets.ts";
import { paramCount } from "../src/model/config.ts";
import { familyOf } from "../src/model/families/mod.ts";

/** A parameter count as people say it: 6.74B, 1.10B, 5.0M, 120K. */
export function formatParams(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  return `${(n / 1e3).toFixed(0)}K`;
}

/** One row per preset: name, parameters and shape. */
export function presetRows(): Record<string, string | number>[] {
  return Object.entries(PRESETS).map(([name, c]) => ({
    name,
    family: familyOf(c).modelType,
    slidingWindow: c.slidingWindow ?? 0,
    parameters: paramCount(c),
    layers: c.numLayers,
    hidden: c.hiddenSize,
    intermediate: c.intermediateSize,
    heads: c.numHeads,
    kvHeads: c.numKvHeads,
    headDim: c.headDim,
    vocab: c.vocabSize,
    maxPositions: c.maxPositionEmbeddings,
  }));
}

/** The presets as an aligned table. */
export function formatPresets(): string {
  const head = [
    "preset",
    "family",
    "params",
    "layers",
    "hidden",
    "mlp",
    "heads",
    "kv heads",
    "head dim",
    "vocab",
    "max positions",
    "window",
  ];
  const rows = presetRows().map((r) => [
    String(r.name),
    String(r.family),
    `${formatParams(r.parameters as number)} (${r.parameters})`,
    ...[r.layers, r.hidden, r.intermediate, r.heads, r.kvHeads, r.headDim, r.vocab, r.maxPositions]
      .map(String),
    r.slidingWindow ? String(r.slidingWindow) : "-",
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i])).join("  ");
  return [
    line(head),
    ...rows.map(line),
    "",
    "family: config.json's model_type; window: the sliding window (-: none). Random initialisation",
    "(normal(0, 0.02)); `distflash plan --model <preset> ...` gives the memory",
  ].join("\n");
}

export function registerPresets(program: Command): void {
  program
    .command("presets")
    .description("list the model presets --model accepts, with parameter counts and shapes")
    .option("--json", "print one JSON array instead of a table")
    .action((options: { json?: boolean }) => {
      console.log(options.json ? JSON.stringify(presetRows(), null, 2) : formatPresets());
    });
}
