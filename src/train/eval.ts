/**
 * Evaluation: the mean loss over validation windows, forward only, on every rank of a (dp x sp)
 * run. The windows come from --eval-data-path or are held out of the training data
 * (--validation-split-percentage); the loss is summed over all ranks and divided by all labelled
 * tokens, exactly as a training step's loss is, so a 2-rank evaluation equals a 1-rank one.
 */
import { Dataset, type DatasetStats, openDataset, type Tokenizer } from "../data/mod.ts";
import type { Communicator } from "../comm/comm.ts";
import type { DecoderModel } from "../model/decoder.ts";
import type { Device, DeviceBuffer } from "../runtime/device.ts";
import type { TrainOptions } from "./options.ts";
import { allReduceNumber } from "./ranks.ts";
import type { DocumentSplit, ParallelLayout } from "../parallel/layout.ts";

/** One evaluation, as a line of metrics.jsonl and an entry of log_history (HF's names). */
export interface EvalMetrics {
  /** Optimizer steps done when it ran. */
  step: number;
  /** Epochs done, fractional. */
  epoch: number;
  /** Mean loss over every labelled token of the validation windows. */
  eval_loss: number;
  /** exp(eval_loss). */
  perplexity: number;
  /** Labelled tokens the loss is the mean over (all ranks). */
  eval_tokens: number;
  /** Seconds the evaluation took. */
  eval_runtime: number;
}

/** Windows [start, start + count) of another dataset. */
class WindowRange extends Dataset {
  readonly seqLen: number;
  readonly stats: DatasetStats;
  constructor(
    readonly base: Dataset,
    readonly start: number,
    readonly numWindows: number,
    what: string,
  ) {
    super();
    this.seqLen = base.seqLen;
    this.stats = { ...base.stats, source: `${base.stats.source} (${what})` };
  }
  window(i: number) {
    this.checkIndex(i);
    return this.base.window(this.start + i);
  }
}

/**
 * The training and validation windows: validation from `evalDataPath`, or the first
 * `validationSplitPercentage` % of the training windows (as Hugging Face's run_clm splits
 * `train[:p%]` off), which training then skips. No validation data: `evaluation` is null.
 */
export async function splitEvalData(
  o: TrainOptions,
  train: Dataset,
  tokenizer: Tokenizer | undefined,
  log: (line: string) => void,
): Promise<{ training: Dataset; evaluation: Dataset | null }> {
  if (o.evalDataPath) {
    const evaluation = await openDataset({
      dataPath: o.evalDataPath,
      tokenizer,
      seqLen: train.seqLen,
      textField: o.textField,
    });
    log(`evaluation data: ${evaluation.describe()}`);
    return { training: train, evaluation };
  }
  if (o.validationSplitPercentage > 0) {
    const n = train.numWindows, held = Math.ceil((n * o.validationSplitPercentage) / 100);
    if (held >= n) {
      throw new Error(
        `--validation-split-percentage ${o.validationSplitPercentage}: the data has ${n} ` +
          "sequences, too few to hold any out and still train",
      );
    }
    log(`evaluation data: the first ${held} of ${n} training sequences, held out`);
    return {
      training: new WindowRange(train, held, n - held, "training split"),
      evaluation: new WindowRange(train, 0, held, "validation split"),
    };
  }
  return { training: train, evaluation: null };
}

/** Whether an evaluation is due after optimizer step `done` (always after the last step). */
export function evaluationDue(
  o: TrainOptions,
  done: number,
  totalSteps: number,
  stepsPerEpoch: number,
): boolean {
  if (done === totalSteps) return true;
  if (o.evaluationStrategy === "steps") return done % (o.evalSteps ?? o.loggingSteps) === 0;
  if (o.evaluationStrategy === "epoch") return done % stepsPerEpoch === 0;
  return false;
}

/** Where this rank sits and what the model's micro-batch holds. */
export interface EvalPlacement {
  device: Device;
  model: DecoderModel;
  /** All ranks (null on one rank). */
  world: Communicator | null;
  /** A device scratch of at least 4 bytes for the sums. */
  scratch: DeviceBuffer;
  /** Sequences per forward (the model's micro-batch, fixed by the memory plan). */
  batch: number;
  /** Sequences per evaluation batch of a data-parallel group (--per-device-eval-batch-size). */
  evalBatch: number;
  /** This rank's place in dp x sp and how a window is sliced for it. */
  parallel: ParallelLayout;
  /** --attention-mask document: where documents begin (absent: causal over the window). */
  documents?: DocumentSplit;
}

/**
 * The forwards of one data-parallel group: its `windows` in evaluation batches of `evalBatch`,
 * each batch run as forwards of at most `batch` (the model's micro-batch), so any evaluation batch
 * size runs in the training step's memory. A batch that is not a multiple of `batch` leaves its
 * last forward part empty. Every group gets as many forwards as the group with the most windows
 * (`mostWindows`); a group with fewer runs empty ones (collectives span all ranks).
 */
export function evalForwards(
  windows: Uint32Array,
  mostWindows: number,
  evalBatch: number,
  batch: number,
): Uint32Array[] {
  const forwardsOf = (n: number) =>
    Math.floor(n / evalBatch) * Math.ceil(evalBatch / batch) +
    Math.ceil((n % evalBatch) / batch);
  const out: Uint32Array[] = [];
  for (let e = 0; e < windows.length; e += evalBatch) {
    const inBatch = windows.subarray(e, e + evalBatch);
    for (let f = 0; f < inBatch.length; f += batch) out.push(inBatch.subarray(f, f + batch));
  }
  while (out.length < forwardsOf(mostWindows)) out.push(new Uint32Array(0));
  return out;
}

/**
 * Mean loss over all validation windows. Each data-parallel group takes every dp-th window (see
 * evalForwards for how they are batched); the missing windows of a forward are filled with
 * windows whose labels are all ignored.
 */
export async function evaluate(
  data: Dataset,
  at: EvalPlacement,
  step: number,
  epoch: number,
): Promise<EvalMetrics> {
  const t0 = performance.now();
  const L = data.seqLen, B = at.batch;
  const mine = data.indices({
    shuffle: false,
    rank: at.parallel.dpRank,
    worldSize: at.parallel.dp,
    dropRemainder: false,
  });
  const mostWindows = Math.ceil(data.numWindows / at.parallel.dp);
  let lossSum = 0, labelled = 0;
  for (const ids of evalForwards(mine, mostWindows, at.evalBatch, B)) {
    const inputs = new Int32Array(B * L), labels = new Int32Array(B * L).fill(-100);
    if (ids.length > 0) {
      const full = data.batch(ids);
      inputs.set(full.inputs);
      labels.set(full.labels);
    }
    const batch = at.parallel.sliceBatch({ inputs, labels }, B, L, at.documents);
    for (const label of batch.labels) if (label >= 0) labelled++;
    at.model.setBatch(batch.inputs, batch.labels, batch.positions, batch.documents);
    await at.model.forward();
    lossSum += at.model.lossSum();
  }
  if (at.world) {
    lossSum = await allReduceNumber(at.world, at.scratch, at.device, lossSum);
    labelled = await allReduceNumber(at.world, at.scratch, at.device, labelled);
  }
  if (labelled === 0) throw new Error("evaluation: the validation data has no labelled token");
  const loss = lossSum / labelled;
  return {
    step,
    epoch,
    eval_loss: loss,
    perplexity: Math.exp(loss),
    eval_tokens: labelled,
    eval_runtime: (performance.now() - t0) / 1000,
  };
}
