/**
 * Pictures of a run: the curves of metrics.jsonl (loss with eval loss, learning rate, gradient
 * norm, tokens/s, memory) drawn by Vega-Lite and rendered to SVG headlessly by Vega.
 */
import * as vega from "npm:vega@^6.1.2";
import * as vl from "npm:vega-lite@^6.1.0";
import { join } from "node:path";
import { existsSync } from "node:fs";

/** A point of one curve. */
interface Point {
  step: number;
  value: number;
  series: string;
}

/** The panels, top to bottom: a title and the metrics.jsonl keys drawn in it. */
const PANELS: readonly { title: string; keys: readonly string[]; scale?: number }[] = [
  { title: "loss", keys: ["loss", "eval_loss"] },
  { title: "learning_rate", keys: ["learning_rate", "lr"] },
  { title: "grad_norm", keys: ["grad_norm"] },
  { title: "tokens/s", keys: ["tokens_per_s"] },
  { title: "memory (GiB)", keys: ["memory_bytes"], scale: 1 / 2 ** 30 },
];

/**
 * The logged records of a run folder: metrics.jsonl, else the log_history of the newest
 * trainer_state.json there. A last line cut short (no newline at its end and not JSON: a write
 * that a full disk or a kill interrupted) is skipped with a note through `note`; anything else
 * that is not JSON is an error naming the line.
 */
export async function readRunRecords(
  dir: string,
  note: (line: string) => void = () => {},
): Promise<Record<string, number>[]> {
  const metrics = join(dir, "metrics.jsonl");
  if (existsSync(metrics)) {
    const text = await Deno.readTextFile(metrics);
    const lines = text.split("\n");
    // The text after the last newline: "" when the file ends with one.
    const unfinished = lines.length - 1;
    const records: Record<string, number>[] = [];
    for (const [i, l] of lines.entries()) {
      if (l.trim() === "") continue;
      try {
        records.push(JSON.parse(l));
      } catch {
        if (i === unfinished) {
          note(
            `${metrics}:${i + 1}: the last line is cut short (its write was interrupted, e.g. ` +
              "by a full disk); skipped",
          );
          continue;
        }
        throw new Error(`${metrics}:${i + 1}: not JSON`);
      }
    }
    return records;
  }
  const state = join(dir, "trainer_state.json");
  if (existsSync(state)) return JSON.parse(await Deno.readTextFile(state)).log_history ?? [];
  throw new Error(`${dir}: no metrics.jsonl or trainer_state.json (is it a run's --output-dir?)`);
}

/** An SVG of the run's curves, one panel per metric present. */
export async function plotRun(records: readonly Record<string, number>[]): Promise<string> {
  const panels = [];
  for (const panel of PANELS) {
    const points: Point[] = [];
    for (const r of records) {
      for (const key of panel.keys) {
        const v = r[key];
        if (typeof v === "number" && Number.isFinite(v) && typeof r.step === "number") {
          points.push({ step: r.step, value: v * (panel.scale ?? 1), series: key });
        }
      }
    }
    if (points.length === 0) continue;
    panels.push({
      title: panel.title,
      width: 480,
      height: 140,
      data: { values: points },
      mark: { type: "line", point: points.length <= 60 },
      encoding: {
        x: { field: "step", type: "quantitative", title: "step" },
        y: { field: "value", type: "quantitative", title: panel.title, scale: { zero: false } },
        color: { field: "series", type: "nominal", title: null },
      },
      resolve: { scale: { color: "independent" } },
    });
  }
  if (panels.length === 0) throw new Error("no metrics to plot (no logged steps yet)");
  const spec = {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    vconcat: panels,
    resolve: { scale: { color: "independent" } },
  } as vl.TopLevelSpec;
  const view = new vega.View(vega.parse(vl.compile(spec).spec), { renderer: "none" });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}
