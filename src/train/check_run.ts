/**
 * The checks of a run that need no device and read no data, in one place: the launcher (through
 * the CLI) calls them before starting any rank, and every rank's `setupRun` calls them again.
 */
import { existsSync } from "node:fs";
import { checkModelTokenizer } from "../data/tokenizer.ts";
import { checkDataFiles } from "../data/dataset.ts";
import { checkModelFolderFiles, type ModelSource, resolveModel } from "../model/hf.ts";
import type { TrainOptions } from "./options.ts";
import { documentSplit, ParallelLayout } from "../parallel/layout.ts";
import { checkHeadGroups } from "../parallel/sequence_attention.ts";
import { checkOutputDir, type OutputDirPlan } from "./output_dir.ts";
import {
  readCompletion,
  readResumeState,
  type TrainerState,
  verifyChecksums,
} from "./checkpoint.ts";

/**
 * The checks of a run of `worldSize` ranks that need no device and read no data: the
 * sequence-parallel split, the model, the head groups, the data path, the output folder (see
 * output_dir.ts). The launcher calls it before starting any rank; every rank calls it again.
 * With `verifyContent` (once per run: the launcher, or a run without one) the checkpoint to
 * resume is also checked against the SHA-256 checksums of its complete.json, which reads every
 * byte of it; `resumeNotes` then says when an older checkpoint had none.
 */
export async function checkRun(
  o: TrainOptions,
  worldSize: number,
  rank = 0,
  verifyContent = false,
): Promise<{
  parallel: ParallelLayout;
  source: ModelSource;
  outputPlan: OutputDirPlan;
  resumeState: TrainerState | null;
  resumeNotes: string[];
}> {
  const parallel = new ParallelLayout(worldSize, rank, o);
  parallel.checkLength(o.modelMaxLength);
  const source = await resolveModel(o.model);
  checkModelFolderFiles(source.dir);
  checkHeadGroups(source.config, o.attentionHeadGroups);
  documentSplit(o.attentionMask, source.config.bosTokenId);
  if (o.dataPath && !existsSync(o.dataPath)) {
    throw new Error(`--data-path ${o.dataPath}: no such file or folder`);
  }
  // Files that cannot be read, or a first record without the text field, before ranks start.
  if (o.dataPath && !o.synthetic) await checkDataFiles(o.dataPath, o.textField);
  // Text data needs the model's own tokenizer.
  if (!o.synthetic && o.dataPath && !o.dataPath.endsWith(".npy")) checkModelTokenizer(source.dir);
  // Not the model's folder, not in use, not another run's; the checkpoint to resume.
  const outputPlan = checkOutputDir({
    outputDir: o.outputDir,
    modelDir: source.dir,
    resumeFromCheckpoint: o.resumeFromCheckpoint,
    overwriteOutputDir: o.overwriteOutputDir,
  });
  // The checkpoint to resume: one checkpoint's files, and ones this many ranks can read.
  const resumeState = outputPlan.resumeDir
    ? readResumeState(outputPlan.resumeDir, outputPlan.resumeSource ?? outputPlan.resumeDir, {
      worldSize,
      sharded: parallel.fullShard,
    })
    : null;
  const resumeNotes: string[] = [];
  if (outputPlan.resumeDir && verifyContent) {
    const source = outputPlan.resumeSource ?? outputPlan.resumeDir;
    const note = await verifyChecksums(source, readCompletion(source));
    if (note !== null) resumeNotes.push(note);
  }
  return { parallel, source, outputPlan, resumeState, resumeNotes };
}
