/**
 * Hugging Face model folders in and out: resolving `--model` (a preset or a folder), loading
 * weights into a DecoderModel, random initialisation, and writing checkpoints in the same layout
 * (config.json, safetensors with an index when large, tokenizer files copied) so transformers
 * loads them.
 */
import { existsSync, statSync } from "node:fs";
import { join } from "node:path";
import { f32ToBf16 } from "../io/dtype.ts";
import {
  openSafetensors,
  type TensorToWrite,
  writeSafetensors,
  writeShardedSafetensors,
} from "../io/safetensors.ts";
import { writeBytesAtomic } from "../io/files.ts";
import type { ModelConfig } from "./config.ts";
import { readHfConfig, toHfConfig } from "./hf_config.ts";
import { isPreset, presetConfig, PRESETS } from "./presets.ts";
import type { DecoderModel } from "./decoder.ts";
import { ByteTokenizer, byteTokenizerFiles } from "../data/tokenizer.ts";

/** What `--model` resolved to. */
export interface ModelSource {
  config: ModelConfig;
  /** The folder with weights and tokenizer, or null for a preset (random initialisation). */
  dir: string | null;
  name: string;
}

/**
 * When `spec` looks like a Hugging Face hub id (`owner/name`, no such folder here), how to download
 * it: distflash reads folders and does not fetch from the hub.
 */
export function hubDownloadHint(spec: string): string | undefined {
  if (!/^[A-Za-z0-9][\w.-]*\/[A-Za-z0-9][\w.-]*$/.test(spec) || existsSync(spec)) return undefined;
  const folder = spec.split("/")[1];
  return `--model ${spec}: no such folder here. It looks like a Hugging Face hub id; distflash ` +
    `reads a downloaded folder: \`huggingface-cli download ${spec} --local-dir ${folder}\` ` +
    `(gated models such as Llama need \`huggingface-cli login\` first), then --model ${folder}`;
}

/** `--model`: an existing folder with config.json, else a preset name. */
export async function resolveModel(spec: string): Promise<ModelSource> {
  if (existsSync(spec) && statSync(spec).isDirectory()) {
    if (!existsSync(join(spec, "config.json"))) {
      throw new Error(`--model ${spec}: the folder has no config.json`);
    }
    checkModelFilesReadable(spec);
    return { config: await readHfConfig(spec), dir: spec, name: spec };
  }
  if (isPreset(spec)) return { config: presetConfig(spec), dir: null, name: spec.toLowerCase() };
  const hub = hubDownloadHint(spec);
  if (hub) throw new Error(hub);
  throw new Error(
    `--model ${spec}: neither a model folder nor a preset (presets: ${
      Object.keys(PRESETS).join(", ")
    })`,
  );
}

/** The safetensors dtypes a parameter may be stored as. */
const FLOAT_DTYPES = new Set(["F32", "BF16", "F16", "F64"]);

/** Loads every parameter from the folder's safetensors (fp32, bf16 or fp16) into the master. */
export async function loadWeights(model: DecoderModel, dir: string): Promise<void> {
  const source = await openSafetensors(dir);
  try {
    const missing = model.layout.entries.filter((e) => !source.has(e.name)).map((e) => e.name);
    if (missing.length > 0) {
      throw new Error(
        `${dir}: missing ${missing.length} tensors, e.g. ${missing.slice(0, 3).join(", ")}`,
      );
    }
    for (const e of model.layout.entries) {
      const info = source.info(e.name);
      if (!FLOAT_DTYPES.has(info.dtype)) {
        // Integer tensors would convert to floats without complaint and train nonsense (a
        // quantised or corrupted checkpoint): refuse, naming the tensor.
        throw new Error(
          `${info.file}: tensor ${e.name} is stored as ${info.dtype}; a Llama parameter must be ` +
            `a floating-point tensor (F32, BF16, F16 or F64)`,
        );
      }
      if (info.shape.join(",") !== e.shape.join(",")) {
        throw new Error(
          `${info.file}: tensor ${e.name} has shape [${info.shape}], the config needs [${e.shape}]`,
        );
      }
      model.setParam(e.name, await source.readFloat32(e.name));
    }
  } finally {
    source.close();
  }
  model.syncWeights();
}

/**
 * Normal(0, std) matrices (transformers' initializer_range, 0.02), unit norm weights and zero biases, drawn on
 * the device: each rank draws only the part it owns, and the values do not depend on the sharding
 * (parameter k uses the stream (seed, k), element i of it the i-th draw).
 */
export function initRandom(model: DecoderModel, seed: number, std = 0.02): void {
  model.layout.entries.forEach((e, k) => {
    const stream = (BigInt(seed) << 20n) + BigInt(k);
    if (e.name.endsWith(".bias")) model.params.initNormal(e.name, stream, 0, 0);
    else if (e.shape.length === 1) model.params.initNormal(e.name, stream, 1, 0);
    else model.params.initNormal(e.name, stream, 0, std);
  });
  model.syncWeights();
}

export interface CheckpointOptions {
  /** Storage type of the saved weights. */
  dtype: "float32" | "bfloat16";
  /** Copy tokenizer files from here (the source model folder), if any. */
  tokenizerFrom?: string | null;
  /** Largest shard; transformers' default is 5 GB. */
  maxShardBytes?: number;
  /**
   * Whether this rank writes the files. With sharded parameters every rank must call saveModel
   * (gathering each tensor is a collective); only the writer touches the disk.
   */
  writer?: boolean;
  /**
   * The model was trained with the built-in byte tokenizer: save it as tokenizer.json (and
   * tokenizer_config.json), and its BOS/EOS/PAD ids (0/1/2) in config.json.
   */
  byteTokenizer?: boolean;
}

const TOKENIZER_FILES = [
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "tokenizer.model",
  "generation_config.json",
];

/**
 * Why `path` is not a regular file, following symbolic links (a FIFO, folder or device, or a link
 * to one, or a link that does not resolve), or null when it is one or is absent. Opening a FIFO
 * for reading blocks until a writer comes, so every file of a model folder is checked before it
 * is opened.
 */
function notRegularFile(path: string): string | null {
  let entry: Deno.FileInfo;
  try {
    entry = Deno.lstatSync(path);
  } catch {
    return null; // absent
  }
  if (entry.isFile) return null;
  if (!entry.isSymlink) return "is not a regular file (a FIFO, folder or device)";
  let target: string;
  try {
    target = Deno.realPathSync(path);
  } catch {
    return "is a symbolic link that does not resolve";
  }
  if (!Deno.statSync(target).isFile) {
    return `is a symbolic link to ${target}, not a regular file (a FIFO, folder or device)`;
  }
  return null;
}

/**
 * Refuses a model folder whose files the loader opens (config.json, the safetensors weights and
 * their index) exist but are not regular files (see notRegularFile): reading a FIFO would hang
 * `train` and `plan`. Checked before any of them is opened, naming the file.
 */
function checkModelFilesReadable(modelDir: string): void {
  const names = ["config.json"];
  for (const e of Deno.readDirSync(modelDir)) {
    if (e.name.endsWith(".safetensors") || e.name.endsWith(".safetensors.index.json")) {
      names.push(e.name);
    }
  }
  // The shards the index names, whatever their names end in (the index itself first: a FIFO
  // there is refused below before it is read).
  const index = join(modelDir, "model.safetensors.index.json");
  if (existsSync(index) && notRegularFile(index) === null) {
    try {
      const map = JSON.parse(Deno.readTextFileSync(index))?.weight_map;
      for (const shard of Object.values(map ?? {})) {
        if (typeof shard === "string" && !shard.includes("..") && !names.includes(shard)) {
          names.push(shard);
        }
      }
    } catch { /* an unreadable index is the loader's to report, naming what is wrong */ }
  }
  for (const name of names.sort()) {
    const path = join(modelDir, name);
    const why = notRegularFile(path);
    if (why !== null) {
      throw new Error(
        `--model ${modelDir}: ${path} ${why}: the model's config and weights must be regular ` +
          "files (or symbolic links to them); replace it with the file itself",
      );
    }
  }
}

/**
 * Why the tokenizer or generation file at `path` of model folder `modelDir` may not be copied into
 * a checkpoint, or null when it may (or is absent). Only regular files of the model folder are
 * copied: the file itself, or a symbolic link resolving to a regular file inside the model folder
 * or, for a Hugging Face cache snapshot (`<repo>/snapshots/<revision>`), inside `<repo>/blobs`.
 * A link to anything else (a secret elsewhere), a FIFO, a folder or a device is not.
 */
function uncopiable(modelDir: string, path: string): string | null {
  const why = notRegularFile(path);
  if (why !== null) return why;
  // A regular file, or absent, or a link to a regular file: only the link's target is left to check.
  if (!existsSync(path) || !Deno.lstatSync(path).isSymlink) return null;
  let target: string, real: string;
  try {
    target = Deno.realPathSync(path);
    real = Deno.realPathSync(modelDir);
  } catch {
    return "is a symbolic link that does not resolve";
  }
  const within = (dir: string) => target.startsWith(dir.endsWith(SEP) ? dir : dir + SEP);
  const snapshot = /^(.*)\/snapshots\/[^/]+$/.exec(real);
  if (within(real) || (snapshot && within(`${snapshot[1]}/blobs`))) return null;
  return `is a symbolic link to ${target}, outside the model folder`;
}
const SEP = "/";

/**
 * Refuses a model folder whose tokenizer or generation files (the ones every save copies) exist
 * but are not regular files of the folder: reading a FIFO would block the first save forever, a
 * folder or a device cannot be copied, and a link to a file elsewhere (a secret) would be copied
 * into every checkpoint. generation_config.json must be a JSON object. Checked before any rank
 * starts, naming the file.
 */
export function checkModelFolderFiles(modelDir: string | null): void {
  if (modelDir === null) return;
  for (const file of TOKENIZER_FILES) {
    const path = join(modelDir, file);
    const why = uncopiable(modelDir, path);
    if (why !== null) {
      throw new Error(
        `--model ${modelDir}: ${path} ${why}: checkpoints copy it, so it must be a regular file ` +
          "of the model folder (or absent); copy the file itself into the folder",
      );
    }
  }
  const generation = join(modelDir, "generation_config.json");
  let text: string | null = null;
  try {
    text = Deno.readTextFileSync(generation);
  } catch { /* absent */ }
  if (text !== null) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (error) {
      throw new Error(
        `--model ${modelDir}: ${generation} is not valid JSON (${(error as Error).message}): ` +
          "checkpoints copy it for transformers, which would fail to load them; fix or remove it",
      );
    }
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
      throw new Error(
        `--model ${modelDir}: ${generation} is not a JSON object (transformers' ` +
          "GenerationConfig): fix or remove it",
      );
    }
  }
}

/** Writes config.json, the weights (safetensors, sharded with an index when large), tokenizer. */
export async function saveModel(
  model: DecoderModel,
  dir: string,
  opts: CheckpointOptions,
): Promise<void> {
  if (opts.writer === false) {
    // Take part in the gathers in the writer's order (entry order), writing nothing.
    for (const e of model.layout.entries) await model.getParam(e.name);
    return;
  }
  await Deno.mkdir(dir, { recursive: true });
  const tensors: TensorToWrite[] = model.layout.entries.map((e) => ({
    name: e.name,
    dtype: opts.dtype === "bfloat16" ? "BF16" : "F32",
    shape: e.shape,
    // Fetched one tensor at a time, as the writer reaches it.
    data: async () => {
      const values = await model.getParam(e.name);
      return opts.dtype === "bfloat16" ? f32ToBf16(values) : values;
    },
  }));
  await writeShardedSafetensors(dir, tensors, opts.maxShardBytes ?? 5e9);
  const config = toHfConfig(model.cfg, { dtype: opts.dtype });
  if (opts.byteTokenizer) {
    const bytes = new ByteTokenizer();
    Object.assign(config, {
      bos_token_id: bytes.bosId,
      eos_token_id: bytes.eosId,
      pad_token_id: bytes.padId,
    });
    for (const [file, json] of Object.entries(byteTokenizerFiles())) {
      await writeBytesAtomic(join(dir, file), JSON.stringify(json, null, 2) + "\n");
    }
  }
  await writeBytesAtomic(join(dir, "config.json"), JSON.stringify(config, null, 2) + "\n");
  if (opts.tokenizerFrom) {
    for (const file of TOKENIZER_FILES) {
      const from = join(opts.tokenizerFrom, file);
      // The model folder's own regular files only (checkModelFolderFiles refused the rest before
      // the run): reading a FIFO never ends, a link elsewhere may be a secret.
      if (!existsSync(from) || uncopiable(opts.tokenizerFrom, from) !== null) continue;
      // Never readable by more than the source is (a mode-600 file stays 600).
      const mode = Deno.statSync(from).mode;
      const bytes = await Deno.readFile(from);
      await writeBytesAtomic(join(dir, file), bytes, mode === null ? undefined : mode & 0o666);
    }
  }
}

/**
 * Saves this rank's fp32 master weights and AdamW moments for resuming (the whole state when
 * replicated, the rank's shard when sharded: then every rank writes its own file).
 */
export async function saveOptimizer(model: DecoderModel, path: string): Promise<void> {
  await writeSafetensors(
    path,
    model.params.state.map((t) => ({
      name: t.name,
      dtype: "F32" as const,
      shape: [t.numel],
      data: t.read,
    })),
  );
}

/** Restores what saveOptimizer wrote (same model, world size and sharding). */
export async function loadOptimizer(model: DecoderModel, path: string): Promise<void> {
  const file = await openSafetensors(path);
  try {
    for (const t of model.params.state) {
      const info = file.info(t.name);
      if (info.shape[0] !== t.numel) {
        throw new Error(
          `${path}: ${t.name} holds ${info.shape[0]} values, this run needs ${t.numel} ` +
            "(resume with the same model, number of ranks and --fsdp setting)",
        );
      }
      t.write(await file.readFloat32(t.name));
    }
  } finally {
    file.close();
  }
  model.syncWeights();
}
