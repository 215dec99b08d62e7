/**
 * Document masking through the model: the tiny Llamas of tests/fixtures on two packed windows
 * against Hugging Face transformers run on every document alone (tests/fixtures/documents, made by
 * tests/reference/make_document_fixtures.py in float64): logits, the loss (the mean over the
 * in-document predictions) and every gradient. The batch goes through ParallelLayout.sliceBatch
 * (document starts, per-document RoPE positions, BOS targets ignored) exactly as the trainer's
 * does, on 1 rank and on P = 2, 3, 4 in-process ranks (zigzag, contiguous DistAttn, head groups):
 * each rank's gradients cover its own tokens, so their sum is the whole batch's.
 *
 * Tolerance 1e-4 as in tests/llama.test.ts: fp32 compute through a 2-layer model stays near 1e-6
 * relative to the float64 reference; sequence parallelism only reorders sums.
 */
import { freeRanks, gatheredLogits, inProcessRanks, labelCount, summedGrads } from "./_ranks.ts";
import { assert, assertEquals, assertLess } from "./assert.ts";
import { relError, rng, runCpuRanks, TEST_BACKEND } from "./_util.ts";
import { join } from "node:path";
import { openSafetensors } from "../src/io/safetensors.ts";
import { readHfConfig } from "../src/model/hf_config.ts";
import { loadWeights } from "../src/model/hf.ts";
import { ParallelLayout, type SequenceLayout } from "../src/parallel/layout.ts";
import {
  attentionWorkPerRank,
  imbalance,
  randomDocumentStarts,
} from "../src/parallel/document_work.ts";
import { balanceDocuments } from "../src/parallel/document_balance.ts";
import { docStartsFromTokens } from "../src/model/documents.ts";
import { fileURLToPath } from "node:url";

const fixtures = fileURLToPath(new URL("./fixtures/", import.meta.url));
const L = 24;

async function fixture(variant: string) {
  const f = await openSafetensors(`${fixtures}documents/${variant}.safetensors`);
  const ints = async (name: string) => Int32Array.from(await f.readFloat32(name));
  const ref = {
    ids: await ints("input_ids"),
    nextIds: await ints("next_ids"),
    labels: await ints("labels"),
    logits: await f.readFloat32("logits"),
    loss: (await f.readFloat32("loss"))[0],
    grads: new Map<string, Float32Array>(),
  };
  for (const name of f.names()) {
    if (name.startsWith("grad.")) ref.grads.set(name.slice(5), await f.readFloat32(name));
  }
  f.close();
  return ref;
}

interface Run {
  logits: Float32Array;
  loss: number;
  grads: Map<string, Float32Array>;
  /** Rank 0's labels and positions after slicing (P = 1: the whole batch's). */
  labels: Int32Array;
  positions: Int32Array;
}

/**
 * Forward and backward of the windows `ids` (raw next-token labels `next`) on P in-process ranks.
 * `documents` false: plain causal attention (today's path).
 */
async function run(
  variant: string,
  ids: Int32Array,
  next: Int32Array,
  o: {
    P: number;
    layout?: SequenceLayout;
    groups?: number;
    documents?: boolean;
    /** Reorder each window's documents for balance (the default, zigzag only). */
    balance?: boolean;
  },
): Promise<Run> {
  const dir = `${fixtures}${variant}`, cfg = await readHfConfig(dir);
  const P = o.P, layoutName = o.layout ?? "zigzag", windows = ids.length / L;
  const split = o.documents === false ? undefined : { bos: cfg.bosTokenId!, balance: o.balance };
  const ranks = inProcessRanks(cfg, {
    P,
    layout: layoutName,
    ids,
    labels: next,
    windows,
    L,
    split,
    vocabChunk: 100,
    headGroups: o.groups,
  });
  try {
    for (const { model, batch } of ranks) {
      await loadWeights(model, dir);
      model.setBatch(batch.inputs, batch.labels, batch.positions, batch.documents);
    }
    await Promise.all(ranks.map(({ model }) => model.forward()));
    const count = labelCount(ranks);
    const lossSum = ranks.reduce((sum, { model }) => sum + model.lossSum(), 0);
    for (const { layout, batch } of ranks) {
      assertEquals(batch.labels.length, windows * layout.tokensPerRank(L));
    }
    // Balanced zigzag reorders each window's documents: gatheredLogits puts them back.
    const logits = gatheredLogits(ranks, {
      ids,
      windows,
      L,
      V: cfg.vocabSize,
      bos: split ? cfg.bosTokenId! : undefined,
      balanced: o.balance !== false && layoutName === "zigzag" && P > 1,
    });
    for (const { model } of ranks) model.zeroGrads();
    await Promise.all(ranks.map(({ model }) => model.backward(1 / count)));
    return {
      logits,
      loss: lossSum / count,
      grads: summedGrads(ranks),
      labels: ranks[0].batch.labels,
      positions: ranks[0].batch.positions,
    };
  } finally {
    freeRanks(ranks);
  }
}

/** Worst relative error of a run against the transformers reference. */
function errors(got: Run, ref: Awaited<ReturnType<typeof fixture>>) {
  const grads = [...ref.grads].map(([name, want]) => relError(got.grads.get(name)!, want));
  assert(grads.length >= 20, "every parameter has a reference gradient");
  return {
    logits: relError(got.logits, ref.logits),
    loss: Math.abs(got.loss - ref.loss) / ref.loss,
    grad: Math.max(...grads),
  };
}

function assertMatches(got: Run, ref: Awaited<ReturnType<typeof fixture>>, what: string) {
  const e = errors(got, ref);
  for (const [key, err] of Object.entries(e)) assertLess(err, 1e-4, `${what}: ${key}`);
  return e;
}

for (const variant of ["mha", "gqa"]) {
  Deno.test(`documents ${variant}: one rank equals transformers run on each document alone`, async () => {
    const ref = await fixture(variant);
    const got = await run(variant, ref.ids, ref.nextIds, { P: 1 });
    // The layout ignores exactly the labels whose target is a BOS (inside the window and at its edge).
    assertEquals(Array.from(got.labels), Array.from(ref.labels));
    // RoPE positions restart at every BOS and at each window's start. (Attention scores depend only
    // on position differences inside a document, so logits alone cannot see this; the rule can.)
    const bos = (await readHfConfig(`${fixtures}${variant}`)).bosTokenId!;
    const want = Array.from(ref.ids, (_, i) => {
      let start = i - (i % L);
      for (let p = start + 1; p <= i; p++) if (ref.ids[p] === bos) start = p;
      return i - start;
    });
    assertEquals(Array.from(got.positions), want, "positions restart per document");
    const e = assertMatches(got, ref, `${variant} 1 rank`);
    console.log(`${variant} documents, 1 rank: ${JSON.stringify(e)}`);
  });
}

Deno.test("documents: P = 2, 3, 4 ranks (zigzag, contiguous, head groups) equal transformers", async () => {
  const cases: { variant: string; P: number; layout: SequenceLayout; groups?: number }[] = [
    { variant: "gqa", P: 2, layout: "zigzag" },
    { variant: "mha", P: 3, layout: "zigzag" },
    { variant: "gqa", P: 4, layout: "zigzag" },
    { variant: "gqa", P: 2, layout: "zigzag", groups: 2 },
    { variant: "mha", P: 2, layout: "contiguous" },
    { variant: "gqa", P: 3, layout: "contiguous" },
    { variant: "mha", P: 4, layout: "contiguous", groups: 2 },
  ];
  for (const c of cases) {
    const ref = await fixture(c.variant);
    assertMatches(
      await run(c.variant, ref.ids, ref.nextIds, c),
      ref,
      `${c.variant} P=${c.P} ${c.layout}${c.groups ? ` in ${c.groups} head groups` : ""}`,
    );
  }
});

Deno.test("documents: a window of a single document is today's causal result (bit for bit on the CPU)", async () => {
  const ref = await fixture("gqa");
  // Window 1 of the fixture is one document (a BOS at 0 and no other).
  const ids = ref.ids.slice(L), next = ref.nextIds.slice(L);
  // On the CPU both paths run the same loops, so the results are the same bits. On CUDA documents
  // run other kernels than causal attention (other summation orders): equal to fp32 rounding,
  // which over this model's few reductions stays far below 1e-5 relative (log 07 of 2026-12-07:
  // the 9th digit).
  const same = (a: ArrayLike<number>, b: ArrayLike<number>, what: string) => {
    if (TEST_BACKEND === "cpu") assertEquals(Array.from(a), Array.from(b), what);
    else assertLess(relError(a, b), 1e-5, what);
  };
  for (const P of [1, 2]) {
    const docs = await run("gqa", ids, next, { P });
    const causal = await run("gqa", ids, next, { P, documents: false });
    same(docs.logits, causal.logits, `P=${P} logits`);
    same([docs.loss], [causal.loss], `P=${P} loss`);
    for (const [name, g] of causal.grads) same(docs.grads.get(name)!, g, `P=${P} grad ${name}`);
  }
  // And it is the transformers result of that window (its rows of the fixture).
  const V = 256, one = await run("gqa", ids, next, { P: 1 });
  assertLess(relError(one.logits, ref.logits.subarray(L * V)), 1e-4, "logits of window 1");
});

Deno.test("documents: per-rank attention work (plan's imbalance) counts every visible pair once", () => {
  const L = 48, starts = randomDocumentStarts(L, 6, 3);
  assert(starts.length > 4, "several documents");
  // Brute force: visible (query, key) pairs by the rule, per position.
  const sees = (p: number, s: number) => s <= p && !starts.some((x) => x > s && x <= p);
  for (const sequence of ["zigzag", "contiguous"] as const) {
    for (const P of [2, 3, 4]) {
      if (L % (sequence === "zigzag" ? 2 * P : P) !== 0) continue;
      const layout = new ParallelLayout(P, 0, {
        spSize: P,
        distattnLayout: sequence,
        fsdp: "",
        offloadOptimizer: false,
      });
      const work = attentionWorkPerRank(layout, L, starts);
      const want = Array.from({ length: P }, (_, r) => {
        let n = 0;
        for (const [q0, len] of layout.forRank(r).pieces(L)) {
          for (let p = q0; p < q0 + len; p++) for (let s = 0; s < L; s++) if (sees(p, s)) n++;
        }
        return n;
      });
      assertEquals(work, want, `${sequence} P=${P}`);
    }
  }
  // Causal attention under zigzag: every rank the same work.
  const zig = new ParallelLayout(4, 0, {
    spSize: 4,
    distattnLayout: "zigzag",
    fsdp: "",
    offloadOptimizer: false,
  });
  assertEquals(imbalance(attentionWorkPerRank(zig, L, [0])), 1);
});

Deno.test("documents: train --attention-mask document on 2 CPU ranks follows 1 rank, and differs from causal", async () => {
  const root = await Deno.makeTempDir();
  // Short JSONL documents (1..30 bytes): several per 32-token window, packed with a BOS before each.
  const data = join(root, "docs.jsonl"), next = rng(7);
  const letters = "abcdefgh ";
  const lines = Array.from({ length: 40 }, () => {
    const n = 1 + Math.floor(next() * 30);
    const text = Array.from({ length: n }, () => letters[Math.floor(next() * letters.length)]);
    return JSON.stringify({ text: text.join("") });
  });
  await Deno.writeTextFile(data, lines.join("\n"));
  // deno-fmt-ignore
  const args = (mask: string, out: string) => [
    "train", "--model", "debug-tiny", "--data-path", data, "--model-max-length", "32",
    "--max-steps", "4", "--logging-steps", "1", "--learning-rate", "1e-2", "--device", "cpu",
    "--save-strategy", "no", "--attention-mask", mask, "--output-dir", join(root, out),
  ];
  const curve = async (out: string) =>
    (await Deno.readTextFile(join(root, out, "metrics.jsonl"))).trim().split("\n").map((l) =>
      JSON.parse(l) as { loss: number; grad_norm: number }
    );
  await runCpuRanks(1, args("document", "one"));
  await runCpuRanks(2, args("document", "two"));
  await runCpuRanks(1, args("causal", "causal"));
  const [one, two, causal] = [await curve("one"), await curve("two"), await curve("causal")];
  assertEquals(one.length, 4);
  one.forEach((m, i) => {
    // fp32, ranks only reorder sums (tests/dist_train.test.ts bounds the same at 1e-4).
    assertLess(Math.abs(two[i].loss - m.loss) / m.loss, 1e-4, `step ${i + 1} loss`);
    assertLess(Math.abs(two[i].grad_norm - m.grad_norm) / m.grad_norm, 1e-4, `step ${i + 1} grad`);
  });
  assertLess(
    1e-3,
    Math.abs(causal[0].loss - one[0].loss) / one[0].loss,
    "the mask changes the loss",
  );
  await Deno.remove(root, { recursive: true });
});

Deno.test("documents: reordering whole documents for balance leaves the loss, logits and gradients (fp rounding)", async () => {
  for (const [variant, P] of [["gqa", 2], ["mha", 3], ["gqa", 4]] as const) {
    const ref = await fixture(variant),
      bos = (await readHfConfig(`${fixtures}${variant}`))
        .bosTokenId!;
    // The balance moves documents in at least one window of the fixture at this P.
    const moved = [0, 1].some((b) => {
      const docs = docStartsFromTokens(ref.ids.subarray(b * L, (b + 1) * L), bos);
      return balanceDocuments(docs, L, P).order.some((d, i) => d !== i);
    });
    assert(moved, `${variant} P=${P}: the balance reorders some window`);
    const balanced = await run(variant, ref.ids, ref.nextIds, { P });
    const plain = await run(variant, ref.ids, ref.nextIds, { P, balance: false });
    const what = `${variant} P=${P}`;
    assertLess(Math.abs(balanced.loss - plain.loss) / plain.loss, 1e-6, `${what} loss`);
    assertLess(relError(balanced.logits, plain.logits), 1e-6, `${what} logits`);
    for (const [name, g] of plain.grads) {
      assertLess(relError(balanced.grads.get(name)!, g), 1e-5, `${what} grad ${name}`);
    }
    assertMatches(balanced, ref, `${what} balanced`);
  }
});
