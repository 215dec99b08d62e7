/**
 * Checkpoints of a training run: how they are written so that a crash at any moment leaves either
 * the previous state or a complete new one, how the checkpoint to resume from is found, and which
 * ones pruning may delete.
 *
 * ## A save, in order
 * 1. Rank 0 empties `checkpoint-N.tmp-<run id>` (a leftover of a crashed save of this run) and
 *    creates it; all ranks wait for it (a barrier).
 * 2. Every rank writes its files into that folder and flushes each to disk (fsync).
 * 3. A barrier: every rank's files are on disk.
 * 4. Rank 0 checks that every expected file is there and writes `complete.json` last (run id,
 *    step, world size, each file's size and SHA-256), flushed, then renames the folder to
 *    `checkpoint-N`. The checksums are verified before a resume (`verifyChecksums`): a flipped
 *    byte anywhere, the optimizer state included, is refused naming the file. Hashing costs
 *    about 0.9 s per GiB on one core (node:crypto, SHA-NI), at each save and each resume.
 *    An existing `checkpoint-N` is first renamed to `checkpoint-N.old-<run id>` and deleted only
 *    once the new folder is in place. Only this run's own checkpoint is replaced so: anything
 *    else under that name (another run's checkpoint, a user's file or folder) stops the save
 *    before any file is written, unless `--overwrite-output-dir` was given.
 *
 * A folder counts as a checkpoint only with its canonical name `checkpoint-<N>` (no leading
 * zeros, N a safe integer) and a valid `complete.json` whose files are all present with the
 * recorded sizes. `last` takes the newest such checkpoint of this run (the run id in the output
 * folder's run.json, see output_dir.ts); pruning deletes only such checkpoints of this run, never
 * the newest. Rank 0 recovers interrupted saves once the ranks have met (`recoverInterruptedSaves`),
 * but every rank chooses `last` before that, on the folder as recovery will leave it
 * (`recoveryMoves`), so the choice and the recovery agree.
 *
 * DISTFLASH_SAVE_PAUSE_MS (a testing aid) sleeps that long between the stages of a save, so a test
 * can kill a run in the middle of one. DISTFLASH_TEST_FAIL_WRITE (test-only, see writeFileAtomic
 * in io/safetensors.ts) makes the write of a chosen file fail as a full disk does;
 * DISTFLASH_TEST_SYNC_LOG and DISTFLASH_TEST_FAIL_SYNC (test-only, see flushToDisk there) record
 * every flush to disk or fail a chosen one.
 *
 * @module
 */
import { existsSync, lstatSync, readdirSync } from "node:fs";
import { basename, join } from "node:path";
import { createHash } from "node:crypto";
import { flushToDisk, writeBytesAtomic } from "../io/files.ts";

/** The completion record, written last into a checkpoint folder. */
export const COMPLETE_FILE = "complete.json";
/** The trainer state of a checkpoint (the Hugging Face name). */
export const TRAINER_STATE_FILE = "trainer_state.json";

/** What complete.json holds. */
export interface CompletionRecord {
  format: 1;
  run_id: string;
  step: number;
  world_size: number;
  /** Every file of the checkpoint (complete.json aside) and its size in bytes. */
  files: Record<string, number>;
  /**
   * Every file's SHA-256 (lowercase hex), the same names as `files`. Absent in checkpoints saved
   * before checksums were recorded: those resume unverified, with a note.
   */
  sha256?: Record<string, string>;
}

/** What trainer_state.json holds (the fields distflash reads back). */
export interface TrainerState {
  global_step: number;
  epoch: number;
  seed: number;
  model: string;
  /** Logged steps and evaluations, as written (older checkpoints say `lr`: see state.ts). */
  log_history: Record<string, unknown>[];
}

/** A checkpoint that cannot be used, or a save that failed; the message names the file. */
export class CheckpointError extends Error {
  /** Creates the error; `message` names the folder or file. */
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "CheckpointError";
  }
}

/** `checkpoint-N`, the folder name of step N. */
export function checkpointName(step: number): string {
  return `checkpoint-${step}`;
}

/** The step of a canonical checkpoint folder name, else null (`checkpoint-0004`, huge numbers). */
export function parseCheckpointName(name: string): number | null {
  const m = /^checkpoint-(0|[1-9][0-9]*)$/.exec(name);
  if (!m) return null;
  const n = Number(m[1]);
  return Number.isSafeInteger(n) ? n : null;
}

/** The optimizer file of `rank`: one per rank when sharded, else one written by rank 0. */
export function optimizerFileName(rank: number, worldSize: number, sharded: boolean): string {
  return sharded ? `optimizer.rank${rank}-of-${worldSize}.safetensors` : "optimizer.safetensors";
}

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);
const isCount = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;

function readJson(path: string): unknown {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (error) {
    throw new CheckpointError(`${path}: cannot read: ${(error as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new CheckpointError(
      `${path}: not valid JSON (${(error as Error).message}); the file is damaged or truncated`,
    );
  }
}

/**
 * Reads and checks `dir`/complete.json and that every file it lists is there with its size.
 * Throws a CheckpointError saying what is missing or wrong.
 */
export function readCompletion(dir: string): CompletionRecord {
  const path = join(dir, COMPLETE_FILE);
  if (!existsSync(path)) {
    throw new CheckpointError(
      `${dir}: no ${COMPLETE_FILE}, so the checkpoint is incomplete (its save was interrupted) ` +
        "or was written by a distflash older than 0.2",
    );
  }
  const r = readJson(path);
  if (
    !isObject(r) || r.format !== 1 || typeof r.run_id !== "string" || r.run_id === "" ||
    !isCount(r.step) || !Number.isSafeInteger(r.world_size) || (r.world_size as number) < 1 ||
    !isObject(r.files) || !Object.values(r.files).every(isCount)
  ) {
    throw new CheckpointError(`${path}: not a distflash completion record`);
  }
  if (r.sha256 !== undefined) {
    const sums = r.sha256, names = Object.keys(r.files as Record<string, number>);
    if (
      !isObject(sums) || Object.keys(sums).length !== names.length ||
      !names.every((n) => typeof sums[n] === "string" && /^[0-9a-f]{64}$/.test(sums[n] as string))
    ) {
      throw new CheckpointError(
        `${path}: its sha256 checksums do not match its files (the record is damaged)`,
      );
    }
  }
  for (const [name, size] of Object.entries(r.files as Record<string, number>)) {
    let actual: number;
    try {
      const st = lstatSync(join(dir, name));
      if (!st.isFile()) throw new Error("not a regular file");
      actual = st.size;
    } catch (error) {
      throw new CheckpointError(`${dir}: ${name} is missing (${(error as Error).message})`);
    }
    if (actual !== size) {
      throw new CheckpointError(`${dir}: ${name} has ${actual} bytes, ${size} were written`);
    }
  }
  return r as unknown as CompletionRecord;
}

/** The SHA-256 of the file at `path`, lowercase hex, read in 8 MiB pieces. */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  const file = await Deno.open(path, { read: true });
  try {
    const buf = new Uint8Array(8 << 20);
    for (;;) {
      const n = await file.read(buf);
      if (n === null) break;
      hash.update(buf.subarray(0, n));
    }
  } finally {
    file.close();
  }
  return hash.digest("hex");
}

/**
 * Verifies every file of checkpoint folder `dir` (complete.json's files, sizes already checked
 * by `readCompletion`) against the SHA-256 recorded at save. Throws a CheckpointError naming the
 * first file whose content changed. Returns a note when the checkpoint has no checksums (saved
 * by an older distflash): it is resumed unverified. Reads every byte (about 0.9 s per GiB).
 */
export async function verifyChecksums(
  dir: string,
  record: CompletionRecord,
): Promise<string | null> {
  if (record.sha256 === undefined) {
    return `${dir} has no checksums in its ${COMPLETE_FILE} (saved by an older distflash): ` +
      "its files' sizes were checked, their content is not verified";
  }
  for (const name of Object.keys(record.files).sort()) {
    const actual = await sha256File(join(dir, name));
    if (actual !== record.sha256[name]) {
      throw new CheckpointError(
        `${join(dir, name)}: its content differs from what was saved (SHA-256 ${actual}, ` +
          `${COMPLETE_FILE} recorded ${record.sha256[name]}): the file was changed or damaged ` +
          "on disk since the save; resume from another checkpoint (or restore this file)",
      );
    }
  }
  return null;
}

/**
 * Reads and checks `dir`/trainer_state.json: global_step a non-negative integer (equal to
 * `step` when given), epoch and seed numbers, log_history an array of logged steps.
 */
export function readTrainerState(dir: string, step?: number): TrainerState {
  const path = join(dir, TRAINER_STATE_FILE);
  const s = readJson(path);
  const bad = (what: string) => new CheckpointError(`${path}: ${what}`);
  if (!isObject(s)) throw bad("expected a JSON object");
  if (!isCount(s.global_step)) {
    throw bad(`global_step must be a non-negative integer, got ${JSON.stringify(s.global_step)}`);
  }
  if (step !== undefined && s.global_step !== step) {
    throw bad(`global_step ${s.global_step} disagrees with ${COMPLETE_FILE} (step ${step})`);
  }
  if (typeof s.epoch !== "number" || !(s.epoch >= 0)) throw bad("epoch must be a number >= 0");
  if (!isCount(s.seed)) throw bad("seed must be a non-negative integer");
  if (!Array.isArray(s.log_history)) throw bad("log_history must be an array");
  for (const [i, m] of s.log_history.entries()) {
    if (!isObject(m) || !isCount(m.step) || m.step > (s.global_step as number)) {
      throw bad(`log_history[${i}] is not a logged step up to global_step`);
    }
  }
  return s as unknown as TrainerState;
}

/**
 * The trainer state of checkpoint `dir` to resume (its files at `source` until rank 0's recovery
 * renames them), checked to be one checkpoint's: trainer_state.json's `global_step` equal to
 * complete.json's step and, for a canonical folder name, to the N of `checkpoint-N` (an edited
 * state would resume one step's weights at another step). Also checks that a run of `worldSize`
 * ranks, `sharded` or not, finds its optimizer file(s) in it.
 */
export function readResumeState(
  dir: string,
  source: string,
  run?: { worldSize: number; sharded: boolean },
): TrainerState {
  const record = readCompletion(source);
  const state = readTrainerState(source, record.step);
  const named = parseCheckpointName(basename(dir));
  if (named !== null && named !== record.step) {
    throw new CheckpointError(
      `${join(source, COMPLETE_FILE)}: step ${record.step} (and trainer_state.json's global_step ` +
        `${state.global_step}) disagrees with the folder's name ${basename(dir)}: the checkpoint ` +
        "was renamed or edited; resume from a checkpoint as its run saved it",
    );
  }
  if (run) {
    const need = Array.from(
      { length: run.sharded ? run.worldSize : 1 },
      (_, r) => optimizerFileName(r, run.worldSize, run.sharded),
    );
    if (!need.every((n) => n in record.files)) {
      const sharded = Object.keys(record.files).some((n) => /^optimizer\.rank\d+-of-/.test(n));
      const n = record.world_size;
      throw new CheckpointError(
        `--resume-from-checkpoint ${dir}: saved by ${n} rank${n === 1 ? "" : "s"}, ` +
          `${sharded ? "full_shard" : "no_shard"}; this run has ${run.worldSize} ` +
          `rank${run.worldSize === 1 ? "" : "s"}, ${run.sharded ? "full_shard" : "no_shard"}: ` +
          `resume with the same ranks and --fsdp as the checkpoint (${n} ` +
          `rank${n === 1 ? "" : "s"}, ${sharded ? "full_shard" : "no_shard"})`,
      );
    }
  }
  return state;
}

/** One entry of the output folder that looks like a checkpoint. */
export interface CheckpointEntry {
  name: string;
  path: string;
  /** The step, for canonical names. */
  step: number | null;
  /** A complete checkpoint of this run; else why it does not count. */
  usable: boolean;
  reason?: string;
  /** Where its files are until rank 0's recovery renames them to `path` (absent: at `path`). */
  source?: string;
}

/**
 * Every `checkpoint-*` entry of `outputDir`, newest step first, each judged for run `runId`.
 * With `afterRecovery`, the folder as `recoverInterruptedSaves` will leave it: a save of this run
 * that it will rename into place counts under its final name (judged by the folder it comes from),
 * so that `last`, chosen before rank 0 recovers, agrees with what recovery does.
 */
export function scanCheckpoints(
  outputDir: string,
  runId: string,
  afterRecovery = false,
): CheckpointEntry[] {
  if (!existsSync(outputDir)) return [];
  const out: CheckpointEntry[] = [];
  const names = readdirSync(outputDir);
  const moves = afterRecovery ? recoveryMoves(outputDir, runId, names) : new Map<string, string>();
  // Recovery moves these, or deletes them (an `.old-` copy whose final name holds the checkpoint,
  // a pruned folder): not checkpoints to report as skipped.
  const goes = (n: string) =>
    finalNameOf(n, ".old-", runId) !== null || n.endsWith(`.deleting-${runId}`);
  const moved = new Set(moves.values());
  const kept = afterRecovery ? names.filter((n) => !moved.has(n) && !goes(n)) : names;
  for (const name of [...kept, ...moves.keys()]) {
    if (!name.startsWith("checkpoint-")) continue;
    const path = join(outputDir, name), step = parseCheckpointName(name);
    const entry: CheckpointEntry = { name, path, step, usable: false };
    out.push(entry);
    const source = join(outputDir, moves.get(name) ?? name);
    if (moves.has(name)) entry.source = source;
    if (step === null) {
      entry.reason = name.includes(".tmp-")
        ? "an unfinished save"
        : "not a canonical checkpoint-<N> name";
      continue;
    }
    if (!lstatSync(source).isDirectory()) {
      entry.reason = "not a folder";
      continue;
    }
    try {
      const record = readCompletion(source);
      if (record.run_id !== runId) entry.reason = `written by another run (${record.run_id})`;
      else if (record.step !== step) entry.reason = `its ${COMPLETE_FILE} says step ${record.step}`;
      else entry.usable = true;
    } catch (error) {
      entry.reason = `incomplete: ${(error as Error).message}`;
    }
  }
  return out.sort((a, b) => (b.step ?? -1) - (a.step ?? -1));
}

/**
 * The newest complete checkpoint of run `runId` in `outputDir`, and a line for each newer or
 * unfinished one it skipped. Throws when there is none.
 */
export function lastCheckpoint(outputDir: string, runId: string): {
  path: string;
  /** Where its files are until recovery renames them to `path` (an interrupted save's folder). */
  source: string;
  skipped: string[];
} {
  // As rank 0's recovery will leave the folder: every rank chooses before it runs.
  const entries = scanCheckpoints(outputDir, runId, true);
  const found = entries.find((e) => e.usable);
  const skipped = entries
    .filter((e) => !e.usable && (found === undefined || e.step === null || e.step > found.step!))
    .map((e) => `${e.name}: ${e.reason}`);
  if (!found) {
    throw new CheckpointError(
      `--resume-from-checkpoint last: ${outputDir} holds no complete checkpoint of this run` +
        (skipped.length ? ` (skipped ${skipped.join("; ")})` : ""),
    );
  }
  return { path: found.path, source: found.source ?? found.path, skipped };
}

/**
 * Deletes the oldest complete checkpoints of run `runId` beyond `keep` (0: keep all). Other
 * runs' folders, stray names and incomplete folders are never touched, nor the newest checkpoint.
 */
export async function pruneCheckpoints(
  outputDir: string,
  runId: string,
  keep: number,
): Promise<string[]> {
  if (keep <= 0) return [];
  const ours = scanCheckpoints(outputDir, runId).filter((e) => e.usable);
  const doomed = ours.slice(Math.max(1, keep));
  for (const e of doomed) {
    // Renamed first: a crash during the deletion leaves a `.deleting-` folder, never a half
    // checkpoint under a canonical name.
    const trash = `${e.path}.deleting-${runId}`;
    await Deno.rename(e.path, trash);
    await Deno.remove(trash, { recursive: true });
  }
  return doomed.map((e) => e.name);
}

/** `checkpoint-N` of a `checkpoint-N<tag><runId>` folder of run `runId`, else null. */
function finalNameOf(name: string, tag: string, runId: string): string | null {
  const cut = name.lastIndexOf(tag);
  if (cut <= 0 || name.slice(cut + tag.length) !== runId) return null;
  const final = name.slice(0, cut);
  return parseCheckpointName(final) === null ? null : final;
}

/**
 * The run id in `path`/complete.json when `path` is a folder with a completion record (its files
 * not checked), else null: not a distflash checkpoint.
 */
export function checkpointRunId(path: string): string | null {
  try {
    if (!lstatSync(path).isDirectory()) return null;
    const r = JSON.parse(Deno.readTextFileSync(join(path, COMPLETE_FILE)));
    return isObject(r) && r.format === 1 && typeof r.run_id === "string" && r.run_id !== ""
      ? r.run_id
      : null;
  } catch {
    return null;
  }
}

function isComplete(path: string): boolean {
  try {
    readCompletion(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * The renames that recovering run `runId`'s interrupted saves makes among `names` (the entries of
 * `outputDir`): final name -> the folder renamed to it. Only into a free final name: a complete
 * `.tmp-` folder (a save cut short before or between its renames), else an `.old-` one (a
 * replaced checkpoint whose replacement never arrived).
 */
export function recoveryMoves(
  outputDir: string,
  runId: string,
  names: readonly string[],
): Map<string, string> {
  const moves = new Map<string, string>();
  const free = (final: string) => !names.includes(final) && !moves.has(final);
  for (const name of names) {
    const final = finalNameOf(name, ".tmp-", runId);
    if (final !== null && free(final) && isComplete(join(outputDir, name))) moves.set(final, name);
  }
  for (const name of names) {
    const final = finalNameOf(name, ".old-", runId);
    if (final !== null && free(final)) moves.set(final, name);
  }
  return moves;
}

/**
 * Finishes or undoes saves of run `runId` that a crash interrupted (call with the output folder
 * locked, before training): the moves of `recoveryMoves` first; then an `.old-` folder whose
 * final name holds a complete checkpoint is deleted, and so are an incomplete `.tmp-` folder (or
 * one whose final name is taken) and a `.deleting-` one (pruned). Returns a line per action.
 */
export async function recoverInterruptedSaves(outputDir: string, runId: string): Promise<string[]> {
  const done: string[] = [];
  const names = existsSync(outputDir) ? readdirSync(outputDir) : [];
  const moves = recoveryMoves(outputDir, runId, names);
  for (const [final, name] of moves) {
    await Deno.rename(join(outputDir, name), join(outputDir, final));
    done.push(
      name.includes(".tmp-")
        ? `${name}: a finished save, renamed to ${final}`
        : `${name}: its replacement never arrived, renamed back to ${final}`,
    );
  }
  const moved = new Set(moves.values());
  for (const name of names) {
    if (moved.has(name)) continue;
    if (finalNameOf(name, ".tmp-", runId) !== null) {
      await Deno.remove(join(outputDir, name), { recursive: true });
      done.push(`${name}: an unfinished save, deleted`);
    } else if (name.lastIndexOf(".deleting-") > 0 && name.endsWith(`.deleting-${runId}`)) {
      await Deno.remove(join(outputDir, name), { recursive: true });
      done.push(`${name}: a pruned checkpoint whose deletion was cut short, deleted`);
    }
  }
  for (const name of names) {
    const final = finalNameOf(name, ".old-", runId);
    if (final === null || moved.has(name) || !isComplete(join(outputDir, final))) continue;
    await Deno.remove(join(outputDir, name), { recursive: true });
    done.push(`${name}: replaced by a complete ${final}, deleted`);
  }
  return done;
}

/** Flushes a file or folder to disk. */
export async function syncPath(path: string): Promise<void> {
  const file = await Deno.open(path, { read: true });
  try {
    await flushToDisk(file, path);
  } finally {
    file.close();
  }
}

/**
 * Writes a text file atomically and flushes it (writeFileAtomic, so test fault injection reaches
 * it too); an error names the file.
 */
export async function writeTextSynced(path: string, text: string): Promise<void> {
  try {
    await writeBytesAtomic(path, text);
  } catch (error) {
    throw new CheckpointError((error as Error).message, { cause: error });
  }
}

const pauseMs = () => Number(Deno.env.get("DISTFLASH_SAVE_PAUSE_MS") ?? 0);
const pause = () => {
  const ms = pauseMs();
  return ms > 0 ? new Promise((resolve) => setTimeout(resolve, ms)) : Promise.resolve();
};

/** Who takes part in saves, and how they wait for each other. */
export interface SaverOptions {
  outputDir: string;
  runId: string;
  rank: number;
  worldSize: number;
  /** Optimizer state sharded over the ranks (each rank writes its own file). */
  sharded: boolean;
  /** Returns once every rank has called it (a collective); a no-op on one rank. */
  barrier: () => Promise<void>;
  /**
   * `--overwrite-output-dir`: a save may replace whatever has its name. Without it only this
   * run's own checkpoint is replaced.
   */
  overwrite?: boolean;
}

/** Writes checkpoints of one run as the module documentation describes. */
export class CheckpointSaver {
  constructor(readonly options: SaverOptions) {}

  /** The files this rank writes into a checkpoint folder whose entries are `names`. */
  #ownFiles(names: string[]): string[] {
    const { rank, worldSize, sharded } = this.options;
    const mine = optimizerFileName(rank, worldSize, sharded);
    // Another rank's shard, finished or still being written (its atomic-write temporary, which
    // that rank renames at any moment): never this rank's to sync.
    const shard = /^optimizer\.rank\d+-of-\d+\.safetensors/;
    if (rank !== 0) return names.filter((n) => n === mine);
    return names.filter((n) => n === mine || !shard.test(n));
  }

  /**
   * Saves the checkpoint of `step`: `write` puts this rank's files into the folder it is given.
   * Collective: every rank calls it. Returns the checkpoint's final path.
   */
  async save(step: number, write: (dir: string) => Promise<void>): Promise<string> {
    const { outputDir, runId, rank, worldSize, sharded, barrier } = this.options;
    const final = join(outputDir, checkpointName(step));
    const tmp = `${final}.tmp-${runId}`;
    if (rank === 0) this.#checkReplaceable(final);
    try {
      if (rank === 0) {
        await Deno.remove(tmp, { recursive: true }).catch((e) => {
          if (!(e instanceof Deno.errors.NotFound)) throw e;
        });
        await Deno.mkdir(tmp, { recursive: true });
      }
      await barrier();
      await write(tmp);
      for (const name of this.#ownFiles(readdirSync(tmp))) await syncPath(join(tmp, name));
      await pause();
      // Every rank's files are on disk; a rank that failed ends this barrier for the others with
      // an error, and rank 0 then removes the unfinished folder.
      await barrier();
    } catch (error) {
      throw this.#failed(step, tmp, error);
    }
    if (rank !== 0) return final;
    try {
      const names = readdirSync(tmp).filter((n) => n !== COMPLETE_FILE).sort();
      const expected = [TRAINER_STATE_FILE, "config.json"];
      for (let r = 0; r < (sharded ? worldSize : 1); r++) {
        expected.push(optimizerFileName(r, worldSize, sharded));
      }
      const missing = expected.filter((n) => !names.includes(n));
      if (!names.some((n) => /^model(-\d{5}-of-\d{5})?\.safetensors$/.test(n))) {
        missing.push("model.safetensors");
      }
      if (missing.length) throw new Error(`missing ${missing.join(", ")} after every rank wrote`);
      const files: Record<string, number> = {};
      const sha256: Record<string, string> = {};
      for (const n of names) {
        files[n] = lstatSync(join(tmp, n)).size;
        sha256[n] = await sha256File(join(tmp, n));
      }
      const record: CompletionRecord = {
        format: 1,
        run_id: runId,
        step,
        world_size: worldSize,
        files,
        sha256,
      };
      await writeTextSynced(join(tmp, COMPLETE_FILE), JSON.stringify(record, null, 2) + "\n");
      await syncPath(tmp);
      await pause();
      await this.#moveIntoPlace(tmp, final);
    } catch (error) {
      throw this.#failed(step, tmp, error);
    }
    return final;
  }

  /**
   * Refuses to replace `final` unless it is this run's own checkpoint or the run may overwrite
   * (a CheckpointError naming the path and the flag).
   */
  #checkReplaceable(final: string): void {
    const { runId, overwrite } = this.options;
    let entry: Deno.FileInfo;
    try {
      entry = Deno.lstatSync(final);
    } catch {
      return; // free
    }
    const owner = checkpointRunId(final);
    if (overwrite || owner === runId) return;
    const what = owner !== null
      ? `another run's checkpoint (run ${owner})`
      : entry.isDirectory
      ? "a folder that is not a distflash checkpoint (no complete.json)"
      : entry.isSymlink
      ? "a symbolic link"
      : "a file that is not a checkpoint";
    throw new CheckpointError(
      `${final} already exists and is ${what}, not this run's: distflash does not replace what ` +
        "this run did not write. Move it away, or pass --overwrite-output-dir to let this run " +
        "replace it",
    );
  }

  /** Renames `tmp` to `final`, replacing an existing `final` without a moment of neither. */
  async #moveIntoPlace(tmp: string, final: string): Promise<void> {
    const old = `${final}.old-${this.options.runId}`;
    this.#checkReplaceable(final); // nothing new appeared under the name while this rank saved
    const replacing = existsSync(final);
    if (replacing) {
      await Deno.remove(old, { recursive: true }).catch(() => {});
      await Deno.rename(final, old);
      await pause();
    }
    await Deno.rename(tmp, final);
    await syncPath(this.options.outputDir);
    if (replacing) await Deno.remove(old, { recursive: true });
  }

  /** A save failure that names the step and the folder; the unfinished folder is removed. */
  #failed(step: number, tmp: string, error: unknown): CheckpointError {
    if (this.options.rank === 0) {
      try {
        Deno.removeSync(tmp, { recursive: true });
      } catch { /* nothing left to remove, or the disk refuses: it is not counted either way */ }
    }
    const message = (error as Error).message;
    return new CheckpointError(
      `saving the checkpoint of step ${step} failed (${
        message.includes(tmp) ? message : `in ${tmp}: ${message}`
      }); the unfinished folder is not counted as a checkpoint`,
      { cause: error },
    );
  }
}
