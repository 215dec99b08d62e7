/**
 * The parallel layout of a run, owned in one place: world = dp x sp, this rank's place in both,
 * whether parameters are sharded (ZeRO-3), and the sequence layout's rules (which tokens of a
 * window a rank holds, at which global positions, which window lengths are allowed). The trainer,
 * the planner and the launcher ask it; nothing else derives these. Like torchtitan's ParallelDims,
 * it validates the degrees and names the flag that is wrong. It also chooses the parameter store
 * (replicated or ZeRO-3) the model is given.
 */
import type { Communicator } from "../runtime/communicator.ts";
import { type ParamStoreSpec, replicatedParamStore } from "../model/params.ts";
import { shardedParamStore } from "./zero3.ts";
import { docStartsFromTokens, positionsWithinDocuments } from "../model/documents.ts";
import { IGNORED_LABEL } from "../data/dataset.ts";
import { balanceDocuments, permuteDocuments } from "./document_balance.ts";

/** How a sequence is cut over the sp ranks of a group. */
export type SequenceLayout = "zigzag" | "contiguous";

/** The options the layout is made from (a subset of the train options, same names). */
export interface ParallelOptions {
  /** Ranks sharing one sequence; 0 = all ranks. */
  spSize: number;
  distattnLayout: SequenceLayout;
  /** The HF `--fsdp` value ("full_shard auto_wrap", "no_shard", ""). */
  fsdp: string;
  /** Offloading the optimizer shards it over all ranks, as full_shard does. */
  offloadOptimizer: boolean;
  /** The gradient shard in host memory as well (with offloadOptimizer). */
  offloadGradients?: boolean;
}

/**
 * The global chunk indices rank `r` of `P` holds under the zigzag layout, in local order: an early
 * and a late chunk of the 2P, so every rank has the same causal work.
 */
export function zigzagChunks(r: number, P: number): [number, number] {
  return [r, 2 * P - 1 - r];
}

/** What `sliceBatch` needs to cut windows into documents: the BOS token that begins each one. */
export interface DocumentSplit {
  bos: number;
  /**
   * Reorder each window's whole documents so the zigzag ranks hold about the same attention work
   * (src/parallel/document_balance.ts; no loss term changes). Default on; only zigzag on several
   * sp ranks reorders.
   */
  balance?: boolean;
}

/**
 * The document split of `--attention-mask` (undefined for causal): the model's bos_token_id
 * begins documents. Throws when document masking is asked of a model without one.
 */
export function documentSplit(
  mask: "causal" | "document",
  bosTokenId: number | undefined,
): DocumentSplit | undefined {
  if (mask === "causal") return undefined;
  if (bosTokenId === undefined) {
    throw new Error(
      "--attention-mask document: the model's config has no bos_token_id, which begins documents",
    );
  }
  return { bos: bosTokenId };
}

/** A run's parallel degrees and this rank's place in them. */
export class ParallelLayout {
  /** Ranks sharing one sequence. */
  readonly sp: number;
  /** Data-parallel groups (world / sp), each reading its own windows. */
  readonly dp: number;
  /** This rank's index inside its sp group. */
  readonly spRank: number;
  /** This rank's sp group. */
  readonly dpRank: number;
  /** Parameters, gradients and optimizer states sharded over all ranks. */
  readonly fullShard: boolean;
  readonly sequence: SequenceLayout;
  /** Gradients go to host memory unit by unit (with an offloaded optimizer). */
  readonly offloadGradients: boolean;

  /**
   * Validates the degrees (naming the wrong flag) and places `rank`.
   * @param world the number of ranks of the job
   * @param rank this rank, 0 <= rank < world
   */
  constructor(readonly world: number, readonly rank: number, o: ParallelOptions) {
    if (!Number.isInteger(world) || world < 1) {
      throw new Error(`the number of ranks must be a positive integer, got ${world}`);
    }
    if (!Number.isInteger(rank) || rank < 0 || rank >= world) {
      throw new Error(`rank ${rank} is outside the ${world} ranks of the job`);
    }
    this.sp = o.spSize || world;
    if (!Number.isInteger(this.sp) || this.sp < 1 || world % this.sp !== 0) {
      throw new Error(`--sp-size ${this.sp} must divide the number of ranks (${world})`);
    }
    this.dp = world / this.sp;
    this.spRank = rank % this.sp;
    this.dpRank = Math.floor(rank / this.sp);
    this.sequence = o.distattnLayout;
    this.offloadGradients = o.offloadGradients ?? false;
    this.fullShard = (o.fsdp.split(/\s+/).includes("full_shard") || o.offloadOptimizer) &&
      world > 1;
  }

  /** The same run seen from another rank (the planner sizes every rank's buffers). */
  forRank(rank: number): ParallelLayout {
    return new ParallelLayout(this.world, rank, {
      spSize: this.sp,
      distattnLayout: this.sequence,
      fsdp: this.fullShard ? "full_shard" : "",
      offloadOptimizer: false,
    });
  }

  /** A window length must be a multiple of this: 2 sp chunks for zigzag, sp slices otherwise. */
  get lengthUnit(): number {
    return this.sequence === "zigzag" ? 2 * this.sp : this.sp;
  }

  /** Throws, naming the flag, when a window of `length` tokens cannot be cut by this layout. */
  checkLength(length: number, flag = "--model-max-length"): void {
    if (length % this.lengthUnit === 0) return;
    throw new Error(
      `${flag} ${length} must be a multiple of ${this.lengthUnit} ` +
        (this.sequence === "zigzag"
          ? `(2 x --sp-size ${this.sp}: the zigzag layout; --distattn-layout contiguous needs ${this.sp})`
          : `(--sp-size ${this.sp})`),
    );
  }

  /** Tokens of a `length`-token window held by each rank (the window must pass checkLength). */
  tokensPerRank(length: number): number {
    return length / this.sp;
  }

  /**
   * The slice length a planner uses for a window of any length: rounded up to what the layout
   * can cut (a zigzag slice splits into two equal chunks).
   */
  plannedSlice(length: number): number {
    const S = Math.ceil(length / this.sp);
    return this.sequence === "zigzag" && this.sp > 1 ? 2 * Math.ceil(S / 2) : S;
  }

  /** The global token ranges [start, count] this rank holds of a `length`-token window, in local order. */
  pieces(length: number): [number, number][] {
    const S = this.tokensPerRank(length);
    if (this.sequence === "zigzag") {
      return zigzagChunks(this.spRank, this.sp).map((c) => [c * (S / 2), S / 2]);
    }
    return [[this.spRank * S, S]];
  }

  /** The ranks of this rank's sp group (they share one sequence). */
  spGroup(): number[] {
    return Array.from({ length: this.sp }, (_, i) => this.dpRank * this.sp + i);
  }

  /**
   * This rank's tokens of each of the B windows of a batch ([B, length] row-major inputs and
   * labels) with their RoPE positions, laid out [B, tokensPerRank].
   *
   * With `documents` (document masking: --attention-mask document), a document begins at every
   * `bos` token and at the first token of each window; then `documents` of the result holds each
   * window's global document starts (the whole window's, the same on every rank), positions
   * restart at 0 per document, and a label whose target is a BOS (the prediction of the next
   * document's first token from the previous one, inside the window or at its edge) is ignored.
   * Under zigzag on several sp ranks (unless `documents.balance` is false) each window's whole
   * documents are first reordered, their inputs and labels with them, so the ranks' attention work
   * is balanced (balanceDocuments); `documents` then holds the reordered window's starts.
   * Without, positions are the global positions and `documents` is absent.
   */
  sliceBatch(
    batch: { inputs: Int32Array; labels: Int32Array },
    B: number,
    length: number,
    documents?: DocumentSplit,
  ): { inputs: Int32Array; labels: Int32Array; positions: Int32Array; documents?: number[][] } {
    this.checkLength(length);
    const S = this.tokensPerRank(length), pieces = this.pieces(length);
    const inputs = new Int32Array(B * S), labels = new Int32Array(B * S);
    const positions = new Int32Array(B * S);
    const starts: number[][] = [];
    const balance = documents !== undefined && documents.balance !== false &&
      this.sequence === "zigzag" && this.sp > 1;
    for (let b = 0; b < B; b++) {
      let window = batch.inputs.subarray(b * length, (b + 1) * length);
      let windowLabels = batch.labels.subarray(b * length, (b + 1) * length);
      let docs = documents ? docStartsFromTokens(window, documents.bos) : null;
      if (docs && balance) {
        const { order, starts: reordered } = balanceDocuments(docs, length, this.sp);
        const inputsOut = new Int32Array(length), labelsOut = new Int32Array(length);
        permuteDocuments(window, inputsOut, docs, length, order);
        permuteDocuments(windowLabels, labelsOut, docs, length, order);
        [window, windowLabels, docs] = [inputsOut, labelsOut, reordered];
      }
      if (docs) starts.push(docs);
      let at = b * S;
      for (const [start, n] of pieces) {
        inputs.set(window.subarray(start, start + n), at);
        labels.set(windowLabels.subarray(start, start + n), at);
        if (docs) {
          positions.set(positionsWithinDocuments(docs, start, n), at);
          for (let t = at; t < at + n; t++) {
            if (labels[t] === documents!.bos) labels[t] = IGNORED_LABEL;
          }
        } else {
          for (let t = 0; t < n; t++) positions[at + t] = start + t;
        }
        at += n;
      }
    }
    return documents ? { inputs, labels, positions, documents: starts } : {
      inputs,
      labels,
      positions,
    };
  }

  /**
   * The parameter store of this run: ZeRO-3 over `comm` when sharded, or when the optimizer is
   * offloaded (on one device `comm` is then a world of one); else every rank holds everything
   * and gradients are all-reduced over `comm` (null: one device). Offloaded gradients (the
   * layout's offloadGradients) go with an offloaded optimizer only.
   */
  paramStore(comm: Communicator | null, offloadOptimizer: boolean): ParamStoreSpec {
    if (this.fullShard || offloadOptimizer) {
      if (!comm) throw new Error("a sharded parameter store needs a communicator");
      return shardedParamStore(comm, offloadOptimizer, offloadOptimizer && this.offloadGradients);
    }
    return replicatedParamStore(comm);
  }

  /** One line for the run's log. */
  describe(): string {
    return `${this.world} = dp ${this.dp} x sp ${this.sp}, ${
      this.fullShard ? "full_shard (ZeRO-3)" : "no_shard"
    }`;
  }
}
