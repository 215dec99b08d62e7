/**
 * Progress of a training run: on a terminal a bar redrawn in place (step, loss, tokens/s, ETA);
 * in a pipe, one plain line per logged step. Steps that run long (a 7B step at 256K tokens takes
 * minutes) also get a line every `everySeconds` saying which layer they have reached.
 */
import type { StepMetrics } from "./metrics.ts";

function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return "?";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h > 0 ? `${h}h${String(m).padStart(2, "0")}m` : `${m}m${String(s % 60).padStart(2, "0")}s`;
}

export class Progress {
  readonly #tty = Deno.stderr.isTerminal();
  readonly #start = performance.now();
  #tokensPerS = NaN;

  constructor(
    readonly total: number,
    readonly startStep: number,
    readonly write: (line: string) => void,
  ) {}

  /** A logged step: a permanent line. */
  log(m: StepMetrics): void {
    this.#tokensPerS = m.tokens_per_s;
    const line =
      `step ${m.step}/${this.total} loss ${m.loss.toFixed(4)} lr ${
        m.learning_rate.toExponential(2)
      } ` +
      `grad_norm ${m.grad_norm.toFixed(3)} tokens/s ${Math.round(m.tokens_per_s)}` +
      (m.mfu === undefined ? "" : ` MFU ${(100 * m.mfu).toFixed(1)}%`);
    if (this.#tty) this.#clear();
    this.write(line);
  }

  /** Any other line while the bar may be drawn: the bar is cleared first (terminal only). */
  line(text: string): void {
    if (this.#tty) this.#clear();
    this.write(text);
  }

  /** Every step: redraw the bar (terminal only). */
  tick(step: number, loss: number): void {
    if (!this.#tty) return;
    const done = step - this.startStep, left = this.total - step;
    const elapsed = (performance.now() - this.#start) / 1000;
    const eta = done > 0 ? (elapsed / done) * left : NaN;
    const width = 24, filled = Math.round((width * step) / this.total);
    const bar = "#".repeat(filled) + "-".repeat(width - filled);
    const rate = Number.isFinite(this.#tokensPerS) ? `${Math.round(this.#tokensPerS)} tok/s` : "";
    const text = `[${bar}] ${step}/${this.total} loss ${loss.toFixed(4)} ${rate} ETA ${
      formatDuration(eta)
    }`;
    Deno.stderr.writeSync(new TextEncoder().encode(`\r${text}\x1b[K`));
  }

  #clear(): void {
    Deno.stderr.writeSync(new TextEncoder().encode("\r\x1b[K"));
  }

  finish(): void {
    if (this.#tty) this.#clear();
  }
}

/**
 * Where a long step is: after `everySeconds` of a step, and then every `everySeconds`, one line
 * naming the step, the micro-batch, the phase and the layer (as the host issues it).
 */
export class StepProgress {
  #stepStart = 0;
  #last = 0;
  #label = "";

  constructor(
    readonly numLayers: number,
    readonly everySeconds: number,
    readonly write: (line: string) => void,
  ) {}

  /** A new step (and micro-batch `micro` of `micros`) begins. */
  begin(step: number, total: number, micro: number, micros: number): void {
    const now = performance.now();
    if (micro === 0) this.#stepStart = this.#last = now;
    this.#label = `step ${step}/${total}` +
      (micros > 1 ? `, micro-batch ${micro + 1}/${micros}` : "");
  }

  layer(phase: "forward" | "backward", layer: number): void {
    const now = performance.now(), every = this.everySeconds * 1000;
    if (now - this.#stepStart < every || now - this.#last < every) return;
    this.#last = now;
    const elapsed = ((now - this.#stepStart) / 1000).toFixed(0);
    this.write(
      `${this.#label}: ${phase}, layer ${
        layer + 1
      } of ${this.numLayers} (${elapsed} s into the step)`,
    );
  }
}

/**
 * Progress of tokenising large text data: a line every 5 seconds with the share done and the
 * rate (silent for data read in under 5 seconds).
 */
export function tokenizingProgress(
  log: (line: string) => void,
): (done: number, total: number) => void {
  const start = performance.now();
  let last = start;
  return (done, total) => {
    const now = performance.now();
    if (now - last < 5000 || total === 0) return;
    last = now;
    const mbPerS = done / 1e6 / ((now - start) / 1000);
    const left = mbPerS > 0 ? (total - done) / 1e6 / mbPerS : NaN;
    log(
      `tokenizing: ${(100 * done / total).toFixed(0)}% of ${(total / 1e6).toFixed(0)} MB, ` +
        `${mbPerS.toFixed(2)} MB/s, about ${Math.round(left)} s left`,
    );
  };
}
