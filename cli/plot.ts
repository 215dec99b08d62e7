/** `distflash plot <output-dir>`: an SVG of a run's curves (src/train/plot.ts). */
import type { Command } from "npm:commander@^14.0.0";
import { join } from "node:path";
import { plotRun, readRunRecords } from "../src/train/plot.ts";

export function registerPlot(program: Command): void {
  program
    .command("plot")
    .description(
      "draw a run's curves (loss and eval loss, learning rate, gradient norm, tokens/s, memory) " +
        "as an SVG",
    )
    .argument("<output-dir>", "the --output-dir of a run (its metrics.jsonl)")
    .option("--output <file>", "where the SVG goes (default: <output-dir>/curves.svg)")
    .action(async (dir: string, opts: { output?: string }) => {
      const svg = await plotRun(
        await readRunRecords(dir, (line) => console.error(`distflash plot: note: ${line}`)),
      );
      const path = opts.output ?? join(dir, "curves.svg");
      await Deno.writeTextFile(path, svg);
      console.log(`wrote ${path}`);
    });
}
