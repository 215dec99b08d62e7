/**
 * Training datasets: windows of L + 1 tokens (see packing.ts for the contract), their order per
 * epoch, and their division among data-parallel ranks.
 *
 * - {@link TokenDataset}: a packed token stream in memory (from text files, token files, or both).
 * - {@link SyntheticDataset}: random tokens from a seeded generator (`--synthetic`).
 * - {@link openDataset}: picks the reader from the path (.jsonl, .json, .parquet, .npy, or a
 *   folder of such files).
 *
 * Order and sharding: `order(epoch, seed)` is a permutation of all windows, the same on every
 * rank; `indices({epoch, seed, rank, worldSize})` takes every worldSize-th entry of it starting at
 * `rank`, so data-parallel ranks see disjoint windows and together cover the epoch. By default each
 * rank gets floor(numWindows / worldSize) windows (the last numWindows mod worldSize entries of the
 * order are skipped that epoch) so ranks stay in lockstep.
 *
 * @module
 */

import { extname, join, relative } from "node:path";
import { NpyTokenFile } from "../io/npy.ts";
import { checkSeqLen, SequencePacker, windowCount } from "./packing.ts";
import { hashInts, permutation, Rng } from "./random.ts";
import { type DataDocument, DataError, DEFAULT_TEXT_FIELD, TEXT_READERS } from "./readers.ts";
import { pickleRecords, readPickleFile } from "./pickle.ts";
import type { Tokenizer } from "./tokenizer.ts";

/** One training sequence: L input ids and the L ids that follow each of them. */
export interface TrainingWindow {
  /** Tokens [0, L) of the window. */
  inputs: Int32Array;
  /** Tokens [1, L + 1) of the window; -100 where the token is not a training target. */
  labels: Int32Array;
}

/** A batch of windows, row-major: row b holds window indices[b]. */
export interface TrainingBatch {
  /** batchSize * seqLen input ids. */
  inputs: Int32Array;
  /** batchSize * seqLen label ids (-100: ignored). */
  labels: Int32Array;
  /** Rows (windows). */
  batchSize: number;
  /** Tokens per row. */
  seqLen: number;
}

/** Which windows a rank reads in an epoch. */
export interface IndexOptions {
  /** Epoch number (0-based); a different epoch gives a different order. */
  epoch?: number;
  /** Shuffle seed (default 0). */
  seed?: number;
  /** Shuffle the windows (default true); false gives 0, 1, 2, ... */
  shuffle?: boolean;
  /** Data-parallel rank (default 0). */
  rank?: number;
  /** Number of data-parallel ranks (default 1). */
  worldSize?: number;
  /** Give every rank floor(n / worldSize) windows (default true); false gives the first
   * n mod worldSize ranks one more, covering every window. */
  dropRemainder?: boolean;
}

/** What a dataset is made of, for logs. */
export interface DatasetStats {
  /** Where the data came from (path, or "synthetic"). */
  source: string;
  /** Data files read. */
  files: string[];
  /** Files in a data folder that were not read (unsupported type or dataset metadata). */
  skippedFiles: string[];
  /** Text documents read (0 for token files and synthetic data). */
  documents: number;
  /** Tokens in the stream, trailing partial window included. */
  tokens: number;
  /** Tokens in the trailing partial window, which no window uses. */
  droppedTokens: number;
  /** Largest token id in the data (vocabSize - 1 for synthetic data). */
  maxTokenId: number;
}

/** Base of all datasets: numbered windows of seqLen + 1 tokens. */
export abstract class Dataset {
  /** Window length L. */
  abstract readonly seqLen: number;
  /** Number of windows. */
  abstract readonly numWindows: number;
  /** Sources and counts. */
  abstract readonly stats: DatasetStats;
  /** Window i: inputs = tokens [0, L), labels = tokens [1, L + 1) of its L + 1 tokens. */
  abstract window(i: number): TrainingWindow;

  /** The permutation of all windows for an epoch; the same on every rank for the same seed. */
  order(epoch: number, seed = 0): Uint32Array {
    return permutation(this.numWindows, hashInts(seed, epoch));
  }

  /** This rank's window indices for an epoch, in the order they are to be read. */
  indices(options: IndexOptions = {}): Uint32Array {
    const { epoch = 0, seed = 0, shuffle = true, rank = 0, worldSize = 1 } = options;
    let all: Uint32Array;
    if (shuffle) {
      all = this.order(epoch, seed);
    } else {
      all = new Uint32Array(this.numWindows);
      for (let i = 0; i < all.length; i++) all[i] = i;
    }
    return shardIndices(all, rank, worldSize, options.dropRemainder ?? true);
  }

  /** The windows `indices` as one row-major batch. */
  batch(indices: ArrayLike<number>): TrainingBatch {
    const L = this.seqLen;
    const inputs = new Int32Array(indices.length * L);
    const labels = new Int32Array(indices.length * L);
    for (let b = 0; b < indices.length; b++) {
      const w = this.window(indices[b]);
      inputs.set(w.inputs, b * L);
      labels.set(w.labels, b * L);
    }
    return { inputs, labels, batchSize: indices.length, seqLen: L };
  }

  /** One line for logs. */
  describe(): string {
    const s = this.stats;
    const parts = [
      `${s.source}: ${this.numWindows} windows of ${this.seqLen}+1 tokens`,
    ];
    if (s.files.length > 1) parts.push(`${s.files.length} files`);
    if (s.documents > 0) parts.push(`${s.documents} documents`);
    if (s.tokens > 0) parts.push(`${s.tokens} tokens`);
    if (s.droppedTokens > 0) parts.push(`${s.droppedTokens} trailing tokens dropped`);
    if (s.skippedFiles.length > 0) {
      parts.push(`${s.skippedFiles.length} files skipped (${s.skippedFiles.join(", ")})`);
    }
    return parts.join(", ");
  }

  /** Throws a RangeError unless 0 <= i < numWindows. */
  protected checkIndex(i: number): void {
    if (!Number.isSafeInteger(i) || i < 0 || i >= this.numWindows) {
      throw new RangeError(`window ${i} outside [0, ${this.numWindows})`);
    }
  }
}

/**
 * Every worldSize-th entry of `indices` from position `rank`: disjoint across ranks, and
 * covering all entries when `dropRemainder` is false (all but the last n mod worldSize when true).
 */
export function shardIndices(
  indices: Uint32Array,
  rank: number,
  worldSize: number,
  dropRemainder = true,
): Uint32Array {
  if (!Number.isSafeInteger(worldSize) || worldSize < 1) {
    throw new RangeError(`worldSize must be a positive integer, got ${worldSize}`);
  }
  if (!Number.isSafeInteger(rank) || rank < 0 || rank >= worldSize) {
    throw new RangeError(`rank must be in [0, ${worldSize}), got ${rank}`);
  }
  const n = indices.length;
  const count = dropRemainder
    ? Math.floor(n / worldSize)
    : Math.floor(n / worldSize) + (rank < n % worldSize ? 1 : 0);
  const out = new Uint32Array(count);
  for (let k = 0; k < count; k++) out[k] = indices[k * worldSize + rank];
  return out;
}

/** The label of a token that is not a training target (as in PyTorch and transformers). */
export const IGNORED_LABEL = -100;

/** Windows over a token stream held in memory. */
export class TokenDataset extends Dataset {
  /** Window length L. */
  readonly seqLen: number;
  /** floor(tokens / (L + 1)). */
  readonly numWindows: number;
  /** Sources and counts. */
  readonly stats: DatasetStats;
  readonly #tokens: Int32Array;
  readonly #trained: Uint8Array | null;

  /**
   * Windows over `tokens`.
   * @param tokens the whole stream; a trailing partial window is dropped
   * @param seqLen window length L (a window spans L + 1 tokens)
   * @param stats source, files and document count to report (the rest is computed)
   * @param trained per token, 1 when it is a training target (its label is kept) and 0 when
   *   not (its label is -100); null: all are
   */
  constructor(
    tokens: Int32Array,
    seqLen: number,
    stats: Partial<DatasetStats> = {},
    trained: Uint8Array | null = null,
  ) {
    super();
    checkSeqLen(seqLen);
    if (trained && trained.length !== tokens.length) {
      throw new RangeError(`${tokens.length} tokens but ${trained.length} trained flags`);
    }
    this.seqLen = seqLen;
    this.#tokens = tokens;
    this.#trained = trained;
    const { windows, dropped } = windowCount(tokens.length, seqLen);
    this.numWindows = windows;
    let max = -1;
    for (let i = 0; i < tokens.length; i++) if (tokens[i] > max) max = tokens[i];
    this.stats = {
      source: "tokens",
      files: [],
      skippedFiles: [],
      documents: 0,
      ...stats,
      tokens: tokens.length,
      droppedTokens: dropped,
      maxTokenId: max,
    };
  }

  /** The whole token stream (read-only by convention), trailing partial window included. */
  get tokens(): Int32Array {
    return this.#tokens;
  }

  /** Per token, 1 when it is a training target; null when all are (read-only by convention). */
  get trained(): Uint8Array | null {
    return this.#trained;
  }

  /**
   * Window i: stream positions [i(L+1), i(L+1) + L) and [i(L+1) + 1, (i+1)(L+1)), copied; a
   * label whose token is not a training target is -100.
   */
  window(i: number): TrainingWindow {
    this.checkIndex(i);
    const start = i * (this.seqLen + 1);
    const labels = this.#tokens.slice(start + 1, start + 1 + this.seqLen);
    if (this.#trained) {
      for (let t = 0; t < labels.length; t++) {
        if (this.#trained[start + 1 + t] === 0) labels[t] = IGNORED_LABEL;
      }
    }
    return { inputs: this.#tokens.slice(start, start + this.seqLen), labels };
  }
}

/** Random tokens, uniform over [0, vocabSize), the same for the same seed on every machine. */
export class SyntheticDataset extends Dataset {
  /** Window length L. */
  readonly seqLen: number;
  /** Distinct windows in an epoch. */
  readonly numWindows: number;
  /** "synthetic (vocabulary V, seed S)". */
  readonly stats: DatasetStats;
  /** Tokens are drawn from [0, vocabSize). */
  readonly vocabSize: number;
  /** Seed of the token generator. */
  readonly seed: number;

  /**
   * Random windows.
   * @param vocabSize tokens are drawn uniformly from [0, vocabSize)
   * @param seqLen window length L
   * @param seed generator seed: window i depends only on (seed, i)
   * @param numWindows how many distinct windows an epoch has (default 65536)
   */
  constructor(vocabSize: number, seqLen: number, seed = 0, numWindows = 65536) {
    super();
    checkSeqLen(seqLen);
    if (!Number.isSafeInteger(vocabSize) || vocabSize < 1 || vocabSize > 4294967296) {
      throw new RangeError(`vocabSize must be a positive integer, got ${vocabSize}`);
    }
    if (!Number.isSafeInteger(numWindows) || numWindows < 1) {
      throw new RangeError(`numWindows must be a positive integer, got ${numWindows}`);
    }
    this.vocabSize = vocabSize;
    this.seqLen = seqLen;
    this.seed = seed;
    this.numWindows = numWindows;
    this.stats = {
      source: `synthetic (vocabulary ${vocabSize}, seed ${seed})`,
      files: [],
      skippedFiles: [],
      documents: 0,
      tokens: 0,
      droppedTokens: 0,
      maxTokenId: vocabSize - 1,
    };
  }

  /** Window i: L + 1 random tokens from a generator seeded by (seed, i). */
  window(i: number): TrainingWindow {
    this.checkIndex(i);
    const rng = new Rng(hashInts(this.seed, i, 0x5eed));
    const L = this.seqLen;
    const inputs = new Int32Array(L);
    const labels = new Int32Array(L);
    let prev = rng.below(this.vocabSize);
    for (let t = 0; t < L; t++) {
      const next = rng.below(this.vocabSize);
      inputs[t] = prev;
      labels[t] = next;
      prev = next;
    }
    return { inputs, labels };
  }
}

/** File types `openDataset` reads. */
export const SUPPORTED_EXTENSIONS: readonly string[] = [
  ".jsonl",
  ".json",
  ".parquet",
  ".npy",
  ".pkl",
];

/** Names in a data folder that are dataset metadata, not data. */
const METADATA_FILES = new Set(["dataset_info.json", "dataset_dict.json", "state.json"]);

/** Options of {@link openDataset}. */
export interface OpenDatasetOptions {
  /** A data file or a folder of data files (read recursively, in sorted path order). */
  dataPath?: string;
  /** Random tokens instead of a file (throughput runs). */
  synthetic?: boolean;
  /** Needed for text files; gives the vocabulary for synthetic data. */
  tokenizer?: Tokenizer;
  /** Vocabulary of synthetic tokens (default tokenizer.vocabSize). */
  vocabSize?: number;
  /** Window length L (--model-max-length). */
  seqLen: number;
  /** Field or column holding text (default "text"). */
  textField?: string;
  /** Seed of the synthetic tokens (default 0). */
  seed?: number;
  /** Windows in a synthetic epoch (default 65536). */
  syntheticWindows?: number;
  /** Progress over all files, in bytes. */
  onProgress?: (bytesDone: number, bytesTotal: number) => void;
}

/** The data files under `path` (itself, when a file) and the files skipped. */
export async function listDataFiles(
  path: string,
): Promise<{ files: string[]; skipped: string[] }> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new DataError(`${path}: no such file or folder`);
    throw new DataError(`${path}: ${(e as Error).message}`);
  }
  if (!info.isDirectory) {
    const ext = extname(path).toLowerCase();
    if (!SUPPORTED_EXTENSIONS.includes(ext)) {
      throw new DataError(
        `${path}: unsupported data file type "${ext || "(none)"}"; ` +
          `supported: ${SUPPORTED_EXTENSIONS.join(", ")}, or a folder of such files`,
      );
    }
    return { files: [path], skipped: [] };
  }
  const files: string[] = [];
  const skipped: string[] = [];
  const walk = async (dir: string) => {
    const entries: Deno.DirEntry[] = [];
    for await (const e of Deno.readDir(dir)) entries.push(e);
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of entries) {
      if (e.name.startsWith(".")) continue;
      const p = join(dir, e.name);
      if (e.isDirectory) {
        await walk(p);
      } else if (
        SUPPORTED_EXTENSIONS.includes(extname(e.name).toLowerCase()) &&
        !METADATA_FILES.has(e.name)
      ) {
        files.push(p);
      } else {
        skipped.push(relative(path, p));
      }
    }
  };
  await walk(path);
  if (files.length === 0) {
    throw new DataError(
      `${path}: no data files in this folder; supported: ${SUPPORTED_EXTENSIONS.join(", ")}`,
    );
  }
  return { files, skipped };
}

/**
 * The cheap part of reading the data at `path`, for the launcher to run before any rank starts:
 * the files exist, are of a supported type and can be opened for reading, and the first record
 * of the first JSON Lines file parses and has the text field. Nothing is tokenized; everything
 * else is found when the ranks read the data. Throws a DataError naming the file.
 */
export async function checkDataFiles(
  path: string,
  textField: string = DEFAULT_TEXT_FIELD,
): Promise<void> {
  const { files } = await listDataFiles(path);
  for (const file of files) {
    try {
      (await Deno.open(file, { read: true })).close();
    } catch (e) {
      throw new DataError(`${file}: cannot open (${(e as Error).message})`);
    }
  }
  const first = files.find((f) => extname(f).toLowerCase() === ".jsonl");
  if (first === undefined) return;
  const docs = TEXT_READERS[".jsonl"](first, { textField });
  try {
    await docs.next();
  } finally {
    await docs.return(undefined);
  }
}

/** Reads a whole .npy token file into the packer, checking for negative ids. */
async function addNpyFile(packer: SequencePacker, path: string): Promise<void> {
  const f = await NpyTokenFile.open(path);
  try {
    const tokens = await f.readAll();
    for (let i = 0; i < tokens.length; i++) {
      if (tokens[i] < 0) {
        throw new DataError(`${path}: negative token id ${tokens[i]} at position ${i}`);
      }
    }
    packer.addTokens(tokens);
  } finally {
    f.close();
  }
}

async function* iterate<T>(items: readonly T[]): AsyncGenerator<T> {
  yield* items;
}

/**
 * Opens training data: synthetic tokens, or the file(s) at `dataPath` tokenised up front and
 * packed into windows of `seqLen` + 1 tokens.
 */
export async function openDataset(options: OpenDatasetOptions): Promise<Dataset> {
  const { dataPath, synthetic, tokenizer, seqLen } = options;
  checkSeqLen(seqLen);
  if (synthetic) {
    if (dataPath) {
      throw new DataError(`give either a data path (${dataPath}) or synthetic data, not both`);
    }
    const vocab = options.vocabSize ?? tokenizer?.vocabSize;
    if (vocab === undefined) {
      throw new DataError("synthetic data needs a vocabulary size (vocabSize or a tokenizer)");
    }
    return new SyntheticDataset(vocab, seqLen, options.seed ?? 0, options.syntheticWindows);
  }
  if (!dataPath) {
    throw new DataError("no training data: give a data path or ask for synthetic data");
  }

  const { files, skipped } = await listDataFiles(dataPath);
  const sizes = await Promise.all(files.map(async (f) => (await Deno.stat(f)).size));
  const total = sizes.reduce((a, b) => a + b, 0);
  // .pkl files may hold token ids: they are checked when read.
  const textFiles = files.filter((f) => ![".npy", ".pkl"].includes(extname(f).toLowerCase()));
  if (textFiles.length > 0 && !tokenizer) {
    throw new DataError(`${textFiles[0]}: text data needs a tokenizer`);
  }
  const packer = new SequencePacker(
    tokenizer ?? { bosId: null, eosId: null, addBos: false },
    Math.min(Math.max(total >> 1, 1 << 16), 1 << 28),
  );
  let before = 0;
  for (let k = 0; k < files.length; k++) {
    const file = files[k];
    const ext = extname(file).toLowerCase();
    if (ext === ".npy") {
      await addNpyFile(packer, file);
    } else {
      let docs: AsyncIterable<DataDocument>;
      const onProgress = options.onProgress
        ? (done: number) => options.onProgress!(before + Math.min(done, sizes[k]), total)
        : undefined;
      const textField = options.textField ?? DEFAULT_TEXT_FIELD;
      if (ext === ".pkl") {
        // A pickle holds documents (read like JSON records) or token-id lists (added as .npy's).
        const records = pickleRecords(await readPickleFile(file), textField, file);
        if (records.kind === "tokens") {
          for (const ids of records.lists) packer.addTokens(ids);
          docs = iterate<DataDocument>([]);
        } else if (!tokenizer) {
          throw new DataError(`${file}: text data needs a tokenizer`);
        } else {
          docs = iterate(records.documents);
        }
      } else {
        docs = TEXT_READERS[ext](file, { textField, onProgress });
      }
      for await (const doc of docs) {
        if (typeof doc === "string") packer.addText(doc);
        else packer.addConversation(doc);
      }
    }
    before += sizes[k];
    options.onProgress?.(before, total);
  }
  const packed = packer.finish(seqLen);
  if (packed.numWindows === 0) {
    throw new DataError(
      `${dataPath}: ${packed.tokens.length} tokens, fewer than one training window of ` +
        `${seqLen}+1 tokens (--model-max-length ${seqLen})`,
    );
  }
  return new TokenDataset(packed.tokens, seqLen, {
    source: dataPath,
    files,
    skippedFiles: skipped,
    documents: packed.documents,
  }, packed.trained);
}
