/**
 * The output folder of a training run: which run it belongs to (run.json), who is writing to it
 * now (a lock), and the checks that keep a run from destroying data it did not make.
 *
 * - `checkOutputDir` (read-only; every rank and the launcher call it before any work): the folder
 *   is not the model's folder and does not hold it; none of the names a run writes is a symbolic
 *   link (writing through one would overwrite its target); no live run holds the lock; a fresh
 *   run does not mix into another run's folder (`--resume-from-checkpoint last` continues it,
 *   `--overwrite-output-dir` starts over); and it decides the run id and the checkpoint to resume.
 * - `claimOutputDir` (rank 0, once the ranks have met): takes the lock (a lock whose process is
 *   dead on this host is taken over), clears the folder on `--overwrite-output-dir`, writes
 *   run.json.
 *
 * @module
 */
import { existsSync, lstatSync, readdirSync, readlinkSync, realpathSync } from "node:fs";
import { hostname } from "node:os";
import { join, relative, resolve } from "node:path";
import { lastCheckpoint, readCompletion } from "./checkpoint.ts";

/** The run this output folder belongs to. */
export const RUN_FILE = "run.json";
/** Present while a run writes to the folder: `{pid, host, run_id, started}`. */
export const LOCK_FILE = "distflash.lock";

/** Names a run writes directly in its output folder (a link among them is refused). */
const WRITTEN = [
  RUN_FILE,
  LOCK_FILE,
  "metrics.jsonl",
  "logs",
  "config.json",
  "model.safetensors",
  "model.safetensors.index.json",
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "tokenizer.model",
  "generation_config.json",
];
const WRITTEN_PATTERN = /^(model-\d{5}-of-\d{5}\.safetensors|checkpoint-.*)$/;

/** An output folder this run must not use, and why. */
export class OutputDirError extends Error {
  /** Creates the error; `message` names the folder and what to do. */
  constructor(message: string) {
    super(message);
    this.name = "OutputDirError";
  }
}

/** What a run needs to know about its output folder. */
export interface OutputDirPlan {
  /** The run's id: the resumed checkpoint's, or null for a fresh run (rank 0 makes one). */
  runId: string | null;
  /** The checkpoint folder to resume from, if any. */
  resumeDir: string | null;
  /**
   * Where resumeDir's files are before rank 0 recovers interrupted saves (a finished save's
   * `.tmp-` folder that recovery renames to resumeDir), else resumeDir.
   */
  resumeSource: string | null;
  /** Lines to log (checkpoints `last` skipped). */
  notes: string[];
}

interface LockInfo {
  pid: number;
  host: string;
  run_id?: string;
}

function readRunId(outputDir: string): string | null {
  const path = join(outputDir, RUN_FILE);
  if (!existsSync(path)) return null;
  try {
    const r = JSON.parse(Deno.readTextFileSync(path));
    if (typeof r.run_id === "string" && r.run_id !== "") return r.run_id;
  } catch { /* reported below */ }
  throw new OutputDirError(
    `${path}: damaged (expected {"run_id": "..."}); delete it to start over`,
  );
}

function readLock(path: string): LockInfo | null {
  try {
    const l = JSON.parse(Deno.readTextFileSync(path));
    return Number.isInteger(l.pid) && typeof l.host === "string" ? l : null;
  } catch {
    return null; // half-written by a process killed while taking it
  }
}

/** Whether the process that wrote a lock may still run (only this host's can be checked). */
function lockAlive(lock: LockInfo | null): boolean {
  if (lock === null) return false;
  if (lock.host !== hostname()) return true;
  return lock.pid === Deno.pid || existsSync(`/proc/${lock.pid}`);
}

const real = (path: string) => existsSync(path) ? realpathSync(path) : resolve(path);

/**
 * The read-only checks of the module documentation; returns the run id and checkpoint to resume.
 * `modelDir` is the model's folder (null for a preset).
 */
export function checkOutputDir(options: {
  outputDir: string;
  modelDir: string | null;
  resumeFromCheckpoint?: string;
  overwriteOutputDir: boolean;
}): OutputDirPlan {
  const { outputDir, modelDir, resumeFromCheckpoint: resume, overwriteOutputDir } = options;
  const flag = `--output-dir ${outputDir}`;
  if (modelDir) {
    const rel = relative(real(outputDir), real(modelDir));
    if (rel === "" || (!rel.startsWith("..") && !rel.startsWith("/"))) {
      throw new OutputDirError(
        `${flag} ${rel === "" ? "is" : "holds"} the model's folder ${modelDir}: a run would ` +
          "overwrite or prune the files it reads; choose another output folder",
      );
    }
  }
  if (existsSync(outputDir) && !lstatSync(real(outputDir)).isDirectory()) {
    throw new OutputDirError(`${flag} is a file, not a folder`);
  }
  const names = existsSync(outputDir) ? readdirSync(outputDir) : [];
  const links = names.filter((n) => WRITTEN.includes(n) || WRITTEN_PATTERN.test(n))
    .filter((n) => lstatSync(join(outputDir, n)).isSymbolicLink());
  if (links.length) {
    const list = links.map((n) => `${n} -> ${readlinkSync(join(outputDir, n))}`).join(", ");
    throw new OutputDirError(
      `${flag}: ${list} ${links.length === 1 ? "is a symbolic link" : "are symbolic links"}; ` +
        "distflash does not write through links (that would overwrite their targets): remove " +
        "them, or choose another output folder",
    );
  }
  const lockPath = join(outputDir, LOCK_FILE);
  if (existsSync(lockPath)) {
    const lock = readLock(lockPath);
    if (lockAlive(lock)) {
      throw new OutputDirError(
        `${flag} is in use by another run (pid ${lock!.pid} on ${lock!.host}, see ${lockPath}); ` +
          "wait for it or choose another output folder (if that run is gone, delete the lock)",
      );
    }
  }

  const folderRun = readRunId(outputDir);
  const checkpoints = names.filter((n) => n.startsWith("checkpoint-"));
  const used = folderRun !== null || checkpoints.length > 0;
  const startOver = `--overwrite-output-dir to start over (it deletes them)`;
  if (!resume) {
    if (used && !overwriteOutputDir) {
      throw new OutputDirError(
        `${flag} holds an earlier run (${
          checkpoints.length ? checkpoints.slice(0, 3).join(", ") : RUN_FILE
        }${checkpoints.length > 3 ? ", ..." : ""}): pass --resume-from-checkpoint last to ` +
          `continue it, or ${startOver}, or choose another output folder`,
      );
    }
    return { runId: null, resumeDir: null, resumeSource: null, notes: [] };
  }
  if (resume === "last") {
    if (folderRun === null) {
      throw new OutputDirError(
        `--resume-from-checkpoint last: ${outputDir} has no ${RUN_FILE}, so no run to continue ` +
          "(name a checkpoint folder instead, or start a fresh run)",
      );
    }
    const { path, source, skipped } = lastCheckpoint(outputDir, folderRun);
    return {
      runId: folderRun,
      resumeDir: path,
      resumeSource: source,
      notes: skipped.map((s) => `--resume-from-checkpoint last skipped ${s}`),
    };
  }
  const record = readCompletion(resume);
  if (folderRun !== null && folderRun !== record.run_id && !overwriteOutputDir) {
    throw new OutputDirError(
      `${flag} holds another run (${folderRun}) than the checkpoint ${resume} ` +
        `(${record.run_id}): continue into a fresh folder, or pass ${startOver}`,
    );
  }
  return { runId: record.run_id, resumeDir: resume, resumeSource: resume, notes: [] };
}

/** A held output-folder lock; `release` deletes it. */
export interface OutputLock {
  runId: string;
  release(): void;
}

/**
 * Rank 0's part, after `checkOutputDir`: takes the lock, deletes an earlier run's outputs on
 * `overwrite`, writes run.json (a new id for a fresh run). Lines it logs go to `log`.
 */
export function claimOutputDir(
  outputDir: string,
  plan: OutputDirPlan,
  overwrite: boolean,
  log: (line: string) => void,
): OutputLock {
  Deno.mkdirSync(outputDir, { recursive: true });
  const lockPath = join(outputDir, LOCK_FILE);
  const runId = plan.runId ?? crypto.randomUUID();
  const body = JSON.stringify({ pid: Deno.pid, host: hostname(), run_id: runId });
  for (let attempt = 0;; attempt++) {
    try {
      Deno.writeTextFileSync(lockPath, body, { createNew: true });
      break;
    } catch (error) {
      if (!(error instanceof Deno.errors.AlreadyExists) || attempt > 0) throw error;
      const lock = readLock(lockPath);
      if (lockAlive(lock)) {
        throw new OutputDirError(
          `--output-dir ${outputDir} is in use by another run (pid ${lock!.pid} on ${lock!.host})`,
        );
      }
      log(`note: taking over ${lockPath}, left by a run that ended without removing it`);
      Deno.removeSync(lockPath);
    }
  }
  try {
    if (overwrite && plan.resumeDir === null) {
      for (const name of readdirSync(outputDir)) {
        if (name.startsWith("checkpoint-") || name === "metrics.jsonl" || name === RUN_FILE) {
          Deno.removeSync(join(outputDir, name), { recursive: true });
          log(`--overwrite-output-dir: deleted ${join(outputDir, name)}`);
        }
      }
    }
    Deno.writeTextFileSync(join(outputDir, RUN_FILE), JSON.stringify({ run_id: runId }) + "\n");
  } catch (error) {
    Deno.removeSync(lockPath);
    throw error;
  }
  return {
    runId,
    release: () => {
      try {
        if (readLock(lockPath)?.pid === Deno.pid) Deno.removeSync(lockPath);
      } catch { /* already gone */ }
    },
  };
}

/** The run id rank 0 wrote (the other ranks read it once the ranks have met). */
export function outputRunId(outputDir: string): string {
  const id = readRunId(outputDir);
  if (id === null) throw new OutputDirError(`${join(outputDir, RUN_FILE)}: missing`);
  return id;
}
