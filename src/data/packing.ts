/**
 * Sequence packing: documents to one token stream, cut into training windows.
 *
 * Stream: for each document, BOS (when the tokenizer has one and adds it), the document's tokens,
 * then EOS (when the tokenizer has one), so consecutive documents are separated by EOS:
 * `BOS d1 EOS BOS d2 EOS ...`. Pre-tokenised token files are appended as they are, with nothing
 * added.
 *
 * Trained tokens: every token of texts and token files is a training target. A conversation
 * (chat.ts) trains on its assistant replies only; once one is added, the packer keeps a mask per
 * stream token (1: a target, 0: an ignored label), and a window's label at a masked position is
 * -100.
 *
 * Windows (the contract the trainer relies on): training sequences are consecutive,
 * non-overlapping windows of L + 1 tokens (L = --model-max-length); window i covers stream
 * positions [i(L+1), (i+1)(L+1)); its inputs are the first L tokens and its labels the last L
 * (the inputs shifted by one). A trailing partial window is dropped and counted. A stream of
 * exactly L + 1 tokens gives exactly one window.
 *
 * @module
 */

import type { Tokenizer } from "./tokenizer.ts";
import { type ChatTurn, conversationEndTrained, conversationTokens } from "./chat.ts";

/** A growable int32 token array. */
export class TokenBuffer {
  #data: Int32Array;
  #length = 0;

  /** An empty buffer with room for `initialCapacity` tokens. */
  constructor(initialCapacity = 1 << 16) {
    this.#data = new Int32Array(Math.max(16, initialCapacity));
  }

  /** Number of tokens held. */
  get length(): number {
    return this.#length;
  }

  #reserve(extra: number): void {
    const need = this.#length + extra;
    if (need <= this.#data.length) return;
    let cap = this.#data.length;
    while (cap < need) cap *= 2;
    const next = new Int32Array(cap);
    next.set(this.#data.subarray(0, this.#length));
    this.#data = next;
  }

  /** Appends one token. */
  push(id: number): void {
    this.#reserve(1);
    this.#data[this.#length++] = id;
  }

  /** Appends tokens. */
  pushAll(ids: ArrayLike<number>): void {
    this.#reserve(ids.length);
    if (ids instanceof Int32Array) {
      this.#data.set(ids, this.#length);
    } else {
      for (let i = 0; i < ids.length; i++) this.#data[this.#length + i] = ids[i];
    }
    this.#length += ids.length;
  }

  /** A view of the tokens so far (valid until the next push). */
  view(): Int32Array {
    return this.#data.subarray(0, this.#length);
  }

  /** A right-sized copy of the tokens. */
  toInt32Array(): Int32Array {
    return this.#data.slice(0, this.#length);
  }
}

/** The special ids a packer needs (a {@link Tokenizer} has them). */
export type PackingTokens = Pick<Tokenizer, "bosId" | "eosId" | "addBos">;

/** The result of packing: the token stream and how it divides into windows. */
export interface PackedTokens {
  /** The whole stream, trailing partial window included. */
  tokens: Int32Array;
  /** Per stream token, 1 when it is a training target, 0 when ignored; null when all are. */
  trained: Uint8Array | null;
  /** Window length L (inputs and labels each hold L tokens; a window spans L + 1). */
  seqLen: number;
  /** Number of whole windows: floor(tokens.length / (L + 1)). */
  numWindows: number;
  /** Tokens of the trailing partial window, which no window uses. */
  droppedTokens: number;
  /** Documents added (text documents; token files count as none). */
  documents: number;
}

/** Number of whole windows of L + 1 tokens in `numTokens` and the tokens left over. */
export function windowCount(
  numTokens: number,
  seqLen: number,
): { windows: number; dropped: number } {
  const span = seqLen + 1;
  const windows = Math.floor(numTokens / span);
  return { windows, dropped: numTokens - windows * span };
}

/**
 * Builds the token stream: documents (text or token ids) get BOS/EOS around them; raw token
 * files are appended verbatim.
 */
export class SequencePacker {
  readonly #buffer: TokenBuffer;
  readonly #bos: number | null;
  readonly #eos: number | null;
  readonly #tokenizer: Tokenizer | null;
  #documents = 0;
  /** Per token, trained (1) or not (0); null while every token is trained. */
  #trained: Uint8Array | null = null;

  /**
   * An empty stream.
   * @param tokens the tokenizer (needed by {@link addText}) or just its special ids
   * @param initialCapacity tokens to allocate room for up front
   */
  constructor(tokens: Tokenizer | PackingTokens, initialCapacity?: number) {
    this.#buffer = new TokenBuffer(initialCapacity);
    this.#bos = tokens.addBos && tokens.bosId !== null ? tokens.bosId : null;
    this.#eos = tokens.eosId;
    this.#tokenizer = "encode" in tokens ? tokens : null;
  }

  /** Tokens in the stream so far. */
  get numTokens(): number {
    return this.#buffer.length;
  }

  /** Documents added so far. */
  get numDocuments(): number {
    return this.#documents;
  }

  /**
   * Appends one document's token ids: [BOS] ids [EOS].
   * @param trained per id, 1 when it is a training target (default: all are); BOS is a target
   *   only in all-trained documents, EOS when `endTrained` (default: when ids' last one is)
   */
  addDocument(ids: ArrayLike<number>, trained?: Uint8Array, endTrained?: boolean): void {
    const all = trained === undefined;
    if (!all && trained.length !== ids.length) {
      throw new RangeError(`${ids.length} ids but ${trained.length} trained flags`);
    }
    if (this.#bos !== null) this.#push([this.#bos], all ? null : 0);
    this.#push(ids, trained ?? null);
    const end = endTrained ?? (all || (trained.length > 0 && trained[trained.length - 1] === 1));
    if (this.#eos !== null) this.#push([this.#eos], end ? null : 0);
    this.#documents++;
  }

  /** Tokenises and appends one text document. */
  addText(text: string): void {
    this.addDocument(this.#needTokenizer("addText").encode(text));
  }

  /** Tokenises and appends one conversation, training on the assistant's replies (chat.ts). */
  addConversation(turns: readonly ChatTurn[]): void {
    const { ids, trained } = conversationTokens(turns, this.#needTokenizer("addConversation"));
    this.addDocument(ids, trained, conversationEndTrained(turns));
  }

  /** Appends pre-tokenised ids as they are (no BOS/EOS), all training targets. */
  addTokens(ids: ArrayLike<number>): void {
    this.#push(ids, null);
  }

  #needTokenizer(what: string): Tokenizer {
    if (this.#tokenizer === null) {
      throw new Error(`SequencePacker.${what} needs a tokenizer, not just special ids`);
    }
    return this.#tokenizer;
  }

  /** Appends ids with their mask: null = all trained, 0 = none, or one flag per id. */
  #push(ids: ArrayLike<number>, trained: Uint8Array | 0 | null): void {
    const at = this.#buffer.length;
    this.#buffer.pushAll(ids);
    if (trained === null && this.#trained === null) return;
    const need = this.#buffer.length;
    if (this.#trained === null || this.#trained.length < need) {
      // Grown like the token buffer; tokens before the first mask were all trained.
      const grown = new Uint8Array(Math.max(need, 2 * (this.#trained?.length ?? 0), 16));
      if (this.#trained) grown.set(this.#trained.subarray(0, at));
      else grown.fill(1, 0, at);
      this.#trained = grown;
    }
    if (trained === null) this.#trained.fill(1, at, need);
    else if (trained === 0) this.#trained.fill(0, at, need);
    else this.#trained.set(trained, at);
  }

  /** The stream so far (a view, valid until the next add). */
  view(): Int32Array {
    return this.#buffer.view();
  }

  /** The packed stream and its division into windows of `seqLen` + 1 tokens. */
  finish(seqLen: number): PackedTokens {
    checkSeqLen(seqLen);
    const tokens = this.#buffer.toInt32Array();
    const { windows, dropped } = windowCount(tokens.length, seqLen);
    return {
      tokens,
      trained: this.#trained?.slice(0, tokens.length) ?? null,
      seqLen,
      numWindows: windows,
      droppedTokens: dropped,
      documents: this.#documents,
    };
  }
}

/** Packs documents (already in memory) with a tokenizer. */
export function packDocuments(
  documents: Iterable<string>,
  tokenizer: Tokenizer,
  seqLen: number,
): PackedTokens {
  const packer = new SequencePacker(tokenizer);
  for (const d of documents) packer.addText(d);
  return packer.finish(seqLen);
}

/** Throws unless `seqLen` is a positive integer. */
export function checkSeqLen(seqLen: number): void {
  if (!Number.isSafeInteger(seqLen) || seqLen < 1) {
    throw new RangeError(`sequence length must be a positive integer, got ${seqLen}`);
  }
}
