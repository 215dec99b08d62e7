/* The attention graphs for cuDNN 9's backend (graph) API; see cudnn_attention_graph.cuh.
 *
 * The graphs are the operation patterns cuDNN's fused-attention engines recognise (the ones its own
 * frontend builds), one tensor per edge, in cuDNN's [B, H, S, D] view of distflash's [S, H, D] rows
 * (B = 1; strides say where each element lives, so no data moves):
 *   forward   S = Q K^T * scale; mask; m = max S; E = exp(S - m); l = sum E; stats = m + log l;
 *             O = (E / l) V. stats is the natural-log LSE of the scaled scores, distflash's lse.
 *   backward  Dsum = sum(dO * O); P = exp(S - stats) with the FINAL stats; dV = P^T dO;
 *             dS = P (dO V^T - Dsum) * scale; dK = dS^T Q; dQ = dS K (fp32 accumulator, then bf16).
 *             With GQA dK / dV are reduced over the query heads of a group inside the graph.
 * The mask: key j is visible to query i iff j <= i + delta, delta = q_pos0 - k_pos0 (global
 * positions). delta >= Tk - 1: no mask (a full block). 0 <= delta < Tk - 1: row index + delta >= column
 * index (delta = 0 is the causal diagonal, delta = Tk - Tq the bottom-right alignment, any other
 * value the diagonal band's right bound). delta < 0 (leading queries that see no key, which cuDNN
 * would not leave at out = 0, lse = -inf) is not taken: the native kernels run it. */
#include <string.h>

#include "cudnn_attention_graph.cuh"

/* Views of distflash's row-major tensors in cuDNN's [B, H, S, D] order (B = 1). */
struct Views {
  int64_t q_dims[4], q_strides[4];   /* [1, nh, tq, hd] over [tq, nh, hd] */
  int64_t kt_dims[4], kt_strides[4]; /* K^T (and V^T): [1, nkv, hd, tk] over [tk, nkv, hd] */
  int64_t kv_dims[4], kv_strides[4]; /* K, V: [1, nkv, tk, hd] */
  int64_t s_dims[4], s_strides[4];   /* scores [1, nh, tq, tk] */
  int64_t st_dims[4], st_strides[4]; /* scores transposed [1, nh, tk, tq] */
  int64_t row_dims[4], row_strides[4]; /* per query row [1, nh, tq, 1], distflash's lse [nh, tq] */
  int64_t full_dims[4], full_strides[4]; /* GQA per-query-head dK / dV [1, nh, tk, hd], dense */
  int64_t acc_strides[4];            /* dQ accumulator [1, nh, tq, hd], dense */
};

static Views views_for(const AttnKey &k) {
  Views w;
  const int64_t tq = k.tq, tk = k.tk, nh = k.nh, nkv = k.nkv, hd = k.hd;
  const int64_t q_dims[4] = {1, nh, tq, hd}, q_strides[4] = {tq * nh * hd, hd, nh * hd, 1};
  const int64_t kt_dims[4] = {1, nkv, hd, tk}, kt_strides[4] = {tk * nkv * hd, hd, 1, nkv * hd};
  const int64_t kv_dims[4] = {1, nkv, tk, hd}, kv_strides[4] = {tk * nkv * hd, hd, nkv * hd, 1};
  const int64_t s_dims[4] = {1, nh, tq, tk}, s_strides[4] = {nh * tq * tk, tq * tk, tk, 1};
  const int64_t st_dims[4] = {1, nh, tk, tq}, st_strides[4] = {nh * tq * tk, tq * tk, 1, tk};
  const int64_t row_dims[4] = {1, nh, tq, 1}, row_strides[4] = {nh * tq, tq, 1, 1};
  const int64_t full_dims[4] = {1, nh, tk, hd}, full_strides[4] = {nh * tk * hd, tk * hd, hd, 1};
  const int64_t acc_strides[4] = {nh * tq * hd, tq * hd, hd, 1};
  memcpy(w.q_dims, q_dims, sizeof q_dims);
  memcpy(w.q_strides, q_strides, sizeof q_strides);
  memcpy(w.kt_dims, kt_dims, sizeof kt_dims);
  memcpy(w.kt_strides, kt_strides, sizeof kt_strides);
  memcpy(w.kv_dims, kv_dims, sizeof kv_dims);
  memcpy(w.kv_strides, kv_strides, sizeof kv_strides);
  memcpy(w.s_dims, s_dims, sizeof s_dims);
  memcpy(w.s_strides, s_strides, sizeof s_strides);
  memcpy(w.st_dims, st_dims, sizeof st_dims);
  memcpy(w.st_strides, st_strides, sizeof st_strides);
  memcpy(w.row_dims, row_dims, sizeof row_dims);
  memcpy(w.row_strides, row_strides, sizeof row_strides);
  memcpy(w.full_dims, full_dims, sizeof full_dims);
  memcpy(w.full_strides, full_strides, sizeof full_strides);
  memcpy(w.acc_strides, acc_strides, sizeof acc_strides);
  return w;
}

/* Scores S = Q K^T * scale, masked when the key says so; returns the (virtual) masked scores. */
static dnn_desc scaled_masked_scores(Graph &g, const AttnKey &key, const Views &w, dnn_desc q, dnn_desc kt) {
  const int32_t F = DNN_DATA_FLOAT;
  dnn_desc s = g.tensor(F, w.s_dims, w.s_strides, 0);
  g.matmul(q, kt, s);
  dnn_desc scaled = g.tensor(F, w.s_dims, w.s_strides, 0);
  g.pointwise(DNN_PW_MUL, F, s, g.scalar(F, U_SCALE), NULL, scaled);
  if (!key.masked) return scaled;
  dnn_desc row = g.tensor(DNN_DATA_INT32, w.s_dims, w.s_strides, 0);
  g.pointwise(DNN_PW_GEN_INDEX, F, scaled, NULL, NULL, row, 2);
  dnn_desc col = g.tensor(DNN_DATA_INT32, w.s_dims, w.s_strides, 0);
  g.pointwise(DNN_PW_GEN_INDEX, F, scaled, NULL, NULL, col, 3);
  if (key.delta != 0) { /* the diagonal band's right bound: row + delta */
    dnn_desc shifted = g.tensor(DNN_DATA_INT32, w.s_dims, w.s_strides, 0);
    g.pointwise(DNN_PW_ADD, DNN_DATA_INT32, row, g.scalar(DNN_DATA_INT32, U_DELTA), NULL, shifted);
    row = shifted;
  }
  dnn_desc visible = g.tensor(DNN_DATA_BOOLEAN, w.s_dims, w.s_strides, 0);
  g.pointwise(DNN_PW_CMP_GE, DNN_DATA_BOOLEAN, row, col, NULL, visible);
  dnn_desc masked = g.tensor(F, w.s_dims, w.s_strides, 0);
  g.pointwise(DNN_PW_BINARY_SELECT, F, scaled, g.scalar(F, U_NEG_INF), visible, masked);
  return masked;
}

static void build_forward(Graph &g, const AttnKey &key) {
  const Views w = views_for(key);
  const int32_t F = DNN_DATA_FLOAT, B16 = DNN_DATA_BFLOAT16;
  dnn_desc q = g.tensor(B16, w.q_dims, w.q_strides, U_Q);
  dnn_desc kt = g.tensor(B16, w.kt_dims, w.kt_strides, U_K);
  dnn_desc v = g.tensor(B16, w.kv_dims, w.kv_strides, U_V);
  dnn_desc o = g.tensor(B16, w.q_dims, w.q_strides, U_O);
  dnn_desc stats = g.tensor(F, w.row_dims, w.row_strides, U_STATS);
  dnn_desc s = scaled_masked_scores(g, key, w, q, kt);
  dnn_desc m = g.tensor(F, w.row_dims, w.row_strides, 0);
  g.reduction(DNN_REDUCE_MAX, s, m);
  dnn_desc centered = g.tensor(F, w.s_dims, w.s_strides, 0);
  g.pointwise(DNN_PW_SUB, F, s, m, NULL, centered);
  dnn_desc e = g.tensor(F, w.s_dims, w.s_strides, 0);
  g.pointwise(DNN_PW_EXP, F, centered, NULL, NULL, e);
  dnn_desc l = g.tensor(F, w.row_dims, w.row_strides, 0);
  g.reduction(DNN_REDUCE_ADD, e, l);
  dnn_desc log_l = g.tensor(F, w.row_dims, w.row_strides, 0);
  g.pointwise(DNN_PW_LOG, F, l, NULL, NULL, log_l);
  g.pointwise(DNN_PW_ADD, F, m, log_l, NULL, stats);
  /* P is bf16: the fused engines take both operands of P V in the I/O type (an fp32 P makes cuDNN
   * offer no engine: "A and B need to have the same datatype in the matmul"). */
  dnn_desc p = g.tensor(B16, w.s_dims, w.s_strides, 0);
  g.pointwise(DNN_PW_DIV, F, e, l, NULL, p);
  g.matmul(p, v, o);
}

static void build_backward(Graph &g, const AttnKey &key) {
  const Views w = views_for(key);
  const int32_t F = DNN_DATA_FLOAT, B16 = DNN_DATA_BFLOAT16;
  const bool gqa = key.nh != key.nkv;
  dnn_desc q = g.tensor(B16, w.q_dims, w.q_strides, U_Q);
  dnn_desc kt = g.tensor(B16, w.kt_dims, w.kt_strides, U_K);
  dnn_desc vt = g.tensor(B16, w.kt_dims, w.kt_strides, U_V);
  dnn_desc o = g.tensor(B16, w.q_dims, w.q_strides, U_O);
  dnn_desc dout = g.tensor(B16, w.q_dims, w.q_strides, U_DOUT);
  dnn_desc stats = g.tensor(F, w.row_dims, w.row_strides, U_STATS);
  dnn_desc dq = g.tensor(B16, w.q_dims, w.q_strides, U_DQ);
  dnn_desc dk = g.tensor(B16, w.kv_dims, w.kv_strides, U_DK);
  dnn_desc dv = g.tensor(B16, w.kv_dims, w.kv_strides, U_DV);
  dnn_desc dsum = g.tensor(F, w.row_dims, w.row_strides, U_DSUM);
  dnn_desc dq_acc = g.tensor(F, w.q_dims, w.acc_strides, U_DQ_ACC);

  /* Dsum = sum_d dO * O (times 1: the pattern's dropout-scale slot) */
  dnn_desc prod = g.tensor(F, w.q_dims, w.q_strides, 0);
  g.pointwise(DNN_PW_MUL, F, dout, o, NULL, prod);
  dnn_desc rowsum = g.tensor(F, w.row_dims, w.row_strides, 0);
  g.reduction(DNN_REDUCE_ADD, prod, rowsum);
  g.pointwise(DNN_PW_MUL, F, rowsum, g.scalar(F, U_ONE), NULL, dsum);

  /* P = exp(S - stats); dV = P^T dO */
  dnn_desc s = scaled_masked_scores(g, key, w, q, kt);
  dnn_desc centered = g.tensor(F, w.s_dims, w.s_strides, 0);
  g.pointwise(DNN_PW_SUB, F, s, stats, NULL, centered);
  dnn_desc p = g.tensor(F, w.s_dims, w.s_strides, 0);
  g.pointwise(DNN_PW_EXP, F, centered, NULL, NULL, p);
  /* P^T for dV = P^T dO in the I/O type, as cuDNN's reference pattern has it: P passes the
   * dropout-scale multiply (times 1 here) whose output is bf16, then a bf16 -> bf16 transpose. */
  dnn_desc p_io = g.tensor(B16, w.s_dims, w.s_strides, 0);
  g.pointwise(DNN_PW_MUL, F, p, g.scalar(F, U_ONE), NULL, p_io);
  dnn_desc pt = g.tensor(B16, w.st_dims, w.st_strides, 0);
  g.reshape(p_io, pt);
  if (gqa) {
    dnn_desc dv_full = g.tensor(B16, w.full_dims, w.full_strides, 0);
    g.matmul(pt, dout, dv_full);
    g.reduction(DNN_REDUCE_ADD, dv_full, dv);
  } else {
    g.matmul(pt, dout, dv);
  }

  /* dS = P (dO V^T - Dsum) * scale; dK = dS^T Q; dQ = dS K */
  dnn_desc dp = g.tensor(F, w.s_dims, w.s_strides, 0);
  g.matmul(dout, vt, dp);
  dnn_desc diff = g.tensor(F, w.s_dims, w.s_strides, 0);
  g.pointwise(DNN_PW_SUB, F, dp, dsum, NULL, diff);
  dnn_desc weighted = g.tensor(F, w.s_dims, w.s_strides, 0);
  g.pointwise(DNN_PW_MUL, F, diff, p, NULL, weighted);
  dnn_desc ds = g.tensor(F, w.s_dims, w.s_strides, 0);
  g.pointwise(DNN_PW_MUL, F, weighted, g.scalar(F, U_SCALE), NULL, ds);
  /* dS^T stays fp32 as dS does (the reference pattern's dK = dS^T Q). */
  dnn_desc dst = g.tensor(F, w.st_dims, w.st_strides, 0);
  g.reshape(ds, dst);
  if (gqa) {
    dnn_desc dk_full = g.tensor(B16, w.full_dims, w.full_strides, 0);
    g.matmul(dst, q, dk_full);
    g.reduction(DNN_REDUCE_ADD, dk_full, dk);
  } else {
    g.matmul(dst, q, dk);
  }
  dnn_desc k = g.tensor(B16, w.kv_dims, w.kv_strides, 0);
  g.reshape(kt, k);
  g.matmul(ds, k, dq_acc);
  g.pointwise(DNN_PW_IDENTITY, F, dq_acc, NULL, NULL, dq);
}

void dnn_build_attention_graph(Graph &g, const AttnKey &key) {
  if (key.backward) build_backward(g, key);
  else build_forward(g, key);
}
