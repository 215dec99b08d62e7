// `--config FILE` (issue 25, section 3): training arguments from JSON or YAML under HF's names,
// snake_case, kebab-case or camelCase; flags override the file; unknown keys and bad values are
// errors naming the key and the file; training_args.json fed back gives the same resolved options
// (a property over generated option sets, and end to end through the CLI). Also `presets`.

import { assert, assertEquals, assertThrows } from "./assert.ts";
import { fc, runs } from "./_properties.ts";
import { join } from "node:path";
import { runCli } from "./_util.ts";
import { parseConfigText, readConfigFile, withConfigFile } from "../src/train/config_file.ts";
import { OptionError, resolveTrainOptions } from "../src/train/resolve_options.ts";
import { TRAIN_SPECS } from "../src/train/option_table.ts";
import { saveTrainingArgs } from "../src/train/state.ts";
import type { TrainOptions } from "../src/train/options.ts";

const TMP = await Deno.makeTempDir({ prefix: "distflash-config-" });
addEventListener("unload", () => Deno.removeSync(TMP, { recursive: true }));
let fileNo = 0;
async function write(ext: string, text: string): Promise<string> {
  const path = join(TMP, `c${fileNo++}${ext}`);
  await Deno.writeTextFile(path, text);
  return path;
}

/** `fn` throws a `type` whose message contains `text`. */
function throwsWith(fn: () => unknown, type: typeof OptionError, text: string): void {
  const e = assertThrows(fn, type);
  assert(e.message.includes(text), `"${e.message}" lacks "${text}"`);
}

const resolveWith = (raw: Record<string, unknown>) => {
  const { input, sources } = withConfigFile(raw);
  return resolveTrainOptions(input, sources).options;
};

Deno.test("config: YAML under HF, snake, kebab and camel names; flags override it", async () => {
  const file = await write(
    ".yaml",
    [
      "# an HF user's arguments",
      "model_name_or_path: debug-tiny",
      "data_path: corpus.jsonl",
      "learning_rate: 2e-5",
      "per_device_train_batch_size: 4",
      "bf16: True",
      "lr-scheduler-type: cosine",
      "warmupRatio: 0.03",
      "fsdp: full_shard auto_wrap",
      "tf32: true",
      "report_to:",
      "  - tensorboard",
      "resume_from_checkpoint: null",
    ].join("\n"),
  );
  const o = resolveWith({ config: file, learningRate: "1e-4", bf16: "false" });
  assertEquals(
    [o.model, o.dataPath, o.perDeviceTrainBatchSize, o.lrSchedulerType, o.warmupRatio],
    ["debug-tiny", "corpus.jsonl", 4, "cosine", 0.03],
  );
  assertEquals([o.fsdp, o.reportTo, o.tf32, o.resumeFromCheckpoint], [
    "full_shard auto_wrap",
    "tensorboard",
    "true",
    undefined,
  ]);
  assertEquals([o.learningRate, o.bf16], [1e-4, false]); // the command line wins
  assertEquals(resolveWith({ config: file }).learningRate, 2e-5);
});

Deno.test("config: JSON with HF's lists (fsdp, report_to) as TrainingArguments saves them", async () => {
  const file = await write(
    ".json",
    JSON.stringify({
      model: "debug-tiny",
      synthetic: true,
      fsdp: ["full_shard", "auto_wrap"],
      report_to: ["tensorboard", "all"],
      save_steps: 7,
    }),
  );
  const o = resolveWith({ config: file });
  assertEquals([o.fsdp, o.reportTo, o.saveSteps, o.synthetic], [
    "full_shard auto_wrap",
    "tensorboard,all",
    7,
    true,
  ]);
});

Deno.test("config: unknown keys, bad values and bad files are errors naming key and file", async () => {
  const unknown = await write(".yaml", "model: debug-tiny\nsynthetic: true\ndo_train: true\n");
  throwsWith(
    () => resolveWith({ config: unknown }),
    OptionError,
    `--config ${unknown}: unknown key "do_train"`,
  );
  // The same checks as the flags', with where the value was written.
  const bad = await write(".yml", "model: debug-tiny\nsynthetic: true\nlearning_rate: fast\n");
  throwsWith(
    () => resolveWith({ config: bad }),
    OptionError,
    `--learning-rate: expected a number, got "fast" (${bad}: learning_rate)`,
  );
  const range = await write(".json", '{"model": "debug-tiny", "synthetic": true, "seed": -1}');
  throwsWith(
    () => resolveWith({ config: range }),
    OptionError,
    `--seed: must be >= 0, got -1 (${range}: seed)`,
  );
  // A bad value in the file overridden on the command line is not an error.
  assertEquals(resolveWith({ config: bad, learningRate: "1e-3" }).learningRate, 1e-3);
  const twice = await write(".yaml", "learning_rate: 1\nlearningRate: 2\n");
  throwsWith(
    () => readConfigFile(twice),
    OptionError,
    `"learningRate" and "learning_rate" name the same option`,
  );
  throwsWith(() => parseConfigText("[1, 2]", "list.yaml"), OptionError, "expected a mapping");
  throwsWith(() => parseConfigText("{", "x.json"), OptionError, "x.json: not valid JSON");
  throwsWith(
    () => parseConfigText("seed: [1, 2]", "y.yaml"),
    OptionError,
    `"seed" takes one value, not a list`,
  );
  throwsWith(
    () => readConfigFile(join(TMP, "missing.yaml")),
    OptionError,
    "missing.yaml: cannot read it",
  );
});

/** A value the option's row accepts (strings: ones that pass the cross-option rules). */
function valueOf(key: keyof TrainOptions): fc.Arbitrary<unknown> | undefined {
  const spec = TRAIN_SPECS.find((s) => s.key === key)!;
  switch (key) {
    case "model":
    case "modelNameOrPath":
      return undefined; // set below, once
    case "fsdp":
      return fc.constantFrom("full_shard", "full_shard auto_wrap", "no_shard", "offload");
    case "reportTo":
      return fc.constantFrom("none", "tensorboard", "all");
    case "evalDataPath":
    case "evaluationStrategy":
    case "evalStrategy":
    case "validationSplitPercentage":
    case "synthetic":
    case "dataPath":
    case "nodeRank":
      return undefined; // tied to other options: drawn together below
  }
  const double = (min: number, max: number) =>
    fc.double({ min, max, noNaN: true, noDefaultInfinity: true }).map((x) => x === 0 ? 0 : x);
  switch (spec.kind) {
    case "bool":
      return fc.boolean();
    case "int":
      return fc.integer({ min: spec.min ?? (spec.positive ? 1 : 0), max: spec.max ?? 1 << 30 });
    case "float":
      return double(spec.min ?? 0, spec.max ?? 1e6).filter((x) => !spec.positive || x > 0);
    case "choice":
      return fc.constantFrom(...spec.choices!);
    case "string":
      return fc.string({ unit: "grapheme", minLength: 1, maxLength: 12 });
  }
}

const optionSets = fc.record(
  {
    ...Object.fromEntries(
      TRAIN_SPECS.map((s) => [s.key, valueOf(s.key)]).filter(([, a]) => a !== undefined),
    ) as Record<string, fc.Arbitrary<unknown>>,
  },
  { requiredKeys: [] },
).chain((rest) =>
  fc.record({
    model: fc.constantFrom("debug-tiny", "llama-2-7b", "some/folder"),
    hfName: fc.boolean(),
    data: fc.oneof(
      fc.constant({ synthetic: true }),
      fc.record({ dataPath: fc.constantFrom("d.jsonl", "/abs/data.pkl") }),
      fc.record({
        dataPath: fc.constant("d.jsonl"),
        evalDataPath: fc.constant("e.jsonl"),
        evalStrategy: fc.constantFrom("steps", "epoch", "no"),
      }),
      fc.record({
        dataPath: fc.constant("d.jsonl"),
        validationSplitPercentage: fc.double({ min: 0.5, max: 50, noNaN: true }),
        evaluationStrategy: fc.constantFrom("steps", "epoch", "no"),
      }),
    ),
  }).map(({ model, hfName, data }) => {
    const input: Record<string, unknown> = { ...rest, ...data };
    input[hfName ? "modelNameOrPath" : "model"] = model;
    if (input.offloadGradients === true) delete input.offloadOptimizer;
    input.nodeRank = Math.max(0, ((input.nnodes as number) ?? 1) - 1);
    return input;
  })
);

Deno.test("config: training_args.json fed back through --config resolves to the same options", async () => {
  let n = 0;
  await fc.assert(
    fc.asyncProperty(optionSets, async (input) => {
      const first = resolveTrainOptions(input).options;
      const dir = join(TMP, `args${n++}`);
      await saveTrainingArgs(dir, first);
      const again = resolveWith({ config: join(dir, "training_args.json") });
      assertEquals(again, first);
    }),
    runs(150),
  );
});

Deno.test("config: a run repeated from its training_args.json, and plan --config", async () => {
  const data = join(TMP, "tiny.jsonl");
  await Deno.writeTextFile(
    data,
    `${JSON.stringify({ text: "a tale of two cities" })}\n`.repeat(30),
  );
  const cfg = await write(
    ".yaml",
    `model: debug-tiny\ndata_path: ${data}\nmax_steps: 3\nmodel_max_length: 16\n` +
      `learning_rate: 1e-3\ndevice: cpu\nsave_strategy: "no"\nlogging_steps: 1\n`,
  );
  const out1 = join(TMP, "run1"), out2 = join(TMP, "run2");
  const r1 = await runCli(["train", "--config", cfg, "--output-dir", out1, "--max-steps", "2"]);
  assertEquals(r1.code, 0, r1.stderr);
  const args1 = JSON.parse(await Deno.readTextFile(join(out1, "training_args.json")));
  assertEquals([args1.max_steps, args1.learning_rate, args1.output_dir], [2, 1e-3, out1]);
  const r2 = await runCli([
    "train",
    "--config",
    join(out1, "training_args.json"),
    "--output-dir",
    out2,
  ]);
  assertEquals(r2.code, 0, r2.stderr);
  const args2 = JSON.parse(await Deno.readTextFile(join(out2, "training_args.json")));
  assertEquals({ ...args2, output_dir: out1 }, args1);
  // The same run's loss: the repeat is the same run.
  const losses = async (dir: string) =>
    (await Deno.readTextFile(join(dir, "metrics.jsonl"))).trim().split("\n").map((l) =>
      JSON.parse(l).loss
    );
  assertEquals(await losses(out2), await losses(out1));
  const bad = await runCli(["train", "--config", cfg, "--warmup-ratio", "2"]);
  assertEquals(bad.code, 1);
  assert(bad.stderr.includes("--warmup-ratio: must be <= 1"), bad.stderr);
  const plan = await runCli(["plan", "--config", cfg, "--gpu-memory", "1"]);
  assertEquals(plan.code, 0, plan.stderr);
  assert(plan.stdout.includes("for debug-tiny, 1 x 16 tokens"), plan.stdout);
});

Deno.test("presets: names, parameter counts and shapes", async () => {
  const r = await runCli(["presets"]);
  assertEquals(r.code, 0, r.stderr);
  // Published counts: Llama-2-7B 6,738,415,616; Llama-2-13B 13,015,864,320; Llama-3-8B
  // 8,030,261,248; TinyLlama-1.1B 1,100,048,384 (the models' safetensors index totals / 2 bytes).
  for (
    const [name, count, shape] of [
      ["llama-2-7b", "6.74B (6738415616)", /32\s+4096\s+11008\s+32\s+32\s+128\s+32000/],
      ["llama-2-13b", "13.02B (13015864320)", /40\s+5120\s+13824\s+40\s+40\s+128\s+32000/],
      ["llama-3-8b", "8.03B (8030261248)", /32\s+4096\s+14336\s+32\s+8\s+128\s+128256/],
      ["tinyllama-1.1b", "1.10B (1100048384)", /22\s+2048\s+5632\s+32\s+4\s+64\s+32000/],
      // Qwen2.5-0.5B 494,032,768 and Qwen3-0.6B 596,049,920 (transformers' own count of the same
      // configs, tests/families.test.ts has the model cards' rounded figures).
      ["qwen2.5-0.5b", "494.0M (494032768)", /24\s+896\s+4864\s+14\s+2\s+64\s+151936/],
      ["qwen3-0.6b", "596.0M (596049920)", /28\s+1024\s+3072\s+16\s+8\s+128\s+151936/],
    ] as const
  ) {
    const line = r.stdout.split("\n").find((l) => l.startsWith(name + " "));
    assert(line?.includes(count) && shape.test(line), `${name}: ${line}\n${r.stdout}`);
  }
  // The family and the window columns.
  const mistral = r.stdout.split("\n").find((l) => l.startsWith("mistral-7b-v0.1 "));
  assert(/^mistral-7b-v0\.1\s+mistral\s.*\s4096$/.test(mistral ?? ""), `${mistral}`);
  assert(/^qwen3-8b\s+qwen3\s.*\s-$/m.test(r.stdout), r.stdout);
  const json = await runCli(["presets", "--json"]);
  const rows = JSON.parse(json.stdout) as { name: string; parameters: number }[];
  // debug-tiny by hand: embeddings and head 2 x 259 x 64, per layer q,o 64x64 each, k,v 32x64
  // each, MLP 3 x 176 x 64, two norms of 64; final norm 64.
  const layer = 2 * 64 * 64 + 2 * 32 * 64 + 3 * 176 * 64 + 2 * 64;
  assertEquals(
    rows.find((p) => p.name === "debug-tiny")!.parameters,
    2 * 259 * 64 + 2 * layer + 64,
  );
});
