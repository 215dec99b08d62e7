/**
 * Mistral's sliding window in a whole model: a tiny random Mistral-shaped model (GQA, window 5)
 * on 24-token windows, the window shorter than the sequence and than every rank's slice, on 1
 * in-process rank and on 2 and 3 ranks with both sequence layouts (zigzag, contiguous), through
 * the same ParallelLayout.sliceBatch and buildSequenceAttention as the trainer: loss and every
 * gradient equal across rank counts (1e-5: sequence parallelism only reorders sums), with and
 * without documents; and the loss differs from the same weights without a window (the window
 * reaches the model). The kernels' windowed rule is checked against float64 in
 * tests/attention_docs.test.ts. Not compared against transformers' MistralForCausalLM here (no
 * fixture yet). fp32 on the CPU (or TEST_BACKEND).
 */
import { freeRanks, inProcessRanks, labelCount, summedGrads } from "./_ranks.ts";
import { assert, assertLess } from "./assert.ts";
import { relError, rng } from "./_util.ts";
import type { ModelConfig } from "../src/model/config.ts";
import { initRandom } from "../src/model/hf.ts";
import type { SequenceLayout } from "../src/parallel/layout.ts";

const WINDOW = 5, L = 24, WINDOWS = 2, BOS = 1;
const CFG: ModelConfig = {
  modelType: "mistral",
  slidingWindow: WINDOW,
  vocabSize: 64,
  hiddenSize: 32,
  intermediateSize: 48,
  numLayers: 2,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 8,
  rmsNormEps: 1e-5,
  ropeTheta: 10000,
  ropeScaling: null,
  maxPositionEmbeddings: 64,
  tieWordEmbeddings: false,
  bosTokenId: BOS,
};

function batch(withDocuments: boolean) {
  const u = rng(3), ids = new Int32Array(WINDOWS * L), labels = new Int32Array(WINDOWS * L);
  for (let i = 0; i < ids.length; i++) ids[i] = 2 + Math.floor(u() * (CFG.vocabSize - 2));
  // Documents: BOS at positions 9 and 17 of the first window (the second stays one document).
  if (withDocuments) ids[9] = ids[17] = BOS;
  for (let i = 0; i < ids.length; i++) labels[i] = ids[(i + 1) % ids.length];
  return { ids, labels };
}

interface Run {
  loss: number;
  grads: Map<string, Float32Array>;
}

async function run(
  cfg: ModelConfig,
  P: number,
  sequence: SequenceLayout,
  withDocuments: boolean,
): Promise<Run> {
  const { ids, labels } = batch(withDocuments);
  const split = withDocuments ? { bos: BOS } : undefined;
  const ranks = inProcessRanks(cfg, {
    P,
    layout: sequence,
    ids,
    labels,
    windows: WINDOWS,
    L,
    split,
    vocabChunk: 32,
  });
  try {
    for (const { model, batch: b } of ranks) {
      initRandom(model, 11, 0.5); // large weights: attention far from uniform
      model.setBatch(b.inputs, b.labels, b.positions, b.documents);
    }
    await Promise.all(ranks.map(({ model }) => model.forward()));
    const count = labelCount(ranks);
    const loss = ranks.reduce((s, { model }) => s + model.lossSum(), 0) / count;
    for (const { model } of ranks) model.zeroGrads();
    await Promise.all(ranks.map(({ model }) => model.backward(1 / count)));
    return { loss, grads: summedGrads(ranks) };
  } finally {
    freeRanks(ranks);
  }
}

function assertSame(what: string, got: Run, want: Run, tol: number): number {
  let worst = Math.abs(got.loss - want.loss) / Math.abs(want.loss);
  assertLess(worst, tol, `${what}: loss ${got.loss} vs ${want.loss}`);
  for (const [name, g] of want.grads) {
    const e = relError(got.grads.get(name)!, g);
    assertLess(e, tol, `${what}: gradient of ${name}`);
    worst = Math.max(worst, e);
  }
  return worst;
}

for (const withDocuments of [false, true]) {
  const docs = withDocuments ? ", with documents" : "";
  Deno.test(`mistral window ${WINDOW}${docs}: 2 and 3 ranks (zigzag, contiguous) equal 1 rank`, async () => {
    const one = await run(CFG, 1, "zigzag", withDocuments);
    let worst = 0;
    for (const P of [2, 3]) {
      for (const sequence of ["zigzag", "contiguous"] as const) {
        const many = await run(CFG, P, sequence, withDocuments);
        worst = Math.max(worst, assertSame(`${P} ranks ${sequence}${docs}`, many, one, 1e-5));
      }
    }
    console.log(
      `window ${WINDOW}${docs}: largest relative difference to 1 rank ${worst.toExponential(2)}`,
    );
    // The same weights without a window: another loss (the window reaches the attention).
    const full = await run({ ...CFG, slidingWindow: null }, 1, "zigzag", withDocuments);
    const change = Math.abs(full.loss - one.loss) / one.loss;
    console.log(
      `loss ${one.loss} with the window, ${full.loss} without (${change.toExponential(2)})`,
    );
    assert(change > 1e-3, `the window changes the loss: ${one.loss} vs ${full.loss}`);
  });
}
