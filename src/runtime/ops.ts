/**
 * Typed wrappers of the Llama ops (csrc/include/distflash.h has the semantics of each). Sizes are
 * element counts as numbers; device addresses are bigints. Each wrapper is one FFI call plus the
 * status check, so the TypeScript cost per op is a few hundred nanoseconds.
 */
import type { Device, DevicePtr, Stream } from "./device.ts";
import { unwrap } from "../../ffi/unwrap.ts";

/** Storage types of activations and weights (df_dtype). */
export const DType = { f32: 0, bf16: 1 } as const;
export type DType = (typeof DType)[keyof typeof DType];
export const DTYPE_BYTES: Record<DType, number> = { 0: 4, 1: 2 };

const B = BigInt;

export interface GemmArgs {
  transA: boolean;
  transB: boolean;
  m: number;
  n: number;
  k: number;
  alpha?: number;
  a: DevicePtr;
  lda: number;
  b: DevicePtr;
  ldb: number;
  beta?: number;
  c: DevicePtr;
  ldc: number;
  abType: DType;
  cType: DType;
}

/** C = alpha op(A) op(B) + beta C, row-major. */
export function gemm(d: Device, g: GemmArgs, s: Stream = 0n): void {
  d.check(
    d.sym.df_gemm(
      g.transA ? 1 : 0,
      g.transB ? 1 : 0,
      B(g.m),
      B(g.n),
      B(g.k),
      g.alpha ?? 1,
      g.a,
      B(g.lda),
      g.b,
      B(g.ldb),
      g.beta ?? 0,
      g.c,
      B(g.ldc),
      g.abType,
      g.cType,
      s,
    ),
    "df_gemm",
  );
}

/**
 * y[T,out] (+)= x[T,in] W[out,in]^T: the linear layer. `accumulate` adds into y.
 */
export function linear(
  d: Device,
  y: DevicePtr,
  x: DevicePtr,
  w: DevicePtr,
  t: number,
  inF: number,
  outF: number,
  dtype: DType,
  s: Stream = 0n,
  accumulate = false,
  yType: DType = dtype,
): void {
  gemm(d, {
    transA: false,
    transB: true,
    m: t,
    n: outF,
    k: inF,
    a: x,
    lda: inF,
    b: w,
    ldb: inF,
    beta: accumulate ? 1 : 0,
    c: y,
    ldc: outF,
    abType: dtype,
    cType: yType,
  }, s);
}

/** Backward of linear: dx[T,in] (+)= dy[T,out] W[out,in]; dW[out,in] += dy^T x (dW fp32). */
export function linearBackward(
  d: Device,
  dx: DevicePtr | null,
  dw: DevicePtr,
  dy: DevicePtr,
  x: DevicePtr,
  w: DevicePtr,
  t: number,
  inF: number,
  outF: number,
  dtype: DType,
  s: Stream = 0n,
  accumulateDx = false,
): void {
  if (dx !== null) {
    gemm(d, {
      transA: false,
      transB: false,
      m: t,
      n: inF,
      k: outF,
      a: dy,
      lda: outF,
      b: w,
      ldb: inF,
      beta: accumulateDx ? 1 : 0,
      c: dx,
      ldc: inF,
      abType: dtype,
      cType: dtype,
    }, s);
  }
  gemm(d, {
    transA: true,
    transB: false,
    m: outF,
    n: inF,
    k: t,
    a: dy,
    lda: outF,
    b: x,
    ldb: inF,
    beta: 1,
    c: dw,
    ldc: inF,
    abType: dtype,
    cType: DType.f32,
  }, s);
}

export function embeddingForward(
  d: Device,
  out: DevicePtr,
  table: DevicePtr,
  ids: DevicePtr,
  t: number,
  v: number,
  h: number,
  dtype: DType,
  s: Stream = 0n,
): void {
  d.check(
    d.sym.df_embedding_forward(out, table, ids, B(t), B(v), B(h), dtype, s),
    "df_embedding_forward",
  );
}

export function embeddingBackward(
  d: Device,
  dtable: DevicePtr,
  dout: DevicePtr,
  ids: DevicePtr,
  t: number,
  v: number,
  h: number,
  dtype: DType,
  s: Stream = 0n,
): void {
  d.check(
    d.sym.df_embedding_backward(dtable, dout, ids, B(t), B(v), B(h), dtype, s),
    "df_embedding_backward",
  );
}

export function rmsnormForward(
  d: Device,
  out: DevicePtr,
  rstd: DevicePtr,
  x: DevicePtr,
  w: DevicePtr,
  t: number,
  h: number,
  eps: number,
  dtype: DType,
  s: Stream = 0n,
): void {
  d.check(
    d.sym.df_rmsnorm_forward(out, rstd, x, w, B(t), B(h), eps, dtype, s),
    "df_rmsnorm_forward",
  );
}

export function rmsnormBackward(
  d: Device,
  dx: DevicePtr,
  dw: DevicePtr,
  dout: DevicePtr,
  x: DevicePtr,
  w: DevicePtr,
  rstd: DevicePtr,
  t: number,
  h: number,
  dtype: DType,
  s: Stream = 0n,
): void {
  d.check(
    d.sym.df_rmsnorm_backward(dx, dw, dout, x, w, rstd, B(t), B(h), dtype, s),
    "df_rmsnorm_backward",
  );
}

export function rope(
  d: Device,
  x: DevicePtr,
  pos: DevicePtr,
  invFreq: DevicePtr,
  t: number,
  heads: number,
  hd: number,
  inverse: boolean,
  dtype: DType,
  s: Stream = 0n,
): void {
  d.check(
    d.sym.df_rope(x, pos, invFreq, B(t), B(heads), B(hd), inverse ? 1 : 0, dtype, s),
    "df_rope",
  );
}

/**
 * The documents of a packed sequence, in device memory: a query sees only earlier keys of its own
 * document, within the sliding window when there is one (the rule: csrc/include/distflash.h, df_attention_forward_docs; the host-side
 * helpers: src/model/documents.ts).
 */
export interface AttentionDocuments {
  /** int64 global start positions of the whole sequence's documents: ascending, the first 0. */
  starts: DevicePtr;
  /** Number of entries; 0 is plain causal attention (or a windowed one, with `window`). */
  count: number;
  /**
   * Sliding window (Mistral): a query at p also needs p - s < window to see the key at s; absent
   * or 0: none.
   */
  window?: number;
  /**
   * The same starts on the host, where the caller has them: src/model/document_attention.ts then
   * splits the block pair into causal pieces for the fast kernels (the ops here ignore it).
   */
  host?: ArrayLike<number>;
}

export interface AttentionShape {
  tq: number;
  tk: number;
  nh: number;
  nkv: number;
  hd: number;
  /** Global position of the first query and the first key (the causal mask compares them). */
  qPos0: number;
  kPos0: number;
  scale: number;
  dtype: DType;
  /** Documents that do not see each other; absent: plain causal attention over the whole sequence. */
  docs?: AttentionDocuments;
}

export function attentionForward(
  d: Device,
  out: DevicePtr,
  lse: DevicePtr,
  q: DevicePtr,
  k: DevicePtr,
  v: DevicePtr,
  a: AttentionShape,
  s: Stream = 0n,
): void {
  if (a.docs) {
    const docs = [a.docs.starts, B(a.docs.count), B(a.docs.window ?? 0)] as const;
    const fn = "df_attention_forward_docs";
    d.check(d.sym.df_attention_forward_docs(out, lse, q, k, v, ...shapeArgs(a), ...docs, s), fn);
  } else {
    const fn = "df_attention_forward";
    d.check(d.sym.df_attention_forward(out, lse, q, k, v, ...shapeArgs(a), s), fn);
  }
}

export function attentionBackward(
  d: Device,
  dq: DevicePtr,
  dk: DevicePtr,
  dv: DevicePtr,
  dout: DevicePtr,
  q: DevicePtr,
  k: DevicePtr,
  v: DevicePtr,
  out: DevicePtr,
  lse: DevicePtr,
  a: AttentionShape,
  s: Stream = 0n,
): void {
  const tensors = [dq, dk, dv, dout, q, k, v, out, lse] as const;
  if (a.docs) {
    const docs = [a.docs.starts, B(a.docs.count), B(a.docs.window ?? 0)] as const;
    const fn = "df_attention_backward_docs";
    d.check(d.sym.df_attention_backward_docs(...tensors, ...shapeArgs(a), ...docs, s), fn);
  } else {
    const fn = "df_attention_backward";
    d.check(d.sym.df_attention_backward(...tensors, ...shapeArgs(a), s), fn);
  }
}

/** The block pair's shape arguments, in the order every attention entry takes them. */
function shapeArgs(a: AttentionShape) {
  return [
    B(a.tq),
    B(a.tk),
    B(a.nh),
    B(a.nkv),
    B(a.hd),
    B(a.qPos0),
    B(a.kPos0),
    a.scale,
    a.dtype,
  ] as const;
}

export function attentionMerge(
  d: Device,
  out: DevicePtr,
  lse: DevicePtr,
  partOut: DevicePtr,
  partLse: DevicePtr,
  tq: number,
  nh: number,
  hd: number,
  dtype: DType,
  s: Stream = 0n,
): void {
  d.check(
    d.sym.df_attention_merge(out, lse, partOut, partLse, B(tq), B(nh), B(hd), dtype, s),
    "df_attention_merge",
  );
}

export function swigluForward(
  d: Device,
  out: DevicePtr,
  gate: DevicePtr,
  up: DevicePtr,
  n: number,
  dtype: DType,
  s: Stream = 0n,
): void {
  d.check(d.sym.df_swiglu_forward(out, gate, up, B(n), dtype, s), "df_swiglu_forward");
}

export function swigluBackward(
  d: Device,
  dgate: DevicePtr,
  dup: DevicePtr,
  dout: DevicePtr,
  gate: DevicePtr,
  up: DevicePtr,
  n: number,
  dtype: DType,
  s: Stream = 0n,
): void {
  d.check(
    d.sym.df_swiglu_backward(dgate, dup, dout, gate, up, B(n), dtype, s),
    "df_swiglu_backward",
  );
}

export function add(
  d: Device,
  out: DevicePtr,
  a: DevicePtr,
  b: DevicePtr,
  n: number,
  dtype: DType,
  s: Stream = 0n,
): void {
  d.check(d.sym.df_add(out, a, b, B(n), dtype, s), "df_add");
}

export function convert(
  d: Device,
  out: DevicePtr,
  outType: DType,
  input: DevicePtr,
  inType: DType,
  n: number,
  s: Stream = 0n,
): void {
  d.check(d.sym.df_convert(out, outType, input, inType, B(n), s), "df_convert");
}

export function ceChunkForward(
  d: Device,
  m: DevicePtr,
  sum: DevicePtr,
  target: DevicePtr,
  logits: DevicePtr,
  labels: DevicePtr,
  t: number,
  vc: number,
  v0: number,
  s: Stream = 0n,
): void {
  d.check(
    d.sym.df_ce_chunk_forward(m, sum, target, logits, labels, B(t), B(vc), B(v0), s),
    "df_ce_chunk_forward",
  );
}

export function ceFinalize(
  d: Device,
  loss: DevicePtr,
  lse: DevicePtr,
  m: DevicePtr,
  sum: DevicePtr,
  target: DevicePtr,
  labels: DevicePtr,
  t: number,
  s: Stream = 0n,
): void {
  d.check(d.sym.df_ce_finalize(loss, lse, m, sum, target, labels, B(t), s), "df_ce_finalize");
}

export function ceChunkBackward(
  d: Device,
  logits: DevicePtr,
  lse: DevicePtr,
  labels: DevicePtr,
  t: number,
  vc: number,
  v0: number,
  scale: number,
  s: Stream = 0n,
): void {
  d.check(
    d.sym.df_ce_chunk_backward(logits, lse, labels, B(t), B(vc), B(v0), scale, s),
    "df_ce_chunk_backward",
  );
}

export function sumSquares(d: Device, sum: DevicePtr, x: DevicePtr, n: number, s: Stream = 0n) {
  d.check(d.sym.df_sum_squares(sum, x, B(n), s), "df_sum_squares");
}

export function sum(d: Device, out: DevicePtr, x: DevicePtr, n: number, s: Stream = 0n) {
  d.check(d.sym.df_sum(out, x, B(n), s), "df_sum");
}

export interface AdamWArgs {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** 1-based optimizer step, for bias correction. */
  step: number;
  /** Multiplies the gradient first (gradient clipping). */
  gradScale: number;
}

/** df_adamw's arguments in C order: bias corrections from the 1-based step, null copy as 0. */
function adamwCArgs(
  param: DevicePtr,
  grad: DevicePtr,
  m: DevicePtr,
  v: DevicePtr,
  n: number,
  a: AdamWArgs,
  copy: DevicePtr | null,
  copyType: DType,
  s: Stream,
) {
  return [
    param,
    grad,
    m,
    v,
    B(n),
    a.lr,
    a.beta1,
    a.beta2,
    a.eps,
    a.weightDecay,
    1 - a.beta1 ** a.step,
    1 - a.beta2 ** a.step,
    a.gradScale,
    copy ?? 0n,
    copyType,
    s,
  ] as const;
}

/**
 * adamw on a worker thread (host memory, CPU backend): resolves when done. The C message of a
 * failure stays on that thread, so the error carries the status only.
 */
export async function adamwAsync(
  d: Device,
  param: DevicePtr,
  grad: DevicePtr,
  m: DevicePtr,
  v: DevicePtr,
  n: number,
  a: AdamWArgs,
  copy: DevicePtr | null,
  copyType: DType,
): Promise<void> {
  const args = adamwCArgs(param, grad, m, v, n, a, copy, copyType, 0n);
  unwrap(await d.sym.df_adamw_async(...args), "df_adamw (host thread)", () => "");
}

export function adamw(
  d: Device,
  param: DevicePtr,
  grad: DevicePtr,
  m: DevicePtr,
  v: DevicePtr,
  n: number,
  a: AdamWArgs,
  copy: DevicePtr | null,
  copyType: DType,
  s: Stream = 0n,
): void {
  const args = adamwCArgs(param, grad, m, v, n, a, copy, copyType, s);
  d.check(d.sym.df_adamw(...args), "df_adamw");
}
