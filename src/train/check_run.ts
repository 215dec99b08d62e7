/**
 * The checks of a run that need no device and read no data, in one place: the launcher (through
 * the CLI) calls them before starting any rank, and every rank's `setupRun` calls them again.
 */
import { existsSync } from "node:fs";
import { type ModelSource, resolveModel } from "../model/hf.ts";
import type { TrainOptions } from "./options.ts";
import { documentSplit, ParallelLayout } from "../parallel/layout.ts";
import { checkHeadGroups } from "../parallel/sequence_attention.ts";
import { checkOutputDir, type OutputDirPlan } from "./output_dir.ts";

/**
 * The checks of a run of `worldSize` ranks that need no device and read no data: the
 * sequence-parallel split, the model, the head groups, the data path, the output folder (see
 * output_dir.ts). The launcher calls it before starting any rank; every rank calls it again.
 */
export async function checkRun(o: TrainOptions, worldSize: number, rank = 0): Promise<{
  parallel: ParallelLayout;
  source: ModelSource;
  outputPlan: OutputDirPlan;
}> {
  const parallel = new ParallelLayout(worldSize, rank, o);
  parallel.checkLength(o.modelMaxLength);
  const source = await resolveModel(o.model);
  checkHeadGroups(source.config, o.attentionHeadGroups);
  documentSplit(o.attentionMask, source.config.bosTokenId);
  if (o.dataPath && !existsSync(o.dataPath)) {
    throw new Error(`--data-path ${o.dataPath}: no such file or folder`);
  }
  // Not the model's folder, not in use, not another run's; the checkpoint to resume.
  const outputPlan = checkOutputDir({
    outputDir: o.outputDir,
    modelDir: source.dir,
    resumeFromCheckpoint: o.resumeFromCheckpoint,
    overwriteOutputDir: o.overwriteOutputDir,
  });
  return { parallel, source, outputPlan };
}
