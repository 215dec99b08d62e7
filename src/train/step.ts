/**
 * One optimizer step: gradientAccumulationSteps micro-batches of perDeviceTrainBatchSize
 * sequences, then the update. The loss is the mean over every labelled token of the step on all
 * ranks, so the gradient is the same whatever the split into micro-batches and ranks.
 */
import { lrMultiplier } from "./lr.ts";
import type { StepProgress } from "./progress.ts";
import { allReduceNumber } from "./ranks.ts";
import type { Run } from "./setup.ts";

/** The numbers of one optimizer step. */
export interface StepResult {
  /** Mean loss over the step's labelled tokens, all ranks. */
  loss: number;
  /** The gradient's global norm before clipping. */
  gradNorm: number;
  /** The learning rate the update used. */
  lr: number;
}

/**
 * Runs optimizer step `step` (0-based) of `run` on this rank, reading the windows of the epoch's
 * shuffled `order`; `within` hears where a long step is. Throws on a step without labelled tokens
 * and on a non-finite loss (before the update, so the last checkpoint stays the one to resume).
 */
export async function trainStep(
  run: Run,
  step: number,
  order: Uint32Array,
  within: StepProgress,
): Promise<StepResult> {
  const { options: o, device, world, model, parallel, dataset, scratch: stats } = run;
  const B = o.perDeviceTrainBatchSize, L = o.modelMaxLength, accum = o.gradientAccumulationSteps;
  const { totalSteps } = run;

  // The step's micro-batches, sliced for this rank.
  const first = (step % run.stepsPerEpoch) * run.windowsPerStep;
  const micro = [];
  let labelled = 0;
  for (let a = 0; a < accum; a++) {
    const batch = parallel.sliceBatch(
      dataset.batch(order.subarray(first + a * B, first + (a + 1) * B)),
      B,
      L,
      run.documents,
    );
    for (const label of batch.labels) if (label >= 0) labelled++;
    micro.push(batch);
  }
  // The loss is the mean over every labelled token of the step on all ranks.
  if (world) labelled = await allReduceNumber(world, stats, device, labelled);
  if (labelled === 0) throw new Error(`step ${step + 1}: the batch has no labelled token`);

  model.zeroGrads();
  let lossSum = 0;
  for (const [i, batch] of micro.entries()) {
    within.begin(step + 1, totalSteps, i, micro.length);
    model.setBatch(batch.inputs, batch.labels, batch.positions, batch.documents);
    await model.forward();
    lossSum += model.lossSum();
    await model.backward(1 / labelled);
  }
  // The parameter store's collectives (its own stream, on `world`) land before this one.
  await model.params.finishGrads();
  if (world) {
    lossSum = await allReduceNumber(world, stats, device, lossSum);
  }
  const loss = lossSum / labelled;
  if (!Number.isFinite(loss)) {
    throw new Error(
      `step ${step + 1}: the loss is ${loss}; stopping (last saved checkpoint is intact)`,
    );
  }
  const gradNorm = await model.gradNorm();
  if (run.debugGrads) {
    const norms = await model.params.unitGradNorms();
    run.log(
      `step ${step + 1} unit gradient norms: ${norms.map((n) => n.toExponential(2)).join(" ")}`,
    );
  }
  const clip = o.maxGradNorm > 0 ? Math.min(1, o.maxGradNorm / (gradNorm + 1e-6)) : 1;
  const lr = o.learningRate * lrMultiplier(o.lrSchedulerType, step, totalSteps, run.warmupSteps);
  model.adamwStep({
    lr,
    beta1: o.adamBeta1,
    beta2: o.adamBeta2,
    eps: o.adamEpsilon,
    weightDecay: o.weightDecay,
    step: step + 1,
    gradScale: clip,
  });
  device.synchronize();
  return { loss, gradNorm, lr };
}
