/**
 * Tokenizers for training data.
 *
 * - {@link loadTokenizer} opens a Hugging Face model folder (`tokenizer.json`, plus the optional
 *   `tokenizer_config.json` and `config.json`) through `@huggingface/tokenizers`, the pure
 *   JavaScript port of the Rust `tokenizers` library: BPE with byte fallback (Llama-2, Mistral),
 *   byte-level BPE with a split regex (Llama-3), WordPiece and Unigram all load from the one file,
 *   offline. Its ids are checked against the Rust library in tests/data.test.ts.
 * - {@link ByteTokenizer} is built in, for preset (randomly initialised) models that come with no
 *   tokenizer.json: ids 0 = BOS, 1 = EOS, 2 = PAD, and 3 + b for each UTF-8 byte b (vocabulary 259).
 *   A model trained with it needs a vocabulary of at least {@link BYTE_TOKENIZER_VOCAB} = 259.
 *
 * `encode` never adds special tokens: the sequence packer (packing.ts) places BOS and EOS itself.
 *
 * @module
 */

import { Tokenizer as HfTokenizerImpl } from "npm:@huggingface/tokenizers@^0.2.0";
import { dirname, join } from "node:path";

/** What the data pipeline needs from a tokenizer. */
export interface Tokenizer {
  /** Short description, e.g. "tokenizer.json (BPE, 32000 tokens)". */
  readonly name: string;
  /** Number of token ids (largest id + 1), counting added/special tokens. */
  readonly vocabSize: number;
  /** Beginning-of-sequence id, or null when the tokenizer has none. */
  readonly bosId: number | null;
  /** End-of-sequence id (the document separator), or null when the tokenizer has none. */
  readonly eosId: number | null;
  /** Padding id, or null. */
  readonly padId: number | null;
  /** Whether the packer puts BOS before each document (false when there is no BOS, or the
   * tokenizer_config.json says `"add_bos_token": false`). */
  readonly addBos: boolean;
  /** Token ids of `text`, with no special tokens added. */
  encode(text: string): number[];
  /** Text of `ids` (special tokens included as their text, except in ByteTokenizer). */
  decode(ids: ArrayLike<number>): string;
}

/** Vocabulary size of {@link ByteTokenizer}: 3 special ids + 256 bytes. */
export const BYTE_TOKENIZER_VOCAB = 259;

/**
 * A tokenizer over UTF-8 bytes, used when a model has no tokenizer.json.
 *
 * | id      | meaning                       |
 * | ------- | ----------------------------- |
 * | 0       | BOS (beginning of a document) |
 * | 1       | EOS (end of a document)       |
 * | 2       | PAD                           |
 * | 3..258  | byte value id - 3             |
 */
export class ByteTokenizer implements Tokenizer {
  /** "bytes (built-in, 259 tokens)". */
  readonly name: string = "bytes (built-in, 259 tokens)";
  /** 259. */
  readonly vocabSize: number = BYTE_TOKENIZER_VOCAB;
  /** 0. */
  readonly bosId: number = 0;
  /** 1. */
  readonly eosId: number = 1;
  /** 2. */
  readonly padId: number = 2;
  /** Always true. */
  readonly addBos: boolean = true;
  /** Id of the first byte: byte b has id b + BYTE_OFFSET. */
  static readonly BYTE_OFFSET: number = 3;
  readonly #encoder = new TextEncoder();
  readonly #decoder = new TextDecoder();

  /** UTF-8 bytes of `text`, each plus 3. */
  encode(text: string): number[] {
    const bytes = this.#encoder.encode(text);
    const ids = new Array<number>(bytes.length);
    for (let i = 0; i < bytes.length; i++) ids[i] = bytes[i] + ByteTokenizer.BYTE_OFFSET;
    return ids;
  }

  /** Bytes back to text; special ids are skipped, invalid UTF-8 becomes U+FFFD. */
  decode(ids: ArrayLike<number>): string {
    const bytes: number[] = [];
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (id >= ByteTokenizer.BYTE_OFFSET && id < BYTE_TOKENIZER_VOCAB) {
        bytes.push(id - ByteTokenizer.BYTE_OFFSET);
      }
    }
    return this.#decoder.decode(new Uint8Array(bytes));
  }
}

/**
 * The byte tokenizer as Hugging Face files, saved beside a model trained with it so transformers
 * (and `loadTokenizer`) encode the same ids: a BPE model with no merges whose vocabulary is the
 * three specials and the 256 byte tokens `<0xNN>`, so every character falls back to its UTF-8
 * bytes; BOS is prepended (as the packer does), the decoder fuses bytes back into text.
 */
export function byteTokenizerFiles(): Record<string, object> {
  const specials = ["<s>", "</s>", "<pad>"];
  const vocab: Record<string, number> = {};
  specials.forEach((t, id) => (vocab[t] = id));
  for (let b = 0; b < 256; b++) {
    vocab[`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`] = b + ByteTokenizer.BYTE_OFFSET;
  }
  const added = specials.map((content, id) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  }));
  const bos = { SpecialToken: { id: "<s>", type_id: 0 } };
  const tokenizer = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: null,
    post_processor: {
      type: "TemplateProcessing",
      single: [bos, { Sequence: { id: "A", type_id: 0 } }],
      pair: [bos, { Sequence: { id: "A", type_id: 0 } }, bos, {
        Sequence: { id: "B", type_id: 1 },
      }],
      special_tokens: { "<s>": { id: "<s>", ids: [0], tokens: ["<s>"] } },
    },
    decoder: { type: "Sequence", decoders: [{ type: "ByteFallback" }, { type: "Fuse" }] },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: true,
      ignore_merges: false,
      vocab,
      merges: [],
    },
  };
  const config = {
    tokenizer_class: "PreTrainedTokenizerFast",
    bos_token: "<s>",
    eos_token: "</s>",
    pad_token: "<pad>",
    add_bos_token: true,
    model_max_length: 1e30,
    clean_up_tokenization_spaces: false,
  };
  return { "tokenizer.json": tokenizer, "tokenizer_config.json": config };
}

type Json = Record<string, unknown>;

async function readJsonIfExists(path: string): Promise<Json | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw new Error(`${path}: cannot read (${(e as Error).message})`);
  }
  try {
    const v = JSON.parse(text);
    if (v === null || typeof v !== "object" || Array.isArray(v)) {
      throw new Error("expected a JSON object");
    }
    return v as Json;
  } catch (e) {
    throw new Error(`${path}: invalid JSON (${(e as Error).message})`);
  }
}

/** `"<s>"` or `{"content": "<s>", ...}` (tokenizer_config.json's two spellings) to a string. */
function tokenText(v: unknown): string | null {
  if (typeof v === "string") return v;
  if (v !== null && typeof v === "object" && typeof (v as Json).content === "string") {
    return (v as Json).content as string;
  }
  return null;
}

/** config.json ids may be a number or (Llama-3 instruct) a list; the first is used. */
function firstId(v: unknown): number | null {
  if (typeof v === "number" && Number.isInteger(v)) return v;
  if (Array.isArray(v) && typeof v[0] === "number" && Number.isInteger(v[0])) return v[0];
  return null;
}

/**
 * Token ids in tokenizer.json (the model's vocabulary map and the added tokens) must be
 * non-negative integers: the library would truncate 1.5 to 1 silently and two tokens would share
 * an id.
 */
function checkTokenIds(tokenizerJson: Json, name: string): void {
  const bad = (where: string, id: unknown) =>
    new Error(`${name}: ${where} has id ${JSON.stringify(id)}, not a non-negative integer`);
  const ok = (id: unknown) => typeof id === "number" && Number.isInteger(id) && id >= 0;
  const vocab = (tokenizerJson.model as Json | undefined)?.vocab;
  if (vocab !== null && typeof vocab === "object" && !Array.isArray(vocab)) {
    for (const [token, id] of Object.entries(vocab)) {
      if (!ok(id)) throw bad(`token ${JSON.stringify(token)}`, id);
    }
  }
  const added = tokenizerJson.added_tokens;
  if (Array.isArray(added)) {
    for (const t of added) {
      const id = (t as Json)?.id;
      if (!ok(id)) throw bad(`added token ${JSON.stringify((t as Json)?.content)}`, id);
    }
  }
}

/** A Hugging Face tokenizer.json, through @huggingface/tokenizers. */
export class HfTokenizer implements Tokenizer {
  /** "<path> (<model type>, <n> tokens)". */
  readonly name: string;
  /** Largest id (vocabulary and added tokens) + 1. */
  readonly vocabSize: number;
  /** BOS id: tokenizer_config.json bos_token, else config.json bos_token_id, else a usual name. */
  readonly bosId: number | null;
  /** EOS id: tokenizer_config.json eos_token, else config.json eos_token_id (the first when a
   * list), else a usual name ("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>"). */
  readonly eosId: number | null;
  /** PAD id, found the same way, or null. */
  readonly padId: number | null;
  /** BOS exists and tokenizer_config.json does not say `"add_bos_token": false`. */
  readonly addBos: boolean;
  readonly #impl: HfTokenizerImpl;

  /**
   * Builds the tokenizer from parsed files.
   * @param tokenizerJson parsed tokenizer.json
   * @param tokenizerConfig parsed tokenizer_config.json ({} when absent)
   * @param modelConfig parsed config.json ({} when absent)
   * @param name description used in logs and errors
   * @throws when the tokenizer.json describes something the library cannot build
   */
  constructor(
    tokenizerJson: Record<string, unknown>,
    tokenizerConfig: Record<string, unknown> = {},
    modelConfig: Record<string, unknown> = {},
    name = "",
  ) {
    checkTokenIds(tokenizerJson, name || "tokenizer.json");
    this.#impl = new HfTokenizerImpl(tokenizerJson, tokenizerConfig);
    let maxId = -1;
    for (const id of this.#impl.get_vocab(true).values()) if (id > maxId) maxId = id;
    this.vocabSize = maxId + 1;
    const model = tokenizerJson.model as Json | undefined;
    const kind = typeof model?.type === "string" ? model.type : "unknown model";
    this.name = `${name || "tokenizer.json"} (${kind}, ${this.vocabSize} tokens)`;

    // Special ids: tokenizer_config.json (what transformers' tokenizer reports) first, then
    // config.json, then the usual token spellings.
    const resolve = (key: string, idKey: string, names: string[]): number | null => {
      const text = tokenText(tokenizerConfig[key]);
      if (text !== null) {
        const id = this.#impl.token_to_id(text);
        if (id !== undefined) return id;
      }
      const id = firstId(modelConfig[idKey]);
      if (id !== null && id >= 0 && id < this.vocabSize) return id;
      for (const n of names) {
        const byName = this.#impl.token_to_id(n);
        if (byName !== undefined) return byName;
      }
      return null;
    };
    this.bosId = resolve("bos_token", "bos_token_id", [
      "<s>",
      "<|begin_of_text|>",
      "<|startoftext|>",
      "<bos>",
    ]);
    this.eosId = resolve("eos_token", "eos_token_id", [
      "</s>",
      "<|end_of_text|>",
      "<|endoftext|>",
      "<eos>",
    ]);
    this.padId = resolve("pad_token", "pad_token_id", ["<pad>", "<|pad|>"]);
    this.addBos = this.bosId !== null && tokenizerConfig.add_bos_token !== false;
  }

  /** Token ids of `text`, without special tokens. */
  encode(text: string): number[] {
    if (text.length === 0) return [];
    return this.#impl.encode(text, { add_special_tokens: false }).ids;
  }

  /** Text of `ids`, special tokens kept. */
  decode(ids: ArrayLike<number>): string {
    if (ids.length === 0) return "";
    return this.#impl.decode(Array.from(ids), { skip_special_tokens: false });
  }

  /** Id of a token string, or undefined. */
  tokenToId(token: string): number | undefined {
    return this.#impl.token_to_id(token);
  }
}

/**
 * Loads the tokenizer of a Hugging Face model folder: `tokenizer.json` (required),
 * `tokenizer_config.json` and `config.json` (optional: BOS/EOS/PAD ids, add_bos_token).
 * `modelDir` may also name the tokenizer.json file itself.
 */
export async function loadTokenizer(modelDir: string): Promise<Tokenizer> {
  let dir = modelDir;
  let file = join(modelDir, "tokenizer.json");
  try {
    if ((await Deno.stat(modelDir)).isFile) {
      file = modelDir;
      dir = dirname(modelDir);
    }
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new Error(`${modelDir}: no such model folder or tokenizer.json`);
    }
    throw e;
  }
  const tokenizerJson = await readJsonIfExists(file);
  if (tokenizerJson === null) {
    let hint = "";
    try {
      await Deno.stat(join(dir, "tokenizer.model"));
      hint = " (only a SentencePiece tokenizer.model is there: convert it to tokenizer.json with " +
        "transformers' AutoTokenizer.from_pretrained(...).save_pretrained(...))";
    } catch { /* no hint */ }
    throw new Error(`${dir}: no tokenizer.json${hint}`);
  }
  const tokenizerConfig = (await readJsonIfExists(join(dir, "tokenizer_config.json"))) ?? {};
  const modelConfig = (await readJsonIfExists(join(dir, "config.json"))) ?? {};
  try {
    return new HfTokenizer(tokenizerJson, tokenizerConfig, modelConfig, file);
  } catch (e) {
    throw new Error(`${file}: cannot build the tokenizer (${(e as Error).message})`);
  }
}

/** Whether `path` names anything (a dangling symbolic link too). */
function present(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Refuses a model folder whose tokenizer distflash cannot read: a SentencePiece `tokenizer.model`
 * without `tokenizer.json` (common in Llama-2 and Mistral folders). Text data must never be
 * tokenized by the byte tokenizer in its place: the ids would mean other tokens than the model's
 * embeddings. No npm package reads SentencePiece models the way transformers' fast tokenizer
 * (which the model's tokenizer.json would hold) does, so the folder is converted once instead.
 */
export function checkModelTokenizer(modelDir: string | null, what = "--model"): void {
  if (modelDir === null || present(join(modelDir, "tokenizer.json"))) return;
  if (!present(join(modelDir, "tokenizer.model"))) return;
  const py = JSON.stringify(modelDir).slice(1, -1).replaceAll("'", "\\'");
  throw new Error(
    `${what} ${modelDir}: the folder has a SentencePiece tokenizer.model but no tokenizer.json, ` +
      "the only tokenizer format distflash reads (it will not tokenize text with another " +
      "tokenizer than the model's). Write tokenizer.json beside it once (pip install " +
      `transformers sentencepiece protobuf): python -c "from transformers import AutoTokenizer; ` +
      `AutoTokenizer.from_pretrained('${py}').save_pretrained('${py}')"; or give --data-path ` +
      "a .npy of token ids made with the model's tokenizer",
  );
}

/**
 * The tokenizer of text data for a model: its folder's tokenizer.json; the byte tokenizer for a
 * preset (`modelDir` null) or a folder with no tokenizer files; refused for a folder with only a
 * SentencePiece tokenizer.model ({@link checkModelTokenizer}).
 */
export async function modelTokenizer(
  modelDir: string | null,
  what = "--model",
): Promise<Tokenizer> {
  checkModelTokenizer(modelDir, what);
  return modelDir !== null && present(join(modelDir, "tokenizer.json"))
    ? await loadTokenizer(modelDir)
    : new ByteTokenizer();
}
