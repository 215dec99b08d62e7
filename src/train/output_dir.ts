/**
 * The output folder of a training run: which run it belongs to (run.json), who is writing to it
 * now (a lock), and the checks that keep a run from destroying data it did not make.
 *
 * - `checkOutputDir` (read-only; every rank and the launcher call it before any work): the folder
 *   is not the model's folder and does not hold it; none of the names a run writes is a symbolic
 *   link (writing through one would overwrite its target); no live run holds the lock; a fresh
 *   run does not mix into another run's folder (`--resume-from-checkpoint last` continues it,
 *   `--overwrite-output-dir` starts over); and it decides the run id and the checkpoint to resume.
 * - `claimOutputDir` (rank 0, once the ranks have met): takes the lock, clears the folder on
 *   `--overwrite-output-dir`, writes run.json.
 *
 * The lock is an advisory file lock (flock) on `distflash.lock`, held by rank 0 for the whole run
 * on an open file: the kernel releases it when that process ends, however it ends (kill -9
 * included; a zombie holds no files, and a reused pid does not hold the lock). The file's text
 * (pid, host, run id) is only there for messages. A file system without file locks (some Lustre
 * mounts) falls back to the pid check: the pid's process alive on this host, or any other host's.
 *
 * @module
 */
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readlinkSync,
  realpathSync,
  writeFileSync,
} from "node:fs";
import { hostname } from "node:os";
import { distflashEventFiles } from "./tensorboard.ts";
import { join, relative, resolve } from "node:path";
import {
  checkpointRunId,
  lastCheckpoint,
  parseCheckpointName,
  readCompletion,
} from "./checkpoint.ts";

/**
 * Makes `dir` the own folder of `tool`, a distflash command that runs a training run there and
 * simply runs again (`bench train`, `demo`): a missing or empty folder is marked with the file
 * `.distflash-<tool>` (spaces as dashes); a folder it marked earlier is reused (the caller starts
 * over with --overwrite-output-dir, which deletes only that run's own files: its checkpoints,
 * metrics.jsonl, run.json and the distflash event files in runs/); any other folder
 * with files is refused, so the tool never overwrites a folder it did not create.
 */
export function claimToolFolder(dir: string, tool: string): void {
  const mark = join(dir, `.distflash-${tool.replaceAll(" ", "-")}`);
  if (existsSync(mark)) return;
  if (existsSync(dir) && readdirSync(dir).length > 0) {
    throw new OutputDirError(
      `--output-dir ${dir} holds files that ${tool} did not write: name an empty or new folder`,
    );
  }
  mkdirSync(dir, { recursive: true });
  writeFileSync(mark, `a folder of distflash ${tool}; it reuses it\n`);
}

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
  "training_args.json",
  "runs",
];
const WRITTEN_PATTERN = /^(model-\d{5}-of-\d{5}\.safetensors|checkpoint-.*)$/;
/**
 * Names that, without run.json, say the folder holds files a run would overwrite: an earlier run
 * whose run.json is gone, a model folder, a checkpoint folder (`logs` aside: the launcher makes
 * it before its ranks check the folder; the lock and run.json are the run's own).
 */
const OVERWRITTEN = [
  ...WRITTEN.filter((n) => n !== "logs" && n !== LOCK_FILE && n !== RUN_FILE),
  "complete.json",
  "trainer_state.json",
  "optimizer.safetensors",
];
const OVERWRITTEN_PATTERN =
  /^(model-\d{5}-of-\d{5}\.safetensors|optimizer\.rank\d+-of-\d+\.safetensors)$/;

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

/** The lock file's text as a LockInfo, else null (empty, or half-written by a killed process). */
function parseLock(text: string): LockInfo | null {
  try {
    const l = JSON.parse(text);
    return Number.isInteger(l.pid) && typeof l.host === "string" ? l : null;
  } catch {
    return null;
  }
}

/**
 * The text of an open lock file, read through `file`: never by opening the path again, since
 * where flock is emulated with POSIX locks (NFS) closing any descriptor of the file would drop
 * this process's lock.
 */
function readLockText(file: Deno.FsFile): string {
  file.seekSync(0, Deno.SeekMode.Start);
  const chunks: Uint8Array[] = [];
  for (let total = 0; total < 1 << 16;) {
    const buf = new Uint8Array(4096);
    const n = file.readSync(buf);
    if (n === null || n === 0) break;
    chunks.push(buf.subarray(0, n));
    total += n;
  }
  const all = new Uint8Array(chunks.reduce((a, c) => a + c.length, 0));
  let at = 0;
  for (const c of chunks) all.set(c, (at += c.length) - c.length);
  return new TextDecoder().decode(all);
}

/** Whether the process that wrote a lock may still run (only this host's can be checked). */
function pidAlive(lock: LockInfo | null): boolean {
  if (lock === null) return false;
  if (lock.host !== hostname()) return true;
  return lock.pid === Deno.pid || existsSync(`/proc/${lock.pid}`);
}

function openLock(path: string, create: boolean): Deno.FsFile {
  try {
    return Deno.openSync(path, create ? { read: true, write: true, create: true } : { read: true });
  } catch (error) {
    throw new OutputDirError(
      `${path}: cannot open the output folder's lock (${(error as Error).message}); ` +
        "check the folder's permissions, or choose another output folder",
    );
  }
}

/**
 * Takes the exclusive file lock of an open lock file without waiting: false when another open
 * file (of any process, this one included) holds it. Where the file system has no file locks,
 * the pid written in the file decides instead.
 */
function tryLock(file: Deno.FsFile, exclusive: boolean): boolean {
  try {
    return file.tryLockSync(exclusive);
  } catch {
    return !pidAlive(parseLock(readLockText(file)));
  }
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** The refusal of a folder whose lock a live run holds; `text` is the lock file's. */
function inUse(flag: string, lockPath: string, text: string): OutputDirError {
  const lock = parseLock(text);
  const who = lock ? `pid ${lock.pid} on ${lock.host}, ` : "";
  return new OutputDirError(
    `${flag} is in use by another run (${who}holding the lock on ${lockPath}); ` +
      "wait for it or choose another output folder",
  );
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
  // A folder in use is refused first: nothing below may look at files a live run is changing.
  const lockPath = join(outputDir, LOCK_FILE);
  if (existsSync(lockPath)) {
    const file = openLock(lockPath, false);
    try {
      // Shared: checks (the launcher's, every rank's) do not stand in each other's way.
      if (!tryLock(file, false)) throw inUse(flag, lockPath, readLockText(file));
      try {
        file.unlockSync();
      } catch { /* no file locks here: nothing was taken */ }
    } finally {
      file.close();
    }
  }
  const names = existsSync(outputDir) ? readdirSync(outputDir) : [];
  const links = names.filter((n) => WRITTEN.includes(n) || WRITTEN_PATTERN.test(n))
    .filter((n) => {
      try {
        return lstatSync(join(outputDir, n)).isSymbolicLink();
      } catch {
        return false; // gone since the listing
      }
    });
  if (links.length) {
    const list = links.map((n) => `${n} -> ${readlinkSync(join(outputDir, n))}`).join(", ");
    throw new OutputDirError(
      `${flag}: ${list} ${links.length === 1 ? "is a symbolic link" : "are symbolic links"}; ` +
        "distflash does not write through links (that would overwrite their targets): remove " +
        "them, or choose another output folder",
    );
  }

  const folderRun = readRunId(outputDir);
  const checkpoints = names.filter((n) => n.startsWith("checkpoint-"));
  const used = folderRun !== null || checkpoints.length > 0;
  const startOver = `--overwrite-output-dir to start over (it deletes them)`;
  if (!used && resume !== "last" && !overwriteOutputDir) {
    // Not an earlier run's folder, yet it holds files this run would write over.
    const theirs = names.filter((n) => OVERWRITTEN.includes(n) || OVERWRITTEN_PATTERN.test(n))
      .sort();
    if (theirs.length) {
      const kind = theirs.includes("complete.json")
        ? "a checkpoint folder"
        : theirs.some((n) => /^model.*\.safetensors$/.test(n))
        ? "a model folder"
        : "files of a run whose run.json is gone";
      throw new OutputDirError(
        `${flag} holds ${join(outputDir, theirs[0])}${
          theirs.length > 1
            ? ` (and ${theirs.slice(1, 4).join(", ")}${theirs.length > 4 ? ", ..." : ""})`
            : ""
        } but no ${RUN_FILE}: it looks like ${kind}, not a distflash run's output folder, and ` +
          "this run would overwrite those files. Choose another output folder, or pass " +
          "--overwrite-output-dir to let this run overwrite them",
      );
    }
  }
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

/**
 * An OS error of writing into the output folder (read-only file system, no permission, full
 * disk) as an OutputDirError naming `--output-dir`; distflash's own errors pass unchanged.
 */
function unwritable(outputDir: string, error: unknown): Error {
  if (error instanceof OutputDirError || !(error instanceof Error)) return error as Error;
  return new OutputDirError(
    `--output-dir ${outputDir}: cannot write there (${error.message}); choose a folder this ` +
      "user can write to, on a writable file system with free space",
  );
}

/** A held output-folder lock; `release` deletes the file and unlocks it. */
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
  const lockPath = join(outputDir, LOCK_FILE);
  const runId = plan.runId ?? crypto.randomUUID();
  let file: Deno.FsFile;
  try {
    Deno.mkdirSync(outputDir, { recursive: true });
    file = takeLock(outputDir, lockPath, log);
  } catch (error) {
    throw unwritable(outputDir, error);
  }
  const release = () => {
    try {
      // Deleted only while it is still this run's file (never a later run's new one), then
      // unlocked by closing it.
      if (Deno.lstatSync(lockPath).ino === file.statSync().ino) Deno.removeSync(lockPath);
    } catch { /* already gone */ }
    try {
      file.close();
    } catch { /* released already */ }
  };
  try {
    const body = JSON.stringify({ pid: Deno.pid, host: hostname(), run_id: runId });
    file.truncateSync(0);
    file.seekSync(0, Deno.SeekMode.Start);
    const bytes = new TextEncoder().encode(body);
    for (let done = 0; done < bytes.length;) done += file.writeSync(bytes.subarray(done));
    if (overwrite && plan.resumeDir === null) {
      const earlier = readRunId(outputDir);
      for (const name of readdirSync(outputDir)) {
        if (isRunsOwn(outputDir, name, earlier) || name === "metrics.jsonl" || name === RUN_FILE) {
          Deno.removeSync(join(outputDir, name), { recursive: true });
          log(`--overwrite-output-dir: deleted ${join(outputDir, name)}`);
        }
      }
      // The earlier run's TensorBoard curves, which would otherwise mix with this run's.
      if (earlier !== null) {
        for (const path of distflashEventFiles(join(outputDir, "runs"))) {
          Deno.removeSync(path);
          log(`--overwrite-output-dir: deleted ${path}`);
        }
      }
    }
    Deno.writeTextFileSync(join(outputDir, RUN_FILE), JSON.stringify({ run_id: runId }) + "\n");
  } catch (error) {
    release();
    throw unwritable(outputDir, error);
  }
  return { runId, release };
}

/**
 * Whether entry `name` of `outputDir` is one of run `runId`'s checkpoints, which
 * `--overwrite-output-dir` deletes: a canonical `checkpoint-<N>` folder whose complete.json names
 * the run, or the run's interrupted save (`.tmp-`, `.old-`, `.deleting-<run id>`). Never a user's
 * `checkpoint-best/` or `checkpoint-notes.txt`, nor another run's checkpoint.
 */
function isRunsOwn(outputDir: string, name: string, runId: string | null): boolean {
  if (runId === null) return false;
  const m = /^(checkpoint-[^.]*)\.(tmp|old|deleting)-(.*)$/.exec(name);
  if (m) return m[3] === runId && parseCheckpointName(m[1]) !== null;
  return parseCheckpointName(name) !== null && checkpointRunId(join(outputDir, name)) === runId;
}

/**
 * Opens and locks `lockPath` for this run; the returned file holds the lock until closed. A lock
 * file that nobody holds (its run ended without deleting it) is taken over, with a note.
 */
function takeLock(outputDir: string, lockPath: string, log: (line: string) => void): Deno.FsFile {
  const flag = `--output-dir ${outputDir}`;
  for (let attempt = 0;; attempt++) {
    const file = openLock(lockPath, true);
    try {
      // Another job's check holds a shared lock for an instant: wait that out, not a run.
      let locked = tryLock(file, true);
      for (let wait = 0; !locked && wait < 5; wait++) {
        sleepSync(20);
        locked = tryLock(file, true);
      }
      if (!locked) throw inUse(flag, lockPath, readLockText(file));
      // A run that ended between our open and our lock may have deleted the file: then we hold
      // the lock of a file no one else will open. Lock the file now at the path instead.
      let current: Deno.FileInfo | null = null;
      try {
        current = Deno.lstatSync(lockPath);
      } catch { /* deleted */ }
      if (current?.ino !== file.statSync().ino) {
        if (attempt < 10) {
          file.close();
          continue;
        }
        throw new OutputDirError(`${lockPath}: keeps changing; is another run starting?`);
      }
      if (readLockText(file).trim() !== "") {
        log(`note: taking over ${lockPath}, left by a run that ended without removing it`);
      }
      return file;
    } catch (error) {
      try {
        file.close();
      } catch { /* closed above */ }
      throw error;
    }
  }
}

/** The run id rank 0 wrote (the other ranks read it once the ranks have met). */
export function outputRunId(outputDir: string): string {
  const id = readRunId(outputDir);
  if (id === null) throw new OutputDirError(`${join(outputDir, RUN_FILE)}: missing`);
  return id;
}
