/**
 * The mutation check of issue 26: plants single-point bugs, one at a time, in a scratch copy of
 * this repository, runs the test files that exercise the code, and reports which were caught.
 *
 *   deno run -A scripts/mutation_check.ts [--tests-from <git ref>] [--only <id,id>] [--dry]
 *
 * --dry only checks that every snippet occurs exactly once in this checkout.
 *
 * The scratch copy is a detached `git worktree` of HEAD under /tmp (its lib/ and node_modules/
 * taken from here; run `deno task build` first); each mutation replaces one exact snippet of one
 * file (refused if the snippet is not found exactly once), runs its test files with the CPU
 * backend, and is reverted. A mutation is caught when a test fails (or the tests run past
 * 300 s: a hang). With --tests-from, tests/ of the scratch copy comes from that ref (e.g. main,
 * to measure the suite before newer tests); test files it lacks are skipped. Areas: saving and
 * recovery, output folders, parsers, metrics, evaluation, loaders, error propagation (not the
 * numeric core, which earlier checks found pinned).
 */
import { join } from "node:path";

interface Mutation {
  id: string;
  file: string;
  from: string;
  to: string;
  tests: string[];
}

const M: Mutation[] = [
  // Saving and recovery.
  {
    id: "recover-incomplete-tmp",
    file: "src/train/checkpoint.ts",
    from: "if (final !== null && free(final) && isComplete(join(outputDir, name))) moves.set",
    to: "if (final !== null && free(final)) moves.set",
    tests: ["save_interrupted", "save_recovery"],
  },
  {
    id: "recover-old-not-renamed-back",
    file: "src/train/checkpoint.ts",
    from: `const final = finalNameOf(name, ".old-", runId);
    if (final !== null && free(final)) moves.set(final, name);`,
    to: `const final = finalNameOf(name, ".old-", runId);
    if (final !== null && free(final) && false) moves.set(final, name);`,
    tests: ["save_interrupted", "save_recovery"],
  },
  {
    id: "recover-deleting-kept",
    file: "src/train/checkpoint.ts",
    from: 'name.lastIndexOf(".deleting-") > 0 && name.endsWith(`.deleting-${runId}`)',
    to: 'name.lastIndexOf(".deleting-") > 0 && name.endsWith(".deleting-")',
    tests: ["save_interrupted", "save_recovery"],
  },
  {
    id: "recover-old-deleted-beside-incomplete",
    file: "src/train/checkpoint.ts",
    from: "if (final === null || moved.has(name) || !isComplete(join(outputDir, final))) continue;",
    to: "if (final === null || moved.has(name)) continue;",
    tests: ["save_interrupted", "save_recovery"],
  },
  {
    id: "scan-other-run-usable",
    file: "src/train/checkpoint.ts",
    from: "if (record.run_id !== runId) entry.reason",
    to: "if (false) entry.reason",
    tests: ["save_interrupted", "save_recovery"],
  },
  {
    id: "last-before-recovery",
    file: "src/train/checkpoint.ts",
    from: "const entries = scanCheckpoints(outputDir, runId, true);",
    to: "const entries = scanCheckpoints(outputDir, runId, false);",
    tests: ["save_interrupted", "save_recovery"],
  },
  {
    id: "completion-short-file-accepted",
    file: "src/train/checkpoint.ts",
    from: "if (actual !== size) {",
    to: "if (actual > size) {",
    tests: ["save_interrupted", "save_recovery"],
  },
  {
    id: "prune-one-too-many",
    file: "src/train/checkpoint.ts",
    from: "const doomed = ours.slice(Math.max(1, keep));",
    to: "const doomed = ours.slice(Math.max(1, keep - 1));",
    tests: ["save_interrupted", "save_recovery", "train"],
  },
  {
    id: "no-folder-flush",
    file: "src/train/checkpoint.ts",
    from: "      await syncPath(tmp);\n",
    to: "\n",
    tests: ["save_durability", "save_faults"],
  },
  {
    id: "no-parent-flush-after-rename",
    file: "src/train/checkpoint.ts",
    from: "    await syncPath(this.options.outputDir);\n",
    to: "\n",
    tests: ["save_durability", "save_faults"],
  },
  {
    id: "atomic-writer-no-flush",
    file: "src/io/files.ts",
    from: "    await flushToDisk(file, path);\n",
    to: "\n",
    tests: ["save_durability", "save_faults", "io"],
  },
  // Error propagation.
  {
    id: "host-update-failure-swallowed",
    file: "src/parallel/offloaded_update.ts",
    from: "if (failed) throw (failed as PromiseRejectedResult).reason;",
    to: "if (failed && false) throw (failed as PromiseRejectedResult).reason;",
    tests: ["save_durability", "eval_batch"],
  },
  {
    id: "save-not-after-settle",
    file: "src/train/trainer.ts",
    from: "    await model.params.settle(); // the offloaded optimizer's last update has landed\n",
    to: "\n",
    tests: ["save_durability", "eval_batch"],
  },
  {
    id: "write-error-names-no-file",
    file: "src/io/files.ts",
    from: "if (e instanceof Error && !e.message.includes(path)) e.message",
    to: "if (false) e.message",
    tests: ["save_durability", "save_faults"],
  },
  {
    id: "failed-save-folder-left",
    file: "src/train/checkpoint.ts",
    from: "        Deno.removeSync(tmp, { recursive: true });\n",
    to: "\n",
    tests: ["save_durability", "save_faults"],
  },
  // Output folders.
  {
    id: "checkpoints-only-folder-not-used",
    file: "src/train/output_dir.ts",
    from: "const used = folderRun !== null || checkpoints.length > 0;",
    to: "const used = folderRun !== null;",
    tests: ["output_folder"],
  },
  {
    id: "one-symlink-allowed",
    file: "src/train/output_dir.ts",
    from: "  if (links.length) {",
    to: "  if (links.length > 1) {",
    tests: ["output_folder"],
  },
  {
    id: "foreign-files-overwritten",
    file: "src/train/output_dir.ts",
    from: 'if (!used && resume !== "last" && !overwriteOutputDir) {',
    to: 'if (!used && resume !== "last" && !overwriteOutputDir && false) {',
    tests: ["output_folder"],
  },
  // Parsers and data semantics.
  {
    id: "chat-system-trained",
    file: "src/data/chat.ts",
    from: "add(t.text, t.role === ASSISTANT_ROLE);",
    to: 'add(t.text, t.role !== "USER");',
    tests: ["properties_chat", "chat_data"],
  },
  {
    id: "chat-eos-after-system",
    file: "src/data/chat.ts",
    from: "return turns.length > 0 && turns[turns.length - 1].role === ASSISTANT_ROLE;",
    to: 'return turns.length > 0 && turns[turns.length - 1].role !== "USER";',
    tests: ["properties_chat", "chat_data"],
  },
  {
    id: "chat-newline-after-second-turn",
    file: "src/data/chat.ts",
    from: '${i > 0 ? "\\n" : ""}',
    to: '${i > 1 ? "\\n" : ""}',
    tests: ["properties_chat", "chat_data"],
  },
  {
    id: "tensorboard-varint-boundary",
    file: "src/train/tensorboard.ts",
    from: "    while (x >= 0x80n) {",
    to: "    while (x > 0x80n) {",
    tests: ["properties_tensorboard", "tensorboard"],
  },
  {
    id: "pickle-binint1-signed",
    file: "src/data/pickle.ts",
    from: "      case 0x4b: // BININT1\n        stack.push(u8());",
    to: "      case 0x4b: // BININT1\n        stack.push((u8() << 24) >> 24);",
    tests: ["properties_pickle", "pickle"],
  },
  {
    id: "safetensors-end-past-data",
    file: "src/io/safetensors.ts",
    from: "    if (end > dataSize) {",
    to: "    if (end > dataSize + 1) {",
    tests: ["properties_io", "io"],
  },
  // Metrics and plans.
  {
    id: "mfu-not-over-devices",
    file: "src/train/mfu.ts",
    from: "(devices * peakTflops * 1e12)",
    to: "(peakTflops * 1e12)",
    tests: ["eval_layouts", "mfu"],
  },
  {
    id: "tokens-per-step-one-group",
    file: "src/train/setup.ts",
    from: "tokensPerStep: windowsPerStep * L * dp,",
    to: "tokensPerStep: windowsPerStep * L,",
    tests: ["eval_layouts", "mfu"],
  },
  {
    id: "plan-document-mean",
    file: "src/parallel/document_work.ts",
    from: "at += 1 + rng.below(Math.max(1, 2 * meanLength - 1));",
    to: "at += 1 + rng.below(Math.max(1, 2 * meanLength));",
    tests: ["plan_documents", "plan", "plan_gpus"],
  },
  // Evaluation.
  {
    id: "eval-forwards-floor",
    file: "src/train/eval.ts",
    from: "const mostWindows = Math.ceil(data.numWindows / at.parallel.dp);",
    to: "const mostWindows = Math.floor(data.numWindows / at.parallel.dp);",
    tests: ["eval_layouts", "eval", "eval_batch"],
  },
  {
    id: "eval-tokens-not-reduced",
    file: "src/train/eval.ts",
    from: "    labelled = await allReduceNumber(at.world, at.scratch, at.device, labelled);\n",
    to: "    labelled = labelled * at.parallel.dp;\n",
    tests: ["eval_layouts", "eval", "eval_batch"],
  },
  // Loaders.
  {
    id: "nccl-env-not-alone",
    file: "ffi/loader.ts",
    from: '  if (override) return [override];\n  return [\n    "libnccl.so.2",',
    to: '  if (override) return [override, "libnccl.so.2"];\n  return [\n    "libnccl.so.2",',
    tests: ["nccl_loader", "loader"],
  },
  {
    id: "nccl-loader-search-skipped",
    file: "ffi/loader.ts",
    from: "    if (!isBareName && !existsSync(candidate)) {",
    to: "    if (!existsSync(candidate)) {",
    tests: ["nccl_loader", "loader"],
  },
  // Model families and the sliding window (third session, 2026-12-07).
  {
    id: "window-every-layer",
    file: "src/model/config.ts",
    from: "return w > 0 && layer >= (cfg.windowFromLayer ?? 0) ? w : 0;",
    to: "return w > 0 ? w : 0;",
    tests: ["families", "families_ranks"],
  },
  {
    id: "qwen-max-window-layers-ignored",
    file: "src/model/families/common.ts",
    from: "from = Math.min(m, numLayers);",
    to: "from = 0;",
    tests: ["families"],
  },
  {
    id: "causal-layers-get-the-window",
    file: "src/model/decoder.ts",
    from: "(l) => layerWindow(cfg, l) > 0 ? this.#documents : this.#causalDocuments,",
    to: "() => this.#documents,",
    tests: ["families", "families_ranks"],
  },
  {
    id: "window-cut-at-the-edge-missed",
    file: "src/model/document_attention.ts",
    from: "p.q1 - 1 - p.k0 >= window;",
    to: "p.q1 - 1 - p.k0 > window;",
    tests: ["document_attention"],
  },
  {
    id: "overwrite-keeps-event-files",
    file: "src/train/output_dir.ts",
    from: "if (earlier !== null) {\n        for (const path of distflashEventFiles(",
    to: 'if (earlier === "never") {\n        for (const path of distflashEventFiles(',
    tests: ["output_folder"],
  },
  {
    id: "nccl-wheels-not-searched",
    file: "ffi/loader.ts",
    from: "    ...wheelCandidates(envOf(options)),\n",
    to: "",
    tests: ["nccl_loader"],
  },
  {
    id: "gpu-family-ambiguity-unchecked",
    file: "src/train/gpu_kinds.ts",
    from: "if (family.length > 1) {",
    to: "if (family.length > 9) {",
    tests: ["plan_gpus"],
  },
];

const args = [...Deno.args];
const flag = (name: string) => {
  const i = args.indexOf(name);
  return i < 0 ? undefined : args[i + 1];
};
const testsFrom = flag("--tests-from");
const only = flag("--only")?.split(",");
const repo = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const scratch = `/tmp/distflash-mutants-${Deno.pid}`;

function sh(cmd: string[], cwd = repo): string {
  const out = new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    cwd,
    stdout: "piped",
    stderr: "piped",
  })
    .outputSync();
  if (!out.success) {
    throw new Error(`${cmd.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
  return new TextDecoder().decode(out.stdout);
}

async function runTests(files: string[]): Promise<"caught" | "survived" | "no tests"> {
  const present = files.map((f) => `tests/${f}.test.ts`).filter((f) => {
    try {
      return Deno.statSync(join(scratch, f)).isFile;
    } catch {
      return false;
    }
  });
  if (present.length === 0) return "no tests";
  const child = new Deno.Command(Deno.execPath(), {
    args: ["test", "-A", "--no-check", ...present],
    cwd: scratch,
    env: { DISTFLASH_BUILD_CUDA: "0", NO_COLOR: "1" },
    stdout: "null",
    stderr: "null",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), 300_000);
  const status = await child.status;
  clearTimeout(timer);
  return status.success ? "survived" : "caught";
}

if (args.includes("--dry")) {
  for (const m of M) {
    const n = Deno.readTextFileSync(join(repo, m.file)).split(m.from).length - 1;
    console.log(`${n === 1 ? "ok" : `FOUND ${n} TIMES`} ${m.id}`);
  }
  Deno.exit(0);
}

sh(["git", "worktree", "add", "--detach", scratch, "HEAD"]);
try {
  sh(["cp", "-r", join(repo, "lib"), join(scratch, "lib")]);
  Deno.symlinkSync(join(repo, "node_modules"), join(scratch, "node_modules"));
  // Uncommitted changes of this checkout's sources come along (a check before committing).
  for (const f of sh(["git", "diff", "--name-only", "HEAD"]).trim().split("\n").filter(Boolean)) {
    Deno.copyFileSync(join(repo, f), join(scratch, f));
  }
  if (testsFrom) {
    Deno.removeSync(join(scratch, "tests"), { recursive: true });
    sh(["git", "checkout", testsFrom, "--", "tests"], scratch);
  }
  const results: [string, string][] = [];
  for (const m of M) {
    if (only && !only.includes(m.id)) continue;
    const path = join(scratch, m.file);
    const original = Deno.readTextFileSync(path);
    const count = original.split(m.from).length - 1;
    if (count !== 1) throw new Error(`${m.id}: the snippet occurs ${count} times in ${m.file}`);
    Deno.writeTextFileSync(path, original.replace(m.from, () => m.to));
    let result: string;
    try {
      result = await runTests(m.tests);
    } finally {
      Deno.writeTextFileSync(path, original);
    }
    results.push([m.id, result]);
    console.log(`${result.padEnd(9)} ${m.id} (${m.file}; ${m.tests.join(", ")})`);
  }
  const caught = results.filter(([, r]) => r === "caught").length;
  console.log(
    `\n${caught} of ${results.length} caught (${(100 * caught / results.length).toFixed(0)}%)` +
      (testsFrom ? `, tests from ${testsFrom}` : ""),
  );
  for (const [id, r] of results) if (r !== "caught") console.log(`  ${r}: ${id}`);
} finally {
  sh(["git", "worktree", "remove", "--force", scratch]);
}
