/**
 * Model families beyond Llama (src/model/families/) against Hugging Face transformers: a tiny
 * random Qwen2 (q/k/v biases, tied embeddings), Qwen3 (per-head q/k norms, heads x head_dim !=
 * hidden), Qwen2 with use_sliding_window (layer 0 full, layer 1 windowed) and Mistral (sliding
 * window 8 over 32 tokens) give transformers' logits, loss and every gradient (fixtures from
 * tests/reference/make_family_fixtures.py, computed in float64); their checkpoints save under the
 * family's model_type and class; unsupported families are refused naming the supported ones.
 * Tolerances as in llama.test.ts: fp32 1e-4; bf16 2e-2 (logits, loss) and 5e-2 (gradients).
 */
import { fixtures, reference } from "./_fixtures.ts";
import { assert, assertEquals, assertLess, assertThrows } from "./assert.ts";

/** The error `fn` throws; asserts its message includes `text`. */
function refused(fn: () => unknown, text: string): Error {
  const e = assertThrows(fn, Error);
  assert(e.message.includes(text), `expected ${JSON.stringify(text)} in: ${e.message}`);
  return e;
}
import { relError, TEST_BACKEND, testDevice } from "./_util.ts";
import { openSafetensors } from "../src/io/safetensors.ts";
import { parseHfConfig, readHfConfig, toHfConfig } from "../src/model/hf_config.ts";
import { DecoderModel } from "../src/model/decoder.ts";
import { initRandom, loadWeights, saveModel } from "../src/model/hf.ts";
import { presetConfig, PRESETS } from "../src/model/presets.ts";
import { paramCount, windowDescription } from "../src/model/config.ts";
import { DType } from "../src/runtime/ops.ts";

/** One forward and backward of the fixture's batch; `mlpTile` splits the token tiles. */
async function runFixture(variant: string, dtype: DType, mlpTile?: number) {
  const dir = `${fixtures}${variant}`;
  const cfg = await readHfConfig(dir);
  const ref = await reference(variant);
  const model = new DecoderModel(testDevice(), cfg, {
    dtype,
    batch: 2,
    seqLen: 32,
    vocabChunk: 50,
    mlpTile,
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
    for (const [name, want] of ref.grads) gradErrors.set(name, relError(model.gradOf(name), want));
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

const cases: [string, DType, number, number, number | undefined][] = [
  ["qwen2", DType.f32, 1e-4, 1e-4, undefined],
  ["qwen3", DType.f32, 1e-4, 1e-4, undefined],
  ["qwen2", DType.f32, 1e-4, 1e-4, 24], // token tiles that do not divide the 64 tokens
  ["qwen3", DType.f32, 1e-4, 1e-4, 24],
  ["qwen2", DType.bf16, 2e-2, 5e-2, undefined],
  ["qwen3", DType.bf16, 2e-2, 5e-2, undefined],
  ["qwen2-window", DType.f32, 1e-4, 1e-4, undefined],
  ["qwen2-window", DType.bf16, 2e-2, 5e-2, undefined],
  ["qwen3-window", DType.f32, 1e-4, 1e-4, undefined],
  ["mistral", DType.f32, 1e-4, 1e-4, undefined],
  ["mistral", DType.f32, 1e-4, 1e-4, 24],
  ["mistral", DType.bf16, 2e-2, 5e-2, undefined],
];

for (const [variant, dtype, tolOut, tolGrad, tile] of cases) {
  const label = `${TEST_BACKEND} ${dtype === DType.f32 ? "fp32" : "bf16"} ${variant}` +
    (tile ? ` (tiles of ${tile})` : "");
  Deno.test(`families ${label}: logits, loss and every gradient match transformers`, async () => {
    const r = await runFixture(variant, dtype, tile);
    try {
      assertLess(r.logitsErr, tolOut, "logits rel error");
      assertLess(r.lossErr, tolOut, "loss rel error");
      assertEquals(r.gradErrors.size, r.model.layout.entries.length, "a reference per parameter");
      for (const [name, err] of r.gradErrors) assertLess(err, tolGrad, `grad ${name}`);
      const worst = [...r.gradErrors].reduce((a, b) => (b[1] > a[1] ? b : a));
      console.log(
        `${label}: logits ${r.logitsErr.toExponential(2)}, loss ${r.lossErr.toExponential(2)}, ` +
          `worst grad ${worst[1].toExponential(2)} (${worst[0]})`,
      );
    } finally {
      r.model.free();
    }
  });
}

Deno.test("families: the fixtures' parameters are the families' (biases, q/k norms)", async () => {
  const q2 = await readHfConfig(`${fixtures}qwen2`), q3 = await readHfConfig(`${fixtures}qwen3`);
  assertEquals([q2.modelType, q2.qkvBias, q2.qkNorm, q2.tieWordEmbeddings], [
    "qwen2",
    true,
    undefined,
    true,
  ]);
  assertEquals([q3.modelType, q3.qkNorm, q3.headDim, q3.numHeads * q3.headDim, q3.hiddenSize], [
    "qwen3",
    true,
    16,
    64,
    32,
  ]);
});

for (
  const [variant, cls] of [
    ["qwen2", "Qwen2ForCausalLM"],
    ["qwen3", "Qwen3ForCausalLM"],
    ["qwen2-window", "Qwen2ForCausalLM"],
    ["qwen3-window", "Qwen3ForCausalLM"],
    ["mistral", "MistralForCausalLM"],
  ]
) {
  Deno.test(`families ${TEST_BACKEND} ${variant}: a saved checkpoint names ${cls} and reloads to the same logits`, async () => {
    const dir = `${fixtures}${variant}`;
    const cfg = await readHfConfig(dir);
    const ref = await reference(variant);
    const out = await Deno.makeTempDir();
    const opts = { dtype: DType.f32, batch: 2, seqLen: 32 };
    const model = new DecoderModel(testDevice(), cfg, opts);
    model.allocate();
    try {
      await loadWeights(model, dir);
      await saveModel(model, out, { dtype: "float32", tokenizerFrom: null });
      const json = JSON.parse(await Deno.readTextFile(`${out}/config.json`));
      assertEquals(json.model_type, variant.replace("-window", ""));
      assertEquals(json.architectures, [cls]);
      if (variant === "mistral") assertEquals(json.sliding_window, 8);
      else if (variant.endsWith("-window")) {
        assertEquals(
          [json.use_sliding_window, json.sliding_window, json.max_window_layers, json.layer_types],
          [true, variant === "qwen2-window" ? 8 : 6, 1, ["full_attention", "sliding_attention"]],
        );
      } else assertEquals(json.use_sliding_window, false);
      const saved = await openSafetensors(out);
      try {
        for (const e of model.layout.entries) assert(saved.has(e.name), `saved ${e.name}`);
        if (variant.startsWith("qwen2")) assert(saved.has("model.layers.1.self_attn.v_proj.bias"));
        if (variant.startsWith("qwen3")) {
          assert(saved.has("model.layers.1.self_attn.k_norm.weight"));
        }
      } finally {
        saved.close();
      }
      const again = new DecoderModel(testDevice(), await readHfConfig(out), opts);
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
}

Deno.test("families: random initialisation gives zero biases and unit q/k norms", async () => {
  for (const variant of ["qwen2", "qwen3"]) {
    const cfg = await readHfConfig(`${fixtures}${variant}`);
    const model = new DecoderModel(testDevice(), cfg, { dtype: DType.f32, batch: 1, seqLen: 8 });
    model.allocate();
    try {
      initRandom(model, 7);
      for (const e of model.layout.entries) {
        const v = await model.getParam(e.name);
        if (e.name.endsWith(".bias")) assert(v.every((x) => x === 0), e.name);
        else if (e.name.includes("_norm.")) assert(v.every((x) => x === 1), e.name);
      }
    } finally {
      model.free();
    }
  }
});

const QWEN2_JSON = {
  model_type: "qwen2",
  architectures: ["Qwen2ForCausalLM"],
  vocab_size: 128,
  hidden_size: 32,
  intermediate_size: 64,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  use_sliding_window: false,
  sliding_window: 4096,
};

Deno.test("families: Qwen's use_sliding_window as transformers reads it (max_window_layers, layer_types)", () => {
  const parse = (over: Record<string, unknown>, type = "qwen2") => {
    const c = parseHfConfig({ ...QWEN2_JSON, model_type: type, ...over }, "q/config.json");
    return [c.slidingWindow ?? 0, c.windowFromLayer ?? null];
  };
  // Off: no window whatever sliding_window says (transformers sets it to None).
  assertEquals(parse({}), [0, null]);
  // On: the layers from max_window_layers on (default 28: none of 2 layers), or as layer_types lists.
  assertEquals(parse({ use_sliding_window: true }), [0, null]);
  assertEquals(parse({ use_sliding_window: true, max_window_layers: 1 }), [4096, 1]);
  assertEquals(parse({ use_sliding_window: true, max_window_layers: 0 }, "qwen3"), [4096, 0]);
  const types = (a: string, b: string) => ({ use_sliding_window: true, layer_types: [a, b] });
  // layer_types wins over max_window_layers, as in transformers.
  assertEquals(parse({ ...types("full_attention", "sliding_attention"), max_window_layers: 0 }), [
    4096,
    1,
  ]);
  assertEquals(parse(types("full_attention", "full_attention")), [0, null]);
  for (
    const [over, text] of <[Record<string, unknown>, string][]> [
      [types("sliding_attention", "full_attention"), "interleaves"],
      [{ ...types("full_attention", "sliding_attention"), use_sliding_window: false }, "no window"],
      [{ use_sliding_window: true, layer_types: ["full_attention"] }, "each of the 2 layers"],
      [{ use_sliding_window: true, layer_types: ["full_attention", "chunked"] }, "layer_types"],
      [{ use_sliding_window: true, sliding_window: null, max_window_layers: 1 }, "sliding_window"],
      [{ use_sliding_window: true, max_window_layers: -1 }, "max_window_layers"],
    ]
  ) refused(() => parseHfConfig({ ...QWEN2_JSON, ...over }, "q/config.json"), text);
  // Said so in train's header and plan.
  const windowed = parseHfConfig(
    { ...QWEN2_JSON, use_sliding_window: true, max_window_layers: 1 },
    "q",
  );
  assertEquals(windowDescription(windowed), "sliding window of 4096 tokens on layers 1..1");
  assertEquals(windowDescription(presetConfig("mistral-7b-v0.1")), "sliding window of 4096 tokens");
  assertEquals(windowDescription(presetConfig("qwen2.5-7b")), "");
  // Written back as transformers would read it again.
  const cfg = parseHfConfig({ ...QWEN2_JSON, use_sliding_window: true, max_window_layers: 1 }, "q");
  const again = parseHfConfig(toHfConfig(cfg), "again");
  assertEquals([again.slidingWindow, again.windowFromLayer], [4096, 1]);
});

Deno.test("families: unsupported options and families are refused, naming what is supported", () => {
  refused(
    () =>
      parseHfConfig({ ...QWEN2_JSON, model_type: "qwen3", attention_bias: true }, "q/config.json"),
    `"attention_bias" is true`,
  );
  refused(
    () => parseHfConfig({ ...QWEN2_JSON, model_type: "mistral", sliding_window: 0 }, "m/c.json"),
    `"sliding_window" is 0`,
  );
  refused(
    () => parseHfConfig({ ...QWEN2_JSON, model_type: "mistral", sliding_window: "4k" }, "m/c.json"),
    `"sliding_window" is "4k"`,
  );
  // Mistral's window is taken (v0.1: 4096) and written back.
  const mistral = parseHfConfig({ ...QWEN2_JSON, model_type: "mistral" }, "m/config.json");
  assertEquals([mistral.modelType, mistral.slidingWindow], ["mistral", 4096]);
  assertEquals(toHfConfig(mistral).sliding_window, 4096);
  for (const [t, why] of [["gemma2", "soft-capping"], ["mixtral", "mixture of experts"]]) {
    const e = refused(
      () => parseHfConfig({ ...QWEN2_JSON, model_type: t }, "g/config.json"),
      why,
    );
    assert(e.message.includes("llama (") && e.message.includes("qwen2 ("), e.message);
    assert(e.message.includes("qwen3 ("), e.message);
  }
  // No model_type: the architecture names the family.
  const { model_type: _, ...noType } = QWEN2_JSON;
  assertEquals(parseHfConfig(noType, "x").modelType, "qwen2");
  assertEquals(
    parseHfConfig({ ...QWEN2_JSON, model_type: "mistral", sliding_window: null }, "x")
      .modelType,
    "mistral",
  );
});

Deno.test("families: presets of the new families, sized from their HF configs", () => {
  for (const name of ["qwen2.5-7b", "qwen3-8b", "llama-3.1-8b", "mistral-7b-v0.1"]) {
    assert(name in PRESETS, name);
  }
  // Mistral-7B-v0.1: 7.24B parameters, a 4096-token sliding window.
  assertLess(Math.abs(paramCount(presetConfig("mistral-7b-v0.1")) / 7.24e9 - 1), 0.005);
  assertEquals(presetConfig("mistral-7b-v0.1").slidingWindow, 4096);
  // Published parameter counts: Qwen2.5-7B 7.62B, Qwen3-8B 8.19B, Llama-3.1-8B 8.03B.
  assertLess(Math.abs(paramCount(presetConfig("qwen2.5-7b")) / 7.62e9 - 1), 0.005);
  assertLess(Math.abs(paramCount(presetConfig("qwen3-8b")) / 8.19e9 - 1), 0.005);
  assertLess(Math.abs(paramCount(presetConfig("llama-3.1-8b")) / 8.03e9 - 1), 0.005);
  // The small ones of the model cards (0.49B, 0.6B: rounded, so 1%), tied embeddings.
  assertLess(Math.abs(paramCount(presetConfig("qwen2.5-0.5b")) / 0.49e9 - 1), 0.01);
  assertLess(Math.abs(paramCount(presetConfig("qwen3-0.6b")) / 0.6e9 - 1), 0.01);
  assertEquals(presetConfig("qwen3-0.6b").tieWordEmbeddings, true);
  // Qwen2.5-0.5B's vocabulary is 151936 (the 7B's is 152064).
  assertEquals(presetConfig("qwen2.5-0.5b").vocabSize, 151936);
  assertEquals(presetConfig("Qwen2.5-7B").qkvBias, true);
  assertEquals(presetConfig("qwen3-8b").qkNorm, true);
});
