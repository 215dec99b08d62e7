/**
 * `train --attention-mask document` through every path of a training run, against Hugging Face
 * transformers and against the plain run. The tiny Llamas of tests/fixtures train on the two
 * packed windows of tests/fixtures/documents (written to a .npy exactly as the fixture's windows
 * hold them), with learning rate 1e-2:
 * - step 1 of every run is computed from the fixture's weights, so its loss and gradient norm are
 *   transformers' run on each document alone (the fixture's loss and the norm of its gradients),
 *   and an evaluation on the same windows after a step of learning rate 0 is that loss too
 *   (eval_loss = the mean over every document's in-document predictions);
 * - later steps of each path follow the plain one-rank document run.
 * Paths: --offload-optimizer, --offload-checkpoints, --checkpoint-boundary layer (in process),
 * dp 2 x sp 2 with --fsdp full_shard on 4 CPU ranks (evaluation included), and bf16.
 *
 * Tolerances: fp32 runs 1e-4 relative, as tests/dist_train.test.ts (ranks, sharding and offloads
 * only reorder fp32 sums; the reference is float64). bf16 stores activations and weights in bf16
 * (unit roundoff 2^-9); tests/llama.test.ts bounds a forward of these models at 2e-2 and gradients
 * at 5e-2, so the bf16 loss is held to 2e-2 of transformers' and its gradient norm to 5e-2.
 */
import { assertEquals, assertLess } from "./assert.ts";
import { runCpuRanks } from "./_util.ts";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { openSafetensors } from "../src/io/safetensors.ts";
import { writeNpy } from "../src/io/npy.ts";
import { train } from "../src/train/trainer.ts";

const fixtures = fileURLToPath(new URL("./fixtures/", import.meta.url));
const L = 24;
const quiet = { log: () => {} };

/** The fixture's windows as a .npy (each window L + 1 tokens), its loss and gradient norm. */
async function fixtureRun(variant: string, dir: string) {
  const f = await openSafetensors(`${fixtures}documents/${variant}.safetensors`);
  const ids = await f.readFloat32("input_ids"), next = await f.readFloat32("next_ids");
  const loss = (await f.readFloat32("loss"))[0];
  let squares = 0;
  for (const name of f.names()) {
    if (!name.startsWith("grad.")) continue;
    for (const g of await f.readFloat32(name)) squares += g * g;
  }
  f.close();
  const windows = ids.length / L, tokens = new Int32Array(windows * (L + 1));
  for (let b = 0; b < windows; b++) {
    tokens.set(ids.subarray(b * L, (b + 1) * L), b * (L + 1));
    tokens[b * (L + 1) + L] = next[(b + 1) * L - 1];
  }
  const data = join(dir, `${variant}.npy`), swapped = join(dir, `${variant}_swapped.npy`);
  await writeNpy(data, tokens);
  // The windows in the other order (window 1, one document, first): the same loss.
  await writeNpy(
    swapped,
    Int32Array.from([...tokens.subarray(L + 1), ...tokens.subarray(0, L + 1)]),
  );
  return { data, swapped, loss, gradNorm: Math.sqrt(squares), windows };
}

type Metrics = { step: number; loss?: number; grad_norm?: number; eval_loss?: number }[];

async function metrics(dir: string): Promise<Metrics> {
  return (await Deno.readTextFile(join(dir, "metrics.jsonl"))).trim().split("\n").map((l) =>
    JSON.parse(l)
  );
}
const steps = (m: Metrics) => m.filter((x) => x.loss !== undefined);

const rel = (a: number, b: number) => Math.abs(a - b) / Math.abs(b);

Deno.test("documents train: offloads, layer checkpoints, bf16 and dp 2 x sp 2 full_shard equal transformers at step 1 and the plain run after", async () => {
  const root = await Deno.makeTempDir();
  const ref = await fixtureRun("gqa", root);
  const base = {
    model: `${fixtures}gqa`,
    dataPath: ref.data,
    modelMaxLength: L,
    perDeviceTrainBatchSize: ref.windows,
    maxSteps: 3,
    learningRate: 1e-2,
    loggingSteps: 1,
    device: "cpu",
    saveStrategy: "no" as const,
    attentionMask: "document" as const,
  };
  const run = async (name: string, extra: Record<string, unknown>) => {
    await train({ ...base, ...extra, outputDir: join(root, name) }, quiet);
    return steps(await metrics(join(root, name)));
  };
  const plain = await run("plain", {});
  assertEquals(plain.length, 3);
  const check = (got: Metrics, what: string, tol = { loss: 1e-4, grad: 1e-4 }) => {
    assertLess(rel(got[0].loss!, ref.loss), tol.loss, `${what}: step-1 loss vs transformers`);
    assertLess(rel(got[0].grad_norm!, ref.gradNorm), tol.grad, `${what}: step-1 grad norm`);
    if (tol.loss > 1e-4) return; // bf16 drifts from the fp32 run by its own rounding
    got.forEach((m, i) => {
      assertLess(rel(m.loss!, plain[i].loss!), 1e-4, `${what}: step ${i + 1} loss`);
      assertLess(rel(m.grad_norm!, plain[i].grad_norm!), 1e-4, `${what}: step ${i + 1} norm`);
    });
  };
  check(plain, "plain");
  check(await run("offopt", { offloadOptimizer: true }), "--offload-optimizer");
  check(await run("offckpt", { offloadCheckpoints: true }), "--offload-checkpoints");
  check(await run("layer", { checkpointBoundary: "layer" }), "--checkpoint-boundary layer");
  check(await run("bf16", { bf16: true }), "bf16", { loss: 2e-2, grad: 5e-2 });

  // 4 CPU ranks: 2 data-parallel groups of 2 sequence-parallel ranks, parameters sharded over all
  // 4; each group reads one window, together the plain run's batch. Evaluated on the same windows.
  // deno-fmt-ignore
  await runCpuRanks(4, [
    "train", "--model", base.model, "--data-path", ref.data, "--model-max-length", `${L}`,
    "--per-device-train-batch-size", "1", "--max-steps", "3", "--learning-rate", "1e-2",
    "--logging-steps", "1", "--device", "cpu", "--save-strategy", "no",
    "--attention-mask", "document", "--sp-size", "2", "--fsdp", "full_shard",
    "--output-dir", join(root, "dp2sp2"),
  ]);
  check(steps(await metrics(join(root, "dp2sp2"))), "dp 2 x sp 2 full_shard");
  await Deno.remove(root, { recursive: true });
});

Deno.test("documents train: eval_loss is the mean over every document's predictions, on 1 and on 2 x 2 ranks", async () => {
  const root = await Deno.makeTempDir();
  const ref = await fixtureRun("mha", root);
  // One step at learning rate 0 leaves the fixture's weights; the evaluation after it runs on the
  // fixture's windows, whose transformers loss (each document alone) is ref.loss.
  await train({
    model: `${fixtures}mha`,
    dataPath: ref.data,
    evalDataPath: ref.data,
    modelMaxLength: L,
    perDeviceTrainBatchSize: 1,
    perDeviceEvalBatchSize: 1,
    maxSteps: 1,
    learningRate: 0,
    device: "cpu",
    saveStrategy: "no",
    attentionMask: "document",
    outputDir: join(root, "one"),
  }, quiet);
  // 2 x 2 ranks on the windows swapped: the second data-parallel group evaluates window 0, the
  // one of several documents (window 1 is a single document, where the mask changes nothing).
  // deno-fmt-ignore
  await runCpuRanks(4, [
    "train", "--model", `${fixtures}mha`, "--data-path", ref.data, "--eval-data-path", ref.swapped,
    "--model-max-length", `${L}`, "--per-device-train-batch-size", "1", "--max-steps", "1",
    "--learning-rate", "0", "--device", "cpu", "--save-strategy", "no", "--attention-mask",
    "document", "--sp-size", "2", "--output-dir", join(root, "four"),
  ]);
  for (const name of ["one", "four"]) {
    const evals = (await metrics(join(root, name))).filter((m) => m.eval_loss !== undefined);
    assertEquals(evals.length, 1, `${name}: one evaluation, after the last step`);
    assertLess(rel(evals[0].eval_loss!, ref.loss), 1e-4, `${name}: eval_loss vs transformers`);
  }
  await Deno.remove(root, { recursive: true });
});
