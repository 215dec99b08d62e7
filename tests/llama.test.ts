/**
 * A tiny Llama against Hugging Face transformers: logits, loss and every parameter's gradient for
 * a fixed batch (fixtures from tests/reference/make_fixtures.py, computed in float64).
 *
 * Tolerances: the CPU backend computes in fp32, whose unit roundoff is 6e-8; through a 2-layer
 * model the relative error stays near 1e-6, so 1e-4 (the bound) is generous. On CUDA the
 * same fp32 path (cuBLASLt without TF32) is held to 1e-4 too. The bf16 path stores every
 * activation and weight in bf16 (unit roundoff 2^-9 = 2e-3); a chain of ~15 rounded ops per layer
 * gives relative errors of a few 1e-3 on logits and up to ~1e-2 on gradients, so bf16 is checked
 * at 2e-2 (logits, loss) and 5e-2 (gradients).
 */
import { fixtures, reference } from "./_fixtures.ts";
import { assert, assertLess } from "./assert.ts";
import { relError, TEST_BACKEND, testDevice } from "./_util.ts";
import { openSafetensors, writeSafetensors } from "../src/io/safetensors.ts";
import { readHfConfig } from "../src/model/hf_config.ts";
import { DecoderModel } from "../src/model/decoder.ts";
import { initRandom, loadWeights, saveModel } from "../src/model/hf.ts";
import { DType } from "../src/runtime/ops.ts";

/** Every parameter's gradient, in layout order, as one array. */
function allGrads(model: DecoderModel): Float32Array {
  return Float32Array.from(model.layout.entries.flatMap((e) => Array.from(model.gradOf(e.name))));
}

async function runFixture(variant: string, dtype: DType) {
  const dir = `${fixtures}${variant}`;
  const cfg = await readHfConfig(dir);
  const ref = await reference(variant);
  const model = new DecoderModel(testDevice(), cfg, {
    dtype,
    batch: 2,
    seqLen: 32,
    vocabChunk: 100,
  });
  model.allocate();
  try {
    await loadWeights(model, dir);
    model.setBatch(ref.ids, ref.labels);
    await model.forward();
    const logits = model.fullLogits();
    const count = ref.labels.filter((l) => l >= 0).length;
    const loss = model.lossSum() / count;
    model.zeroGrads();
    await model.backward(1 / count);
    const gradErrors = new Map<string, number>();
    for (const [name, want] of ref.grads) {
      gradErrors.set(name, relError(model.gradOf(name), want));
    }
    return {
      logitsErr: relError(logits, ref.logits),
      lossErr: Math.abs(loss - ref.loss) / ref.loss,
      gradErrors,
      model,
    };
  } catch (e) {
    model.free();
    throw e;
  }
}

// bf16 storage runs on both backends (the CPU backend rounds the same tensors to bf16).
const cases: [string, DType, number, number][] = [
  ["mha", DType.f32, 1e-4, 1e-4],
  ["gqa", DType.f32, 1e-4, 1e-4],
  ["mha", DType.bf16, 2e-2, 5e-2],
  ["gqa", DType.bf16, 2e-2, 5e-2],
];

for (const [variant, dtype, tolOut, tolGrad] of cases) {
  const label = `${TEST_BACKEND} ${dtype === DType.f32 ? "fp32" : "bf16"} ${variant}`;
  Deno.test(`llama ${label}: logits, loss and every gradient match transformers`, async () => {
    const r = await runFixture(variant, dtype);
    try {
      assertLess(r.logitsErr, tolOut, "logits rel error");
      assertLess(r.lossErr, tolOut, "loss rel error");
      assert(r.gradErrors.size >= 20, "every parameter has a reference gradient");
      for (const [name, err] of r.gradErrors) assertLess(err, tolGrad, `grad ${name}`);
      const worst = Math.max(...r.gradErrors.values());
      console.log(
        `${label}: logits ${r.logitsErr.toExponential(2)}, loss ${
          r.lossErr.toExponential(2)
        }, worst grad ${worst.toExponential(2)}`,
      );
    } finally {
      r.model.free();
    }
  });
}

Deno.test(`llama ${TEST_BACKEND}: a saved checkpoint reloads to the same logits`, async () => {
  const dir = `${fixtures}gqa`;
  const cfg = await readHfConfig(dir);
  const ref = await reference("gqa");
  const out = await Deno.makeTempDir();
  const model = new DecoderModel(testDevice(), cfg, { dtype: DType.f32, batch: 2, seqLen: 32 });
  model.allocate();
  try {
    await loadWeights(model, dir);
    await saveModel(model, out, { dtype: "float32", tokenizerFrom: null });
    const again = new DecoderModel(testDevice(), await readHfConfig(out), {
      dtype: DType.f32,
      batch: 2,
      seqLen: 32,
    });
    again.allocate();
    try {
      await loadWeights(again, out);
      again.setBatch(ref.ids, ref.labels);
      await again.forward();
      assertLess(relError(again.fullLogits(), ref.logits), 1e-4, "reloaded logits");
    } finally {
      again.free();
    }
  } finally {
    model.free();
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test(`llama ${TEST_BACKEND}: checkpoint boundary, MLP tiling and offloaded checkpoints give the same gradients`, async () => {
  const dir = `${fixtures}mha`;
  const cfg = await readHfConfig(dir);
  const ref = await reference("mha");
  const count = ref.labels.filter((l) => l >= 0).length;
  const grads: Float32Array[] = [];
  const variants = [
    { checkpointBoundary: "attention" as const },
    { checkpointBoundary: "layer" as const },
    { mlpTile: 24 }, // 64 tokens in tiles of 24, 24 and 16
    { offloadCheckpoints: true },
    { offloadCheckpoints: true, checkpointBoundary: "layer" as const },
  ];
  let logits: Float32Array | null = null;
  for (const variant of variants) {
    const model = new DecoderModel(testDevice(), cfg, {
      dtype: DType.f32,
      batch: 2,
      seqLen: 32,
      ...variant,
    });
    model.allocate();
    try {
      await loadWeights(model, dir);
      model.setBatch(ref.ids, ref.labels);
      await model.forward();
      const now = model.fullLogits();
      if (logits) assertLess(relError(now, logits), 1e-6, `logits ${JSON.stringify(variant)}`);
      logits ??= now;
      const loss = model.lossSum() / count;
      assertLess(Math.abs(loss - ref.loss) / ref.loss, 1e-5, `loss ${JSON.stringify(variant)}`);
      model.zeroGrads();
      await model.backward(1 / count);
      grads.push(allGrads(model));
    } finally {
      model.free();
    }
  }
  assertLess(relError(grads[1], grads[0]), 1e-6, "layer vs attention boundary");
  assertLess(relError(grads[2], grads[0]), 1e-6, "MLP in tiles vs whole");
  assertLess(relError(grads[3], grads[0]), 1e-6, "checkpoints offloaded to the host");
  assertLess(relError(grads[4], grads[0]), 1e-6, "offloaded, with the layer boundary");
  assertLess(
    relError(
      grads[0].subarray(0, 1000),
      ref.grads.get("model.embed_tokens.weight")!.subarray(0, 1000),
    ),
    1e-4,
    "and against transformers",
  );
});

for (const dtype of [DType.f32, DType.bf16]) {
  const name = dtype === DType.f32 ? "fp32" : "bf16";
  Deno.test(`llama ${TEST_BACKEND} ${name}: token tiles that do not divide the sequence give the untiled model`, async () => {
    // Everything but attention runs in token tiles (layer.ts): 64 tokens in tiles of 24, 24 and 16
    // against one tile of 64, with GQA (k, v narrower than q), packed documents and both checkpoint
    // boundaries. Tiles change no per-token arithmetic; only the weight gradients' fp32 sums over
    // tokens are regrouped by tile, so both dtypes agree to float reordering (seen: 2e-7; a
    // mishandled tile boundary gives 1e-3 or more).
    const dir = `${fixtures}gqa`;
    const cfg = await readHfConfig(dir);
    const ref = await reference("gqa");
    const documents = [[0, 11, 29], [0, 20]]; // per sequence of 32 tokens
    for (const checkpointBoundary of ["attention", "layer"] as const) {
      const runs: { logits: Float32Array; loss: number; grads: Map<string, Float32Array> }[] = [];
      for (const mlpTile of [64, 24]) {
        const model = new DecoderModel(testDevice(), cfg, {
          dtype,
          batch: 2,
          seqLen: 32,
          vocabChunk: 100,
          mlpTile,
          checkpointBoundary,
        });
        model.allocate();
        try {
          await loadWeights(model, dir);
          model.setBatch(ref.ids, ref.labels, undefined, documents);
          await model.forward();
          const logits = model.fullLogits(), loss = model.lossSum();
          model.zeroGrads();
          await model.backward(1 / 64);
          const grads = new Map(model.layout.entries.map((e) => [e.name, model.gradOf(e.name)]));
          runs.push({ logits, loss, grads });
        } finally {
          model.free();
        }
      }
      const [whole, tiled] = runs, at = `${name}, ${checkpointBoundary} boundary`;
      assertLess(relError(tiled.logits, whole.logits), 1e-6, `logits (${at})`);
      assertLess(Math.abs(tiled.loss - whole.loss) / whole.loss, 1e-6, `loss (${at})`);
      // Every parameter's gradient on its own (a small one could hide in a global error).
      for (const [param, want] of whole.grads) {
        const got = tiled.grads.get(param)!;
        assertLess(relError(got, want), 1e-6, `gradient of ${param} (${at})`);
      }
    }
  });
}

Deno.test(`llama ${TEST_BACKEND}: offloaded checkpoints reuse their device slots safely (5 layers, 2 micro-batches)`, async () => {
  // Five layers cycle each parity slot more than once, and a second micro-batch runs its forward
  // after the first one's backward loads: a slot read after being refilled would change a gradient.
  const cfg = { ...(await readHfConfig(`${fixtures}mha`)), numLayers: 5 };
  const T = 32, ids = Int32Array.from({ length: 2 * T }, (_, i) => (i * 7 + 3) % cfg.vocabSize);
  const labels = Int32Array.from({ length: 2 * T }, (_, i) => (i * 5 + 1) % cfg.vocabSize);
  const grads: Float32Array[] = [];
  for (
    const variant of [{}, { offloadCheckpoints: true }, {
      offloadCheckpoints: true,
      checkpointBoundary: "layer" as const,
    }]
  ) {
    const model = new DecoderModel(testDevice(), cfg, {
      dtype: DType.f32,
      batch: 2,
      seqLen: T,
      ...variant,
    });
    model.allocate();
    try {
      initRandom(model, 7);
      model.zeroGrads();
      for (const shift of [0, 1]) {
        model.setBatch(ids.map((v) => (v + shift) % cfg.vocabSize), labels);
        await model.forward();
        model.lossSum();
        await model.backward(1 / (2 * T));
      }
      grads.push(allGrads(model));
    } finally {
      model.free();
    }
  }
  // The same arithmetic in the same order: equal up to rounding (1e-6 as above).
  assertLess(relError(grads[1], grads[0]), 1e-6, "offloaded checkpoints");
  assertLess(relError(grads[2], grads[0]), 1e-6, "offloaded, layer boundary");
});

Deno.test(`llama ${TEST_BACKEND}: integer-typed weights are refused, naming the tensor`, async () => {
  // The mha fixture with one float32 tensor relabelled I32 (same bytes): without the dtype check
  // it would load as integers converted to floats and train nonsense.
  const dir = `${fixtures}mha`, out = await Deno.makeTempDir();
  const src = await openSafetensors(dir);
  const bad = "model.layers.0.mlp.up_proj.weight";
  try {
    const tensors = [];
    for (const name of src.names()) {
      const info = src.info(name);
      const dtype = name === bad ? "I32" as const : info.dtype;
      tensors.push({ name, dtype, shape: info.shape, data: await src.readBytes(name) });
    }
    await writeSafetensors(`${out}/model.safetensors`, tensors);
    await Deno.copyFile(`${dir}/config.json`, `${out}/config.json`);
    const model = new DecoderModel(testDevice(), await readHfConfig(out), {
      dtype: DType.f32,
      batch: 1,
      seqLen: 8,
    });
    model.allocate();
    try {
      const error = await loadWeights(model, out).then(() => null, (e: Error) => e);
      assert(error?.message.includes(`tensor ${bad} is stored as I32`), String(error));
    } finally {
      model.free();
    }
  } finally {
    src.close();
    await Deno.remove(out, { recursive: true });
  }
});
