/**
 * `distflash bench attn` and `distflash bench train`: throughput measurements on GPUs (they run on
 * the CPU backend too, slowly, which is only useful to check they work). With --nproc-per-node > 1
 * this process launches the ranks, then runs the PyTorch baseline in bench/ on the same GPUs so the
 * peers' figures come from the same run.
 */
import { Command } from "npm:commander@^14.0.0";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { type AttnVariant, benchAttention, formatAttnRows } from "../src/bench/attn.ts";
import { openBackend } from "../src/runtime/info.ts";
import { initDistributed } from "../src/comm/env.ts";
import { isLaunchedRank, launch } from "../src/launch/launcher.ts";
import { resolveModel } from "../src/model/hf.ts";
import { toHfConfig } from "../src/model/hf_config.ts";
import { paramCount } from "../src/model/config.ts";
import { modelFlopsUtilisation, trainingFlopsPerToken } from "../src/train/mfu.ts";
import { normalizeFlags } from "../src/train/option_table.ts";
import {
  ATTENTION_KERNEL_HELP,
  type AttentionKernel,
  selectAttentionKernel,
} from "../src/runtime/attention_kernel.ts";
import { registerTrain } from "./train.ts";
import { claimToolFolder } from "../src/train/output_dir.ts";

const benchDir = fileURLToPath(new URL("../bench/", import.meta.url));

function intList(flag: string, text: string): number[] {
  const values = text.split(",").map((s) => Number(s.trim()));
  if (values.length === 0 || values.some((v) => !Number.isInteger(v) || v <= 0)) {
    throw new Error(
      `${flag}: expected positive integers separated by commas, got ${JSON.stringify(text)}`,
    );
  }
  return values;
}

function positiveInt(flag: string, text: string): number {
  return intList(flag, text)[0];
}

/**
 * The Python that runs the PyTorch baseline: $DISTFLASH_PYTHON when set, else the first of
 * python3 and python on PATH that imports torch. Returns it, or why there is none.
 */
export async function findPython(): Promise<{ python: string } | { skipped: string }> {
  const chosen = Deno.env.get("DISTFLASH_PYTHON");
  const candidates = chosen ? [chosen] : ["python3", "python"];
  const why: string[] = [];
  for (const python of candidates) {
    try {
      const probe = await new Deno.Command(python, {
        args: ["-c", "import torch"],
        stdout: "null",
        stderr: "null",
      }).output();
      if (probe.success) return { python };
      why.push(`${python} cannot import torch`);
    } catch {
      why.push(`${python} not found`);
    }
  }
  return {
    skipped: `baseline skipped: ${why.join(", ")} (set DISTFLASH_PYTHON to a Python with torch)`,
  };
}

/** Runs a Python baseline if a Python with torch is available; returns its output or why not. */
async function runBaseline(args: string[]): Promise<string> {
  const found = await findPython();
  if ("skipped" in found) return found.skipped;
  const out = await new Deno.Command(found.python, {
    args,
    stdout: "piped",
    stderr: "piped",
    env: {
      NCCL_NVLS_ENABLE: "0",
      TORCH_SYMM_MEM_DISABLE_MULTICAST: "1",
      NVSHMEM_DISABLE_NVLS: "1",
    },
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    return `baseline failed (exit ${out.code}):\n${
      new TextDecoder().decode(out.stderr).slice(-2000)
    }`;
  }
  return text;
}

/** --attention-mask and --doc-length of bench attn: the mean document length, or undefined (causal). */
function documentLength(
  mask: string | boolean | undefined,
  docLength: string | boolean | undefined,
): number | undefined {
  if (mask !== "causal" && mask !== "document") {
    throw new Error(`--attention-mask: ${mask} is not one of causal, document`);
  }
  if (mask === "causal") {
    if (docLength !== undefined) throw new Error("--doc-length needs --attention-mask document");
    return undefined;
  }
  if (docLength === undefined) {
    throw new Error("--attention-mask document needs --doc-length (the mean document length)");
  }
  return positiveInt("--doc-length", String(docLength));
}

export function registerBench(program: Command, argv: string[]): void {
  const bench = program.command("bench").description("throughput benchmarks (GPUs)");

  bench
    .command("attn")
    .description(
      "causal attention forward+backward TFLOP/s per GPU: one GPU, or DistAttn over ranks",
    )
    .option("--nproc-per-node <n>", "ranks (GPUs) sharing each sequence", "1")
    .option("--seq <list>", "total sequence lengths", "16384,32768,65536")
    .option("--heads <n>", "query heads", "32")
    .option("--kv-heads <n>", "key/value heads (default: heads)")
    .option("--head-dim <n>", "head dimension", "128")
    .option("--reps <n>", "timed repetitions (median reported)", "5")
    .option("--warmup <n>", "untimed repetitions first", "2")
    .option(
      "--variants <list>",
      "DistAttn variants: balanced,unbalanced,no-overlap,zigzag",
      "balanced,unbalanced,no-overlap,zigzag",
    )
    .option(
      "--attention-mask <mask>",
      "causal, or document: each configuration also with the sequence packed into documents",
      "causal",
    )
    .option(
      "--doc-length <n>",
      "with --attention-mask document: mean document length (random lengths)",
    )
    .option(
      "--sliding-window <n>",
      "each configuration also under a sliding window of n tokens (Mistral's)",
    )
    .option("--device <choice>", "auto, cuda or cpu", "auto")
    .option(
      "--attention-kernel <choice>",
      ATTENTION_KERNEL_HELP,
      "auto",
    )
    .option("--output-dir <dir>", "logs and results", "outputs/bench")
    .option("--no-baseline", "skip the PyTorch baseline")
    .action(async (o: Record<string, string | boolean | undefined>) => {
      const nproc = positiveInt("--nproc-per-node", String(o.nprocPerNode));
      const docLength = documentLength(o.attentionMask, o.docLength);
      const window = o.slidingWindow === undefined
        ? undefined
        : positiveInt("--sliding-window", String(o.slidingWindow));
      const seq = intList("--seq", String(o.seq));
      const heads = positiveInt("--heads", String(o.heads));
      const kvHeads = o.kvHeads ? positiveInt("--kv-heads", String(o.kvHeads)) : heads;
      const headDim = positiveInt("--head-dim", String(o.headDim));
      const variants = String(o.variants).split(",") as AttnVariant[];
      for (const v of variants) {
        if (!["balanced", "unbalanced", "no-overlap", "zigzag"].includes(v)) {
          throw new Error(
            `--variants: ${v} is not one of balanced, unbalanced, no-overlap, zigzag`,
          );
        }
      }
      if (!["auto", "cuda", "cpu"].includes(String(o.device))) {
        throw new Error(`--device: ${o.device} is not one of auto, cuda, cpu`);
      }
      const outputDir = String(o.outputDir);
      if (nproc > 1 && !isLaunchedRank()) {
        const result = await launch({ nprocPerNode: nproc, args: argv, outputDir, masterPort: 0 });
        if (result.code !== 0) Deno.exit(result.code);
        if (o.baseline !== false) {
          console.log("\nPyTorch context parallel (ring attention), same GPUs:");
          console.log(
            await runBaseline([
              "-m",
              "torch.distributed.run",
              `--nproc-per-node=${nproc}`,
              join(benchDir, "torch_cp_attn.py"),
              `--seq=${seq.join(",")}`,
              `--heads=${heads}`,
              `--kv-heads=${kvHeads}`,
              `--head-dim=${headDim}`,
            ]),
          );
        }
        return;
      }
      const device = openBackend(String(o.device) as "auto" | "cuda" | "cpu");
      const kernelLine = selectAttentionKernel(
        device,
        String(o.attentionKernel) as AttentionKernel,
      );
      let comm = null;
      if (nproc > 1) comm = (await initDistributed({ backend: device.backend, device })).world;
      const rows = await benchAttention(device, comm, {
        seq,
        heads,
        kvHeads,
        headDim,
        reps: positiveInt("--reps", String(o.reps)),
        warmup: Number(o.warmup),
        variants,
        docLength,
        window,
      });
      if ((comm?.rank ?? 0) === 0) {
        console.log(
          `distflash attention, ${device.props(0).name}, bf16, ${
            [
              "causal",
              ...(docLength ? [`documents of ~${docLength} tokens`] : []),
              ...(window ? [`a sliding window of ${window}`] : []),
            ].join(", ")
          }, ${heads} heads (${kvHeads} kv) of ${headDim}:`,
        );
        console.log(kernelLine);
        console.log(formatAttnRows(rows));
        await Deno.mkdir(outputDir, { recursive: true });
        await Deno.writeTextFile(
          join(outputDir, `attn_p${nproc}.json`),
          JSON.stringify(rows, null, 2),
        );
      }
      await comm?.close();
      if (nproc === 1 && o.baseline !== false && existsSync(join(benchDir, "torch_attn.py"))) {
        console.log("\nPyTorch SDPA, same GPU:");
        console.log(
          await runBaseline([
            join(benchDir, "torch_attn.py"),
            `--seq=${seq.join(",")}`,
            `--heads=${heads}`,
            `--kv-heads=${kvHeads}`,
            `--head-dim=${headDim}`,
          ]),
        );
      }
    });

  bench
    .command("train")
    .description("tokens/s and model-FLOPs utilisation of training steps (synthetic tokens)")
    .option("--model <name>", "preset or folder", "tinyllama-1.1b")
    .option("--model-max-length <n>", "tokens per sequence (over all sp ranks)", "32768")
    .option("--nproc-per-node <n>", "ranks", "1")
    .option("--max-steps <n>", "steps (the first is warm-up and not counted)", "4")
    .option(
      "--fsdp <mode>",
      "parameter sharding over the ranks: full_shard or no_shard",
      "full_shard",
    )
    .option(
      "--distattn-layout <layout>",
      "sequence split: zigzag (ring) or contiguous (DistAttn)",
      "zigzag",
    )
    .option(
      "--attention-kernel <choice>",
      ATTENTION_KERNEL_HELP,
      "auto",
    )
    .option("--peak-tflops <x>", "peak bf16 TFLOP/s per GPU for MFU (H100 SXM dense: 989)", "989")
    .option("--output-dir <dir>", "logs and results", "outputs/bench-train")
    .option("--no-baseline", "skip the HF transformers + FSDP2 + context-parallel baseline")
    .action(async (o: Record<string, string>) => {
      const nproc = positiveInt("--nproc-per-node", o.nprocPerNode);
      const L = positiveInt("--model-max-length", o.modelMaxLength);
      const steps = positiveInt("--max-steps", o.maxSteps);
      if (steps < 2) throw new Error("--max-steps: at least 2 (the first step is warm-up)");
      const source = await resolveModel(o.model);
      const cfg = source.config;
      claimToolFolder(o.outputDir, "bench train");
      const trainArgs = [
        "train",
        "--model",
        o.model,
        "--synthetic",
        "--bf16",
        "--model-max-length",
        String(L),
        "--max-steps",
        String(steps),
        "--logging-steps",
        "1",
        "--save-strategy",
        "no",
        "--save-final-model",
        "false",
        "--output-dir",
        o.outputDir,
        "--nproc-per-node",
        String(nproc),
        "--learning-rate",
        "1e-5",
        "--fsdp",
        String(o.fsdp),
        "--distattn-layout",
        String(o.distattnLayout),
        "--attention-kernel",
        String(o.attentionKernel),
        "--overwrite-output-dir", // the folder is bench train's own (claimToolFolder)
      ];
      // The train subcommand alone, in this process (the launcher starts the ranks), as
      // `distflash train` would parse it; an error propagates to this command's caller.
      const args = normalizeFlags(trainArgs);
      const trainProgram = new Command().exitOverride();
      registerTrain(trainProgram, args);
      await trainProgram.parseAsync(args, { from: "user" });
      const metrics = readFileSync(join(o.outputDir, "metrics.jsonl"), "utf8").trim().split("\n")
        .map((l) => JSON.parse(l) as { step: number; tokens_per_s: number });
      const timed = metrics.filter((m) => m.step > 1);
      const tokensPerS = timed.reduce((a, m) => a + m.tokens_per_s, 0) / timed.length;
      const n = paramCount(cfg);
      const flopsPerToken = trainingFlopsPerToken(cfg, L);
      const mfu = modelFlopsUtilisation(flopsPerToken, tokensPerS, nproc, Number(o.peakTflops));
      console.log(
        `bench train: ${o.model} (${
          (n / 1e9).toFixed(2)
        }B), ${L} tokens per sequence on ${nproc} ` +
          `rank(s): ${Math.round(tokensPerS)} tokens/s, MFU ${(100 * mfu).toFixed(1)}% ` +
          `(${
            (flopsPerToken / 1e9).toFixed(1)
          } GFLOP per token, peak ${o.peakTflops} TFLOP/s per GPU)`,
      );
      const wantBaseline = (o as Record<string, unknown>).baseline !== false;
      if (wantBaseline && (cfg.slidingWindow ?? 0) > 0) {
        // The baseline's ring attention is plain causal: it would time less masking than ours.
        console.log("\nbaseline skipped: the HF + FSDP2 + CP baseline has no sliding window");
      } else if (wantBaseline) {
        // The same model for transformers: its config.json, as a checkpoint of it would carry.
        const configJson = join(o.outputDir, "baseline_config.json");
        writeFileSync(configJson, JSON.stringify(toHfConfig(cfg), null, 2));
        console.log("\nHF transformers + FSDP2 + context parallel, same GPUs:");
        console.log(
          await runBaseline([
            "-m",
            "torch.distributed.run",
            `--nproc-per-node=${nproc}`,
            join(benchDir, "hf_fsdp_cp_train.py"),
            `--config-json=${configJson}`,
            `--name=${o.model}`,
            `--seq=${L}`,
            `--steps=${steps}`,
          ]),
        );
      }
    });
}
