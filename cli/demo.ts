/**
 * `distflash demo`: the embedded default job. Prints `info`, checks the first ops on every
 * backend, then trains a debug-size Llama on the corpus bundled in examples/ (GPU if present,
 * else CPU) and shows the loss falling. Its output folder is its own (marked): run again, the demo
 * starts over there; a folder it did not make is refused.
 */
import type { Command } from "npm:commander@^14.0.0";
import { fileURLToPath } from "node:url";
import { formatInfo, gatherInfo } from "../src/runtime/info.ts";
import { Device } from "../src/runtime/device.ts";
import { selfTest } from "../src/runtime/selftest.ts";
import { train } from "../src/train/trainer.ts";
import { claimToolFolder } from "../src/train/output_dir.ts";

const corpus = fileURLToPath(new URL("../examples/corpus/tiny.jsonl", import.meta.url));

export function registerDemo(program: Command): void {
  program
    .command("demo")
    .description(
      "print `info`, check the ops on every backend, train a debug Llama on a bundled corpus",
    )
    .option("--max-steps <n>", "optimizer steps of the training demo", "120")
    .option("--output-dir <dir>", "where the demo's model and metrics go", "outputs/demo")
    .option("--device <choice>", "auto, cuda or cpu", "auto")
    .action(async (opts: { maxSteps: string; outputDir: string; device: string }) => {
      const info = gatherInfo();
      console.log(formatInfo(info));
      const backends = info.gpus.length > 0 ? ["cpu", "cuda"] as const : ["cpu"] as const;
      for (const name of backends) {
        const device = Device.open(name);
        const result = selfTest(device);
        device.close();
        for (const c of result.checks) {
          console.log(
            `${result.backend} ${c.name}: ${c.ok ? "ok" : "FAILED"} (max error ${c.maxError})`,
          );
        }
        if (!result.ok) throw new Error(`the ${name} backend failed its self-test`);
      }
      // The demo's own folder: run again, it starts over there; a folder it did not make is
      // refused, never overwritten.
      claimToolFolder(opts.outputDir, "demo");
      console.log(`\ntraining debug-small on ${corpus}`);
      const result = await train({
        model: "debug-small",
        dataPath: corpus,
        outputDir: opts.outputDir,
        overwriteOutputDir: true,
        maxSteps: opts.maxSteps,
        perDeviceTrainBatchSize: 8,
        modelMaxLength: 128,
        learningRate: 2e-3,
        warmupSteps: 5,
        lrSchedulerType: "cosine",
        weightDecay: 0.01,
        loggingSteps: 5,
        saveStrategy: "no",
        device: opts.device,
        bf16: info.gpus.length > 0 && opts.device !== "cpu",
      });
      const first = result.metrics[0], last = result.metrics.at(-1)!;
      console.log(
        `loss ${first.loss.toFixed(3)} at step ${first.step} -> ${
          last.loss.toFixed(3)
        } at step ${last.step}; ` +
          `model and metrics.jsonl in ${result.outputDir}`,
      );
    });
}
