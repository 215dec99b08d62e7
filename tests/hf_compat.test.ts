// What Hugging Face users type: the paper's seed command, verbatim (snake_case flags, the HF
// trainer's names, a .pkl dataset of FastChat conversations), on 2 CPU ranks with a small model.

import { assert, assertEquals, assertLess, assertThrows } from "./assert.ts";
import {
  OptionError,
  reportsToTensorBoard,
  resolveTrainOptions,
} from "../src/train/resolve_options.ts";
import { join } from "node:path";
import { existsSync } from "node:fs";
import { ByteTokenizer, loadTokenizer, openDataset } from "../src/data/mod.ts";
import { runCli } from "./_util.ts";
import { upgradeLogHistory } from "../src/train/state.ts";

/** The keys of transformers' TrainerState (5.x) as trainer_state.json holds them. */
const HF_STATE_FIELDS = [
  "best_global_step",
  "best_metric",
  "best_model_checkpoint",
  "epoch",
  "eval_steps",
  "global_step",
  "is_hyper_param_search",
  "is_local_process_zero",
  "is_world_process_zero",
  "log_history",
  "logging_steps",
  "max_steps",
  "num_input_tokens_seen",
  "num_train_epochs",
  "save_steps",
  "stateful_callbacks",
  "total_flos",
  "train_batch_size",
  "trial_name",
  "trial_params",
];

const PICKLE = new URL("./fixtures/pickle/train_chat.pkl", import.meta.url).pathname;

Deno.test("hf: the paper's seed command runs verbatim on 2 ranks with a .pkl dataset", async () => {
  const out = await Deno.makeTempDir();
  try {
    const L = 128, epochs = 0.25;
    // The command of the paper's README (LightSeq), with a small model, data and length. The one
    // added flag (the last) pins CPU ranks, so the test means the same on a host with GPUs.
    // deno-fmt-ignore
    const command = [
      "--nproc-per-node=2", "--model_name_or_path", "debug-tiny", "--data_path", PICKLE,
      "--bf16", "--output_dir", out, "--num_train_epochs", `${epochs}`,
      "--per_device_train_batch_size", "1", "--per_device_eval_batch_size", "4",
      "--gradient_accumulation_steps", "1", "--evaluation_strategy", "no",
      "--save_strategy", "steps", "--save_steps", "10", "--save_total_limit", "1",
      "--learning_rate", "2e-5", "--weight_decay", "0.", "--warmup_ratio", "0.03",
      "--lr_scheduler_type", "cosine", "--logging_steps", "1", "--fsdp", "full_shard auto_wrap",
      "--fsdp_transformer_layer_cls_to_wrap", "LlamaDecoderLayer", "--tf32", "True",
      "--model_max_length", `${L}`, "--gradient_checkpointing", "True",
      "--lazy_preprocess", "True", "--report_to", "none",
      "--device", "cpu",
    ];
    const r = await runCli(["train", ...command]);
    assertEquals(r.code, 0, r.stderr);
    // Steps expected from the same records read through the JSON Lines path: sp = 2 ranks share
    // each sequence, so one window per step.
    const records = JSON.parse(
      await Deno.readTextFile(new URL("./fixtures/pickle/expected.json", import.meta.url)),
    )["train_chat.pkl"] as unknown[];
    const jsonl = join(out, "same.jsonl");
    await Deno.writeTextFile(jsonl, records.map((x) => JSON.stringify(x)).join("\n"));
    const ds = await openDataset({ dataPath: jsonl, tokenizer: new ByteTokenizer(), seqLen: L });
    const steps = Math.ceil(epochs * ds.numWindows);
    const metrics = (await Deno.readTextFile(join(out, "metrics.jsonl"))).trim().split("\n")
      .map((l) => JSON.parse(l));
    assertEquals(metrics.length, steps);
    // A random model (weights ~ N(0, 0.02)) predicts nearly uniformly: ln(259) on the first step.
    assertLess(Math.abs(metrics[0].loss - Math.log(259)), 0.05, "first loss near ln(vocab)");
    // cosine with 3% warmup: the first update has lr 0, the peak is 2e-5.
    assertEquals(metrics[0].learning_rate, 0);
    assert(metrics.every((m) => m.learning_rate <= 2e-5 && Number.isFinite(m.loss)));
    // --save_total_limit 1 keeps the last checkpoint; the final model is in the output folder.
    const checkpoints = [...Deno.readDirSync(out)].filter((e) => e.name.startsWith("checkpoint-"));
    assertEquals(checkpoints.map((e) => e.name), [`checkpoint-${steps}`]);
    assert(existsSync(join(out, "model.safetensors")));
    // The model trained with the byte tokenizer carries it: config.json's ids are its ids, and
    // the saved tokenizer.json (what transformers loads; checked once with transformers 5.18:
    // same ids, BOS prepended) encodes and packs exactly as the byte tokenizer does.
    const config = JSON.parse(await Deno.readTextFile(join(out, "config.json")));
    const bytes = new ByteTokenizer();
    assertEquals(
      [config.bos_token_id, config.eos_token_id, config.pad_token_id, config.vocab_size],
      [bytes.bosId, bytes.eosId, bytes.padId, bytes.vocabSize],
    );
    const saved = await loadTokenizer(out);
    assertEquals([saved.bosId, saved.eosId, saved.padId, saved.addBos], [0, 1, 2, true]);
    const again = await openDataset({ dataPath: jsonl, tokenizer: saved, seqLen: L });
    assertEquals(again.numWindows, ds.numWindows);
    for (let w = 0; w < ds.numWindows; w++) {
      assertEquals(again.window(w).inputs, ds.window(w).inputs, `window ${w}`);
    }
    // trainer_state.json has HF TrainerState's fields; the arguments are saved beside it.
    const state = JSON.parse(
      await Deno.readTextFile(join(out, `checkpoint-${steps}`, "trainer_state.json")),
    );
    for (const key of HF_STATE_FIELDS) assert(key in state, `trainer_state.json lacks ${key}`);
    assertEquals(
      [state.global_step, state.max_steps, state.train_batch_size, state.logging_steps],
      [steps, steps, 1, 1],
    );
    assertEquals([state.save_steps, state.best_metric, state.num_train_epochs], [10, null, 1]);
    assertEquals(
      state.log_history.map((e: { step: number }) => e.step),
      metrics.map((m) => m.step),
    );
    assert("learning_rate" in state.log_history[0] && !("lr" in state.log_history[0]));
    const args = JSON.parse(await Deno.readTextFile(join(out, "training_args.json")));
    assertEquals([args.model, args.learning_rate, args.fsdp], [
      "debug-tiny",
      2e-5,
      "full_shard auto_wrap",
    ]);
    // The HF trainer's flags without an effect are named once.
    assert(r.stderr.includes("--tf32 is accepted for compatibility"), r.stderr);
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("hf: a log history saved with the old name lr reads as learning_rate", () => {
  const old = [{ step: 1, loss: 2, lr: 1e-3 }, { step: 1, eval_loss: 2.5 }];
  assertEquals(upgradeLogHistory(old), [
    { step: 1, loss: 2, learning_rate: 1e-3 },
    { step: 1, eval_loss: 2.5 },
  ]);
});

Deno.test("hf: the HF names resolve to distflash's options, and conflicts are errors", () => {
  const base = { synthetic: true };
  const r = resolveTrainOptions({
    ...base,
    modelNameOrPath: "debug-tiny",
    evalStrategy: "epoch",
    validationSplitPercentage: 10,
    reportTo: "tensorboard,wandb",
  });
  assertEquals([r.options.model, r.options.evaluationStrategy], ["debug-tiny", "epoch"]);
  assert(reportsToTensorBoard(r.options));
  assert(r.noEffect.some((n) => n.includes("--report-to wandb")), r.noEffect.join("\n"));
  assert(!reportsToTensorBoard(resolveTrainOptions({ ...base, model: "debug-tiny" }).options));
  const bad: [Record<string, unknown>, string][] = [
    [{ model: "a", modelNameOrPath: "b" }, "--model and --model-name-or-path"],
    [{ model: "a", evaluationStrategy: "steps" }, "needs validation data"],
    [{ model: "a", evaluationStrategy: "steps", evalStrategy: "no" }, "--eval-strategy and"],
    [{ model: "a", evalDataPath: "x", validationSplitPercentage: 5 }, "exclude each other"],
    [{ model: "a", validationSplitPercentage: 60 }, "--validation-split-percentage"],
    [{ model: "a", evalSteps: 0 }, "--eval-steps"],
  ];
  for (const [input, text] of bad) {
    const e = assertThrows(() => resolveTrainOptions({ ...base, ...input }), OptionError);
    assert(e.message.includes(text), `${JSON.stringify(input)}: ${e.message}`);
  }
});
