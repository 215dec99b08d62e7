/**
 * Where a run's numbers go on rank 0: metrics.jsonl (one JSON object per logged step or
 * evaluation), TensorBoard event files in `<output-dir>/runs/` (--report-to tensorboard|all),
 * and at the end, on a terminal, a small text chart of the loss.
 */
import asciichart from "npm:asciichart@^1.5.25";
import { join } from "node:path";
import { appendWhole } from "../io/files.ts";
import type { EvalMetrics } from "./eval.ts";
import type { StepMetrics } from "./metrics.ts";
import { TensorBoardWriter } from "./tensorboard.ts";

/** metrics.jsonl, TensorBoard and the closing chart of one run (a no-op on ranks other than 0). */
export class RunReport {
  readonly #metricsPath: string;
  readonly #losses: number[] = [];
  #closed = false;

  private constructor(
    readonly outputDir: string,
    readonly active: boolean,
    readonly tensorboard: TensorBoardWriter | null,
  ) {
    this.#metricsPath = join(outputDir, "metrics.jsonl");
  }

  /**
   * @param fresh start metrics.jsonl empty (a resumed run appends)
   * @param tensorboard write TensorBoard events to `<outputDir>/runs/`
   */
  static async open(
    outputDir: string,
    opts: { active: boolean; fresh: boolean; tensorboard: boolean },
  ): Promise<RunReport> {
    if (!opts.active) return new RunReport(outputDir, false, null);
    const path = join(outputDir, "metrics.jsonl");
    if (opts.fresh) await Deno.writeTextFile(path, "");
    const tb = opts.tensorboard ? await TensorBoardWriter.open(join(outputDir, "runs")) : null;
    return new RunReport(outputDir, true, tb);
  }

  async #append(record: object): Promise<void> {
    // Whole lines only: a failed append (a full disk) leaves the file as it was.
    await appendWhole(this.#metricsPath, JSON.stringify(record) + "\n");
  }

  /** A logged training step. */
  async step(m: StepMetrics): Promise<void> {
    if (!this.active) return;
    this.#losses.push(m.loss);
    await this.#append(m);
    // TensorBoard tags as transformers' TensorBoardCallback names them ("train/...").
    await this.tensorboard?.scalars(m.step, {
      "train/loss": m.loss,
      "train/learning_rate": m.learning_rate,
      "train/grad_norm": m.grad_norm,
      "train/tokens_per_s": m.tokens_per_s,
      ...(m.mfu === undefined ? {} : { "train/mfu": m.mfu }),
      "train/memory_bytes": m.memory_bytes,
      "train/epoch": m.epoch,
    });
  }

  /** An evaluation. */
  async eval(e: EvalMetrics): Promise<void> {
    if (!this.active) return;
    await this.#append(e);
    await this.tensorboard?.scalars(e.step, {
      "eval/loss": e.eval_loss,
      "eval/perplexity": e.perplexity,
    });
  }

  /**
   * Closes the event file; on a terminal, returns a text chart of this run's logged losses. A
   * second call (the run's teardown after the loop closed it) does nothing and returns null.
   */
  close(): string | null {
    if (this.#closed) return null;
    this.#closed = true;
    this.tensorboard?.close();
    if (!this.active || this.#losses.length < 2 || !Deno.stderr.isTerminal()) return null;
    return lossChart(this.#losses);
  }
}

/** A text chart of a loss curve, at most `width` columns (longer curves are subsampled). */
export function lossChart(losses: readonly number[], width = 60, height = 8): string {
  const every = Math.max(1, Math.ceil(losses.length / width));
  const points = losses.filter((_, i) => i % every === 0 || i === losses.length - 1);
  return "loss\n" +
    asciichart.plot(points, { height, format: (x: number) => x.toFixed(3).padStart(8) });
}
