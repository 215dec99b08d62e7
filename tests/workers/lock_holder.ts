/**
 * Holds an output folder's lock as a run's rank 0 does (`claimOutputDir`), prints `held <pid>`
 * and waits until killed. Argument: the output folder. For tests/output_folder.test.ts.
 */
import { claimOutputDir } from "../../src/train/output_dir.ts";

const outputDir = Deno.args[0];
claimOutputDir(
  outputDir,
  { runId: null, resumeDir: null, resumeSource: null, notes: [] },
  false,
  () => {},
);
console.log(`held ${Deno.pid}`);
setInterval(() => {}, 1 << 30);
