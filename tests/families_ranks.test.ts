/**
 * The model families beyond Llama (Qwen2: q/k/v biases; Qwen3: per-head q/k norms, heads x head_dim
 * != hidden; Mistral: a sliding window of 8, shorter than a rank's slice; Qwen2 with the window on
 * its second layer only) on several in-process ranks, through the same ParallelLayout.sliceBatch and
 * buildSequenceAttention as the trainer, with both sequence layouts (zigzag, contiguous):
 *
 * - 3 ranks on 24-token windows (the fixture's 32 do not split in 3): logits equal transformers'
 *   (tests/fixtures/qwen2, qwen3, qwen2-window, qwen3-window, mistral: causal attention, windowed or not, so the first 24
 *   positions are the fixture's rows), loss and every gradient equal the same windows on 1 rank;
 * - 2 and 4 ranks on the fixture's whole 32-token windows: logits, loss and every gradient equal
 *   transformers';
 * - documents (a chosen token starts one): 1 and 3 ranks equal the model run on each document
 *   alone (plain causal attention, which tests/families.test.ts checks against transformers).
 *
 * Each rank's gradients cover its own tokens, so their sum is the whole batch's. fp32 on the CPU
 * (or TEST_BACKEND); tolerance 1e-4 against transformers as in tests/families.test.ts, 1e-5
 * between rank counts (sequence parallelism only reorders sums).
 */
import { fixtures, reference } from "./_fixtures.ts";
import { freeRanks, gatheredLogits, inProcessRanks, labelCount, summedGrads } from "./_ranks.ts";
import { assert, assertEquals, assertLess } from "./assert.ts";
import { relError, rng, testDevice } from "./_util.ts";
import { readHfConfig } from "../src/model/hf_config.ts";
import { DecoderModel } from "../src/model/decoder.ts";
import { loadWeights } from "../src/model/hf.ts";
import { DType } from "../src/runtime/ops.ts";
import type { SequenceLayout } from "../src/parallel/layout.ts";
import { docStartsFromTokens } from "../src/model/documents.ts";

const VARIANTS = ["qwen2", "qwen3", "qwen2-window", "qwen3-window", "mistral"];
const LAYOUTS: SequenceLayout[] = ["zigzag", "contiguous"];
/** The fixtures' batch: 2 windows of 32 tokens, labels aligned (no shift), -100 ignored. */
const FIXTURE_LENGTH = 32;
const IGNORE = -100;

interface Run {
  /** [windows, L, V] in window order. */
  logits: Float32Array;
  loss: number;
  grads: Map<string, Float32Array>;
}

/** The first `n` tokens of each `length`-token window of a [B, length] array. */
function prefix<T extends Int32Array | Float32Array>(a: T, length: number, n: number, row = 1): T {
  const windows = a.length / (length * row);
  const out = new (a.constructor as { new (n: number): T })(windows * n * row);
  for (let b = 0; b < windows; b++) {
    out.set(a.subarray(b * length * row, (b * length + n) * row), b * n * row);
  }
  return out;
}

/**
 * Forward and backward of the [windows, L] batch on P in-process ranks; `bos`: document masking,
 * a document starting at every `bos` token (and each window's first).
 */
async function run(
  variant: string,
  ids: Int32Array,
  labels: Int32Array,
  L: number,
  o: { P: number; layout: SequenceLayout; bos?: number },
): Promise<Run> {
  const dir = `${fixtures}${variant}`, cfg = await readHfConfig(dir);
  const { P, layout: sequence } = o, windows = ids.length / L, V = cfg.vocabSize;
  const split = o.bos === undefined ? undefined : { bos: o.bos };
  const ranks = inProcessRanks(cfg, {
    P,
    layout: sequence,
    ids,
    labels,
    windows,
    L,
    split,
    vocabChunk: 50,
  });
  try {
    for (const { model, batch } of ranks) {
      await loadWeights(model, dir);
      model.setBatch(batch.inputs, batch.labels, batch.positions, batch.documents);
    }
    await Promise.all(ranks.map(({ model }) => model.forward()));
    const count = labelCount(ranks);
    const lossSum = ranks.reduce((sum, { model }) => sum + model.lossSum(), 0);
    // Zigzag on several ranks reorders each window's whole documents for balance: undone here.
    const logits = gatheredLogits(ranks, {
      ids,
      windows,
      L,
      V,
      bos: o.bos,
      balanced: sequence === "zigzag" && P > 1,
    });
    for (const { model } of ranks) model.zeroGrads();
    await Promise.all(ranks.map(({ model }) => model.backward(1 / count)));
    return { logits, loss: lossSum / count, grads: summedGrads(ranks) };
  } finally {
    freeRanks(ranks);
  }
}

/**
 * The document-masked batch computed without document masking: every document of every window
 * run alone on 1 rank (positions from 0, a label whose target is `bos` ignored), the loss over all
 * of them, the gradients summed.
 */
async function eachDocumentAlone(
  variant: string,
  ids: Int32Array,
  labels: Int32Array,
  L: number,
  bos: number,
): Promise<Run> {
  const d = testDevice(), dir = `${fixtures}${variant}`, cfg = await readHfConfig(dir);
  const windows = ids.length / L, V = cfg.vocabSize;
  const pieces: { at: number; ids: Int32Array; labels: Int32Array }[] = [];
  for (let b = 0; b < windows; b++) {
    const docs = docStartsFromTokens(ids.subarray(b * L, (b + 1) * L), bos);
    docs.forEach((s, i) => {
      const at = b * L + s, end = b * L + (i + 1 < docs.length ? docs[i + 1] : L);
      const own = labels.slice(at, end).map((l) => (l === bos ? IGNORE : l));
      pieces.push({ at, ids: ids.slice(at, end), labels: own });
    });
  }
  const count = pieces.reduce((n, p) => n + p.labels.filter((l) => l >= 0).length, 0);
  const logits = new Float32Array(windows * L * V), grads = new Map<string, Float32Array>();
  let lossSum = 0;
  for (const p of pieces) {
    const n = p.ids.length;
    const model = new DecoderModel(d, cfg, {
      dtype: DType.f32,
      batch: 1,
      seqLen: n,
      vocabChunk: 50,
    });
    model.allocate();
    try {
      await loadWeights(model, dir);
      model.setBatch(p.ids, p.labels);
      await model.forward();
      lossSum += model.lossSum();
      logits.set(model.fullLogits(), p.at * V);
      model.zeroGrads();
      await model.backward(1 / count);
      for (const e of model.layout.entries) {
        const sum = grads.get(e.name) ?? new Float32Array(e.numel), g = model.gradOf(e.name);
        for (let i = 0; i < sum.length; i++) sum[i] += g[i];
        grads.set(e.name, sum);
      }
    } finally {
      model.free();
    }
  }
  return { logits, loss: lossSum / count, grads };
}

/** Worst relative errors of `got` against `want` (logits only where `want` has them). */
function errors(got: Run, want: Partial<Run> & { grads: Map<string, Float32Array> }) {
  assert(want.grads.size >= 20, "every parameter has a reference gradient");
  assertEquals(got.grads.size, want.grads.size, "a gradient per parameter");
  const grads = [...want.grads].map(([name, w]) => relError(got.grads.get(name)!, w));
  return {
    ...(want.logits ? { logits: relError(got.logits, want.logits) } : {}),
    ...(want.loss !== undefined ? { loss: Math.abs(got.loss - want.loss) / want.loss } : {}),
    grad: Math.max(...grads),
  };
}

function assertClose(e: Record<string, number>, tol: number, what: string) {
  for (const [key, err] of Object.entries(e)) assertLess(err, tol, `${what}: ${key}`);
  const shown = Object.entries(e).map(([k, v]) => `${k} ${v.toExponential(2)}`).join(", ");
  console.log(`${what}: ${shown}`);
}

for (const variant of VARIANTS) {
  Deno.test(`families ${variant} on 3 ranks (zigzag, contiguous): logits equal transformers, loss and gradients 1 rank`, async () => {
    const ref = await reference(variant), L = 24;
    const ids = prefix(ref.ids, FIXTURE_LENGTH, L), labels = prefix(ref.labels, FIXTURE_LENGTH, L);
    const V = ref.logits.length / ref.ids.length;
    const logits = prefix(ref.logits, FIXTURE_LENGTH, L, V);
    const one = await run(variant, ids, labels, L, { P: 1, layout: "zigzag" });
    assertClose({ logits: relError(one.logits, logits) }, 1e-4, `${variant} L=${L} 1 rank`);
    for (const layout of LAYOUTS) {
      const three = await run(variant, ids, labels, L, { P: 3, layout });
      assertClose(
        { logits: relError(three.logits, logits) },
        1e-4,
        `${variant} L=${L} 3 ranks ${layout} vs transformers`,
      );
      assertClose(errors(three, one), 1e-5, `${variant} L=${L} 3 ranks ${layout} vs 1 rank`);
    }
  });

  Deno.test(`families ${variant} on 2 and 4 ranks (zigzag, contiguous): logits, loss and every gradient equal transformers`, async () => {
    const ref = await reference(variant);
    for (const P of [2, 4]) {
      for (const layout of LAYOUTS) {
        const got = await run(variant, ref.ids, ref.labels, FIXTURE_LENGTH, { P, layout });
        assertClose(errors(got, ref), 1e-4, `${variant} ${P} ranks ${layout} vs transformers`);
      }
    }
  });
}

/** Token 1 starts a document; windows of 24 tokens with documents of 1 to 12 tokens. */
const BOS = 1;
function documentBatch(vocab: number, L: number) {
  const next = rng(11), windows = 2;
  const ids = Int32Array.from({ length: windows * L }, () => 2 + Math.floor(next() * (vocab - 2)));
  // Window 0: documents at 0, 5, 6 (one token long), 13; window 1: at 0 (no BOS) and 17.
  for (const p of [0, 5, 6, 13, L + 17]) ids[p] = BOS;
  const labels = Int32Array.from(ids, (_, i) => {
    if ((i + 1) % L !== 0) return ids[i + 1];
    return i === L - 1 ? IGNORE : 2 + Math.floor(next() * (vocab - 2));
  });
  labels[20] = IGNORE; // an ignored label inside a document
  return { ids, labels };
}

for (const variant of VARIANTS) {
  Deno.test(`families ${variant} with documents on 1 and 3 ranks (zigzag, contiguous) equal each document run alone`, async () => {
    const L = 24, cfg = await readHfConfig(`${fixtures}${variant}`);
    const { ids, labels } = documentBatch(cfg.vocabSize, L);
    assertEquals(docStartsFromTokens(ids.subarray(0, L), BOS), [0, 5, 6, 13]);
    assertEquals(docStartsFromTokens(ids.subarray(L), BOS), [0, 17]);
    const alone = await eachDocumentAlone(variant, ids, labels, L, BOS);
    const one = await run(variant, ids, labels, L, { P: 1, layout: "zigzag", bos: BOS });
    assertClose(errors(one, alone), 1e-5, `${variant} documents 1 rank vs each alone`);
    for (const layout of LAYOUTS) {
      const three = await run(variant, ids, labels, L, { P: 3, layout, bos: BOS });
      assertClose(
        errors(three, alone),
        1e-5,
        `${variant} documents 3 ranks ${layout} vs each alone`,
      );
    }
    // Document masking changes the result: the causal run over the packed windows differs.
    const causal = await run(variant, ids, labels, L, { P: 1, layout: "zigzag" });
    assertLess(1e-3, relError(causal.logits, alone.logits), "causal differs from documents");
  });
}
