/* cuDNN fused flash attention through the cuDNN 9 backend (graph) API; see cudnn_attention.cuh.
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
 * would not leave at out = 0, lse = -inf) is not taken: the native kernels run it.
 *
 * cuDNN writes dQ, dK, dV in bf16 into scratch; a small kernel adds them into distflash's fp32
 * accumulators. Plans (graph + execution plan) are built once per (device, direction, shape, delta)
 * and cached; a shape cuDNN refuses is remembered too (and said once on stderr) so the next call
 * goes straight to the native kernels. Workspace and scratch: one growing buffer per (device,
 * stream), like the flash backward's scratch. One mutex guards all of it and is held through
 * cudnnBackendExecute, which only enqueues work. */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include <initializer_list>
#include <mutex>
#include <vector>

#include "../common/cudnn_loader.h"
#include "cudnn_api.h"
#include "cudnn_attention.cuh"

#define DNN_MAX_DEVICES 64
#define DNN_MAX_SCRATCH 32
#define DNN_MAX_PLANS 128

typedef __nv_bfloat16 bf16;

/* ---------------- library ---------------- */

static std::mutex dnn_mutex; /* guards everything below */
static int dnn_resolved;     /* 0: not tried, 1: ok, -1: symbols missing */
static dnn_api dnn;
static size_t dnn_version;
static dnn_handle dnn_handles[DNN_MAX_DEVICES];

/* Caller holds dnn_mutex. 1 when cuDNN is loaded and its entry points resolved. */
static int dnn_ready(void) {
  if (dnn_resolved) return dnn_resolved > 0;
  dnn_resolved = -1;
  const df_cudnn_library *lib = df_cudnn_open(NULL);
  if (!lib) return 0;
  void *h = lib->library;
  int ok = 1;
#define DNN_SYM(field, name) ok = ok && (*(void **)&dnn.field = dlsym(h, name)) != NULL
  DNN_SYM(get_version, "cudnnGetVersion");
  DNN_SYM(error_string, "cudnnGetErrorString");
  DNN_SYM(last_error_string, "cudnnGetLastErrorString");
  DNN_SYM(create, "cudnnCreate");
  DNN_SYM(set_stream, "cudnnSetStream");
  DNN_SYM(backend_create, "cudnnBackendCreateDescriptor");
  DNN_SYM(backend_destroy, "cudnnBackendDestroyDescriptor");
  DNN_SYM(backend_finalize, "cudnnBackendFinalize");
  DNN_SYM(backend_set, "cudnnBackendSetAttribute");
  DNN_SYM(backend_get, "cudnnBackendGetAttribute");
  DNN_SYM(backend_execute, "cudnnBackendExecute");
#undef DNN_SYM
  if (!ok) {
    fprintf(stderr, "distflash: %s lacks a cuDNN 9 backend entry point; native attention kernels run\n", lib->path);
    return 0;
  }
  dnn_version = lib->version;
  dnn_resolved = 1;
  return 1;
}

/* "what: cuDNN status N (text; last error)" into buf. */
static void dnn_describe(char *buf, size_t size, const char *what, dnn_status st) {
  char last[512] = "";
  dnn.last_error_string(last, sizeof last);
  snprintf(buf, size, "%s: cuDNN status %d (%s%s%s)", what, (int)st, dnn.error_string(st), last[0] ? "; " : "", last);
}

/* ---------------- graph building ---------------- */

enum Uid : int64_t {
  U_Q = 1, U_K, U_V, U_O, U_STATS, U_SCALE, U_NEG_INF, U_DELTA, U_DOUT, U_DQ, U_DK, U_DV, U_DSUM, U_DQ_ACC, U_ONE,
  U_FIRST_VIRTUAL = 100
};

/* Creates and finalizes descriptors, remembering each so all are destroyed together; the first
 * failure is kept (as text) and every later call becomes a no-op returning NULL. */
struct Graph {
  std::vector<dnn_desc> owned, ops;
  int64_t next_uid = U_FIRST_VIRTUAL;
  char error[768] = "";

  ~Graph() {
    for (size_t i = owned.size(); i-- > 0;) dnn.backend_destroy(owned[i]);
  }
  bool failed() const { return error[0] != 0; }
  bool check(dnn_status st, const char *what) {
    if (st == DNN_STATUS_SUCCESS || failed()) return !failed();
    dnn_describe(error, sizeof error, what, st);
    return false;
  }
  dnn_desc create(int32_t type, const char *what) {
    if (failed()) return NULL;
    dnn_desc d = NULL;
    if (!check(dnn.backend_create(type, &d), what)) return NULL;
    owned.push_back(d);
    return d;
  }
  void set(dnn_desc d, int32_t name, int32_t type, int64_t count, const void *values, const char *what) {
    if (!failed() && d) check(dnn.backend_set(d, name, type, count, values), what);
  }
  void set_desc(dnn_desc d, int32_t name, dnn_desc value, const char *what) {
    set(d, name, DNN_TYPE_BACKEND_DESCRIPTOR, 1, &value, what);
  }
  dnn_desc finalize(dnn_desc d, const char *what) {
    if (!failed() && d) check(dnn.backend_finalize(d), what);
    return failed() ? NULL : d;
  }

  /* A tensor [d0, d1, d2, d3] with strides; uid 0 makes a virtual one with a fresh id. */
  dnn_desc tensor(int32_t dtype, const int64_t dims[4], const int64_t strides[4], int64_t uid, bool by_value = false) {
    dnn_desc t = create(DNN_TENSOR_DESCRIPTOR, "tensor");
    const bool is_virtual = uid == 0;
    const int64_t id = is_virtual ? next_uid++ : uid, alignment = 16;
    set(t, DNN_ATTR_TENSOR_DATA_TYPE, DNN_TYPE_DATA_TYPE, 1, &dtype, "tensor data type");
    set(t, DNN_ATTR_TENSOR_DIMENSIONS, DNN_TYPE_INT64, 4, dims, "tensor dims");
    set(t, DNN_ATTR_TENSOR_STRIDES, DNN_TYPE_INT64, 4, strides, "tensor strides");
    set(t, DNN_ATTR_TENSOR_UNIQUE_ID, DNN_TYPE_INT64, 1, &id, "tensor uid");
    set(t, DNN_ATTR_TENSOR_BYTE_ALIGNMENT, DNN_TYPE_INT64, 1, &alignment, "tensor alignment");
    set(t, DNN_ATTR_TENSOR_IS_VIRTUAL, DNN_TYPE_BOOLEAN, 1, &is_virtual, "tensor virtual");
    if (by_value) set(t, DNN_ATTR_TENSOR_IS_BY_VALUE, DNN_TYPE_BOOLEAN, 1, &by_value, "tensor by value");
    return finalize(t, "tensor finalize");
  }
  /* A host scalar [1,1,1,1] passed by value at execution. */
  dnn_desc scalar(int32_t dtype, int64_t uid) {
    const int64_t one[4] = {1, 1, 1, 1};
    return tensor(dtype, one, one, uid, true);
  }
  /* y = mode(x [, b [, t]]); compute type `prec`; axis >= 0 for GEN_INDEX. */
  void pointwise(int32_t mode, int32_t prec, dnn_desc x, dnn_desc b, dnn_desc t, dnn_desc y, int64_t axis = -1) {
    dnn_desc pw = create(DNN_POINTWISE_DESCRIPTOR, "pointwise");
    set(pw, DNN_ATTR_POINTWISE_MODE, DNN_TYPE_POINTWISE_MODE, 1, &mode, "pointwise mode");
    set(pw, DNN_ATTR_POINTWISE_MATH_PREC, DNN_TYPE_DATA_TYPE, 1, &prec, "pointwise precision");
    if (axis >= 0) set(pw, DNN_ATTR_POINTWISE_AXIS, DNN_TYPE_INT64, 1, &axis, "pointwise axis");
    finalize(pw, "pointwise finalize");
    dnn_desc op = create(DNN_OPERATION_POINTWISE_DESCRIPTOR, "pointwise op");
    set_desc(op, DNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw, "pointwise op desc");
    set_desc(op, DNN_ATTR_OPERATION_POINTWISE_XDESC, x, "pointwise x");
    if (b) set_desc(op, DNN_ATTR_OPERATION_POINTWISE_BDESC, b, "pointwise b");
    if (t) set_desc(op, DNN_ATTR_OPERATION_POINTWISE_TDESC, t, "pointwise t");
    set_desc(op, DNN_ATTR_OPERATION_POINTWISE_YDESC, y, "pointwise y");
    if (finalize(op, "pointwise op finalize")) ops.push_back(op);
  }
  void matmul(dnn_desc a, dnn_desc b, dnn_desc c) {
    const int32_t comp = DNN_DATA_FLOAT;
    dnn_desc mm = create(DNN_MATMUL_DESCRIPTOR, "matmul");
    set(mm, DNN_ATTR_MATMUL_COMP_TYPE, DNN_TYPE_DATA_TYPE, 1, &comp, "matmul compute type");
    finalize(mm, "matmul finalize");
    dnn_desc op = create(DNN_OPERATION_MATMUL_DESCRIPTOR, "matmul op");
    set_desc(op, DNN_ATTR_OPERATION_MATMUL_ADESC, a, "matmul a");
    set_desc(op, DNN_ATTR_OPERATION_MATMUL_BDESC, b, "matmul b");
    set_desc(op, DNN_ATTR_OPERATION_MATMUL_CDESC, c, "matmul c");
    set_desc(op, DNN_ATTR_OPERATION_MATMUL_DESC, mm, "matmul desc");
    if (finalize(op, "matmul op finalize")) ops.push_back(op);
  }
  void reduction(int32_t reduce_op, dnn_desc x, dnn_desc y) {
    const int32_t comp = DNN_DATA_FLOAT;
    dnn_desc red = create(DNN_REDUCTION_DESCRIPTOR, "reduction");
    set(red, DNN_ATTR_REDUCTION_OPERATOR, DNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &reduce_op, "reduction operator");
    set(red, DNN_ATTR_REDUCTION_COMP_TYPE, DNN_TYPE_DATA_TYPE, 1, &comp, "reduction compute type");
    finalize(red, "reduction finalize");
    dnn_desc op = create(DNN_OPERATION_REDUCTION_DESCRIPTOR, "reduction op");
    set_desc(op, DNN_ATTR_OPERATION_REDUCTION_DESC, red, "reduction desc");
    set_desc(op, DNN_ATTR_OPERATION_REDUCTION_XDESC, x, "reduction x");
    set_desc(op, DNN_ATTR_OPERATION_REDUCTION_YDESC, y, "reduction y");
    if (finalize(op, "reduction op finalize")) ops.push_back(op);
  }
  void reshape(dnn_desc x, dnn_desc y) {
    dnn_desc op = create(DNN_OPERATION_RESHAPE_DESCRIPTOR, "reshape op");
    set_desc(op, DNN_ATTR_OPERATION_RESHAPE_XDESC, x, "reshape x");
    set_desc(op, DNN_ATTR_OPERATION_RESHAPE_YDESC, y, "reshape y");
    if (finalize(op, "reshape op finalize")) ops.push_back(op);
  }
};

/* The shape of one call, and everything the graph depends on (the plan cache key). */
struct AttnKey {
  int32_t device, backward, masked, pad;
  int64_t tq, tk, nh, nkv, hd, delta; /* delta is 0 when unmasked */
};

struct AttnPlan {
  AttnKey key;
  int live, unsupported;
  uint64_t last_use;
  Graph *graph;       /* keeps every descriptor alive */
  dnn_desc plan;      /* the execution plan (owned by graph) */
  int64_t workspace;  /* bytes cuDNN asks for */
};
static AttnPlan dnn_plans[DNN_MAX_PLANS];
static uint64_t dnn_clock;

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
  dnn_desc p = g.tensor(F, w.s_dims, w.s_strides, 0);
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
  dnn_desc pt = g.tensor(B16, w.st_dims, w.st_strides, 0);
  g.reshape(p, pt);
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
  dnn_desc dst = g.tensor(B16, w.st_dims, w.st_strides, 0);
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

/* Caller holds dnn_mutex. Builds the operation graph, asks the heuristic for engine configs and keeps
 * the first that finalizes as an execution plan. On failure plan->unsupported is set and `why` says. */
static void plan_build(AttnPlan *plan, dnn_handle handle, char *why, size_t why_size) {
  Graph *g = new Graph();
  plan->graph = g;
  if (plan->key.backward) build_backward(*g, plan->key);
  else build_forward(*g, plan->key);
  dnn_desc graph = g->create(DNN_OPERATIONGRAPH_DESCRIPTOR, "operation graph");
  g->set(graph, DNN_ATTR_OPERATIONGRAPH_HANDLE, DNN_TYPE_HANDLE, 1, &handle, "operation graph handle");
  if (!g->failed())
    g->set(graph, DNN_ATTR_OPERATIONGRAPH_OPS, DNN_TYPE_BACKEND_DESCRIPTOR, (int64_t)g->ops.size(), g->ops.data(),
           "operation graph ops");
  g->finalize(graph, "operation graph finalize (cuDNN does not recognise this attention pattern)");
  dnn_desc heur = g->create(DNN_ENGINEHEUR_DESCRIPTOR, "heuristics");
  g->set_desc(heur, DNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph, "heuristics graph");
  const int32_t mode = DNN_HEUR_MODE_A;
  g->set(heur, DNN_ATTR_ENGINEHEUR_MODE, DNN_TYPE_HEUR_MODE, 1, &mode, "heuristics mode");
  g->finalize(heur, "heuristics finalize");
  enum { MAX_CFGS = 8 };
  dnn_desc cfgs[MAX_CFGS] = {};
  for (int i = 0; i < MAX_CFGS; i++) cfgs[i] = g->create(DNN_ENGINECFG_DESCRIPTOR, "engine config");
  int64_t count = 0;
  if (!g->failed())
    g->check(dnn.backend_get(heur, DNN_ATTR_ENGINEHEUR_RESULTS, DNN_TYPE_BACKEND_DESCRIPTOR, MAX_CFGS, &count, cfgs),
             "heuristics results");
  char last_refusal[512] = "no engine config offered";
  for (int64_t i = 0; i < count && !g->failed() && !plan->plan; i++) {
    dnn_desc ep = g->create(DNN_EXECUTION_PLAN_DESCRIPTOR, "execution plan");
    g->set(ep, DNN_ATTR_EXECUTION_PLAN_HANDLE, DNN_TYPE_HANDLE, 1, &handle, "execution plan handle");
    g->set_desc(ep, DNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, cfgs[i], "execution plan config");
    if (g->failed()) break;
    const dnn_status st = dnn.backend_finalize(ep); /* an engine may refuse: try the next one */
    if (st != DNN_STATUS_SUCCESS) {
      dnn_describe(last_refusal, sizeof last_refusal, "execution plan finalize", st);
      continue;
    }
    int64_t bytes = 0, got = 0;
    if (g->check(dnn.backend_get(ep, DNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, DNN_TYPE_INT64, 1, &got, &bytes),
                 "execution plan workspace size")) {
      plan->plan = ep;
      plan->workspace = bytes;
    }
  }
  if (!plan->plan) {
    snprintf(why, why_size, "%s", g->failed() ? g->error : last_refusal);
    plan->unsupported = 1;
    delete g; /* nothing of it is kept */
    plan->graph = NULL;
  }
}

/* Caller holds dnn_mutex. The cached plan for `key` (built, or found unsupported, on first use). */
static AttnPlan *plan_for(const AttnKey &key, dnn_handle handle) {
  AttnPlan *victim = NULL;
  for (int i = 0; i < DNN_MAX_PLANS; i++) {
    AttnPlan *p = &dnn_plans[i];
    if (p->live && memcmp(&p->key, &key, sizeof key) == 0) {
      p->last_use = ++dnn_clock;
      return p;
    }
    if (!victim || (!p->live && victim->live) || (p->live == victim->live && p->last_use < victim->last_use))
      victim = p;
  }
  /* An evicted plan may still be in flight on a stream: wait for the device before destroying it. */
  if (victim->live && victim->graph) {
    cudaDeviceSynchronize();
    delete victim->graph;
  }
  memset(victim, 0, sizeof *victim);
  victim->key = key;
  char why[768] = "";
  plan_build(victim, handle, why, sizeof why);
  if (victim->unsupported)
    fprintf(stderr,
            "distflash: cuDNN attention does not take %s tq=%lld tk=%lld nh=%lld nkv=%lld hd=%lld delta=%lld%s (%s); "
            "the native kernels run it\n",
            key.backward ? "backward" : "forward", (long long)key.tq, (long long)key.tk, (long long)key.nh,
            (long long)key.nkv, (long long)key.hd, (long long)key.delta, key.masked ? "" : " (unmasked)", why);
  victim->live = 1;
  victim->last_use = ++dnn_clock;
  return victim;
}

/* ---------------- scratch ---------------- */

struct DnnScratch {
  int device;
  cudaStream_t stream;
  void *ptr;
  uint64_t bytes;
};
static DnnScratch dnn_scratch[DNN_MAX_SCRATCH];
static int dnn_scratch_count;

/* Caller holds dnn_mutex. One growing buffer per (device, stream); NULL when the table is full. */
static df_status scratch_for(int device, cudaStream_t stream, uint64_t bytes, void **out) {
  *out = NULL;
  DnnScratch *slot = NULL;
  for (int i = 0; i < dnn_scratch_count; i++)
    if (dnn_scratch[i].device == device && dnn_scratch[i].stream == stream) slot = &dnn_scratch[i];
  if (!slot) {
    if (dnn_scratch_count == DNN_MAX_SCRATCH) return DF_OK;
    slot = &dnn_scratch[dnn_scratch_count++];
    *slot = DnnScratch{device, stream, NULL, 0};
  }
  if (slot->bytes < bytes) {
    if (slot->ptr) {
      DF_CUDA(cudaStreamSynchronize(stream)); /* earlier work on the stream may still use it */
      DF_CUDA(cudaFree(slot->ptr));
      slot->ptr = NULL;
      slot->bytes = 0;
    }
    const uint64_t want = (bytes + (1ull << 20) - 1) & ~((1ull << 20) - 1);
    DF_CUDA(cudaMalloc(&slot->ptr, want));
    slot->bytes = want;
  }
  *out = slot->ptr;
  return DF_OK;
}

static uint64_t align256(uint64_t n) { return (n + 255) & ~255ull; }

/* ---------------- the shared front half of both entries ---------------- */

static bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

/* Whether cuDNN is to be asked at all, and the plan key; caller holds dnn_mutex. */
static bool dnn_applies(AttnKey *key, int backward, int64_t tq, int64_t tk, int nh, int nkv, int hd, int64_t q_pos0,
                        int64_t k_pos0, float scale, std::initializer_list<const void *> ptrs) {
  if (df_attention_kernel_get() == DF_ATTENTION_NATIVE) return false;
  if (hd != 64 && hd != 128) return false;
  if (!(scale > 0.0f) || tq > INT32_MAX || tk > INT32_MAX) return false;
  for (const void *p : ptrs)
    if (!aligned16(p)) return false;
  const int64_t delta = q_pos0 - k_pos0;
  if (delta < 0) return false; /* leading queries see no key: the native kernels leave them at 0 / -inf */
  if (!dnn_ready()) return false;
  /* Before 9.16 cuDNN's own frontend pads kv lengths that are not multiples of 128 with a padding
   * mask for correctness; distflash does not build that variant, so those shapes stay native. */
  if (dnn_version < 91600 && tk % 128 != 0) return false;
  memset(key, 0, sizeof *key);
  if (cudaGetDevice(&key->device) != cudaSuccess) return false;
  key->backward = backward;
  key->masked = delta < tk - 1;
  key->tq = tq;
  key->tk = tk;
  key->nh = nh;
  key->nkv = nkv;
  key->hd = hd;
  key->delta = key->masked ? delta : 0;
  return key->device >= 0 && key->device < DNN_MAX_DEVICES;
}

/* Caller holds dnn_mutex. The device's handle, bound to stream s. */
static df_status handle_for(int device, cudaStream_t s, dnn_handle *out) {
  if (!dnn_handles[device]) {
    dnn_handle h = NULL;
    const dnn_status st = dnn.create(&h);
    if (st != DNN_STATUS_SUCCESS) {
      char why[768];
      dnn_describe(why, sizeof why, "cudnnCreate", st);
      return df_fail(DF_ERR_LIBRARY, "cuDNN attention: %s", why);
    }
    dnn_handles[device] = h;
  }
  const dnn_status st = dnn.set_stream(dnn_handles[device], s);
  if (st != DNN_STATUS_SUCCESS) {
    char why[768];
    dnn_describe(why, sizeof why, "cudnnSetStream", st);
    return df_fail(DF_ERR_LIBRARY, "cuDNN attention: %s", why);
  }
  *out = dnn_handles[device];
  return DF_OK;
}

/* Binds the uids to pointers (device tensors, or host scalars for by-value ones) and enqueues. */
static df_status execute(dnn_handle handle, AttnPlan *plan, const int64_t *uids, void *const *ptrs, int n,
                         void *workspace) {
  Graph vp_owner;
  dnn_desc vp = vp_owner.create(DNN_VARIANT_PACK_DESCRIPTOR, "variant pack");
  vp_owner.set(vp, DNN_ATTR_VARIANT_PACK_UNIQUE_IDS, DNN_TYPE_INT64, n, uids, "variant pack uids");
  vp_owner.set(vp, DNN_ATTR_VARIANT_PACK_DATA_POINTERS, DNN_TYPE_VOID_PTR, n, ptrs, "variant pack pointers");
  vp_owner.set(vp, DNN_ATTR_VARIANT_PACK_WORKSPACE, DNN_TYPE_VOID_PTR, 1, &workspace, "variant pack workspace");
  vp_owner.finalize(vp, "variant pack finalize");
  if (!vp_owner.failed()) vp_owner.check(dnn.backend_execute(handle, plan->plan, vp), "cudnnBackendExecute");
  if (vp_owner.failed()) return df_fail(DF_ERR_LIBRARY, "cuDNN attention: %s", vp_owner.error);
  return DF_OK;
}

/* acc[i] += grad[i] (bf16 -> fp32), n elements. */
__global__ void add_bf16_into_f32(float *acc, const bf16 *grad, int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    acc[i] += __bfloat162float(grad[i]);
}

static df_status add_into(float *acc, const bf16 *grad, int64_t n, cudaStream_t s) {
  add_bf16_into_f32<<<df_grid_for((uint64_t)n, 256), 256, 0, s>>>(acc, grad, n);
  DF_CUDA_LAUNCHED();
  return DF_OK;
}

df_status cudnn_attention_forward(bool *handled, bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v,
                                  int64_t tq, int64_t tk, int nh, int nkv, int hd, int64_t q_pos0, int64_t k_pos0,
                                  float scale, cudaStream_t s) {
  *handled = false;
  std::lock_guard<std::mutex> guard(dnn_mutex);
  AttnKey key;
  if (!dnn_applies(&key, 0, tq, tk, nh, nkv, hd, q_pos0, k_pos0, scale, {out, q, k, v, lse})) return DF_OK;
  dnn_handle handle = NULL;
  DF_CHECK(handle_for(key.device, s, &handle));
  AttnPlan *plan = plan_for(key, handle);
  if (plan->unsupported) return DF_OK;
  void *ws = NULL;
  DF_CHECK(scratch_for(key.device, s, align256((uint64_t)plan->workspace) + 256, &ws));
  if (!ws) return DF_OK; /* no scratch slot for this stream */
  float scale_value = scale, neg_inf = dnn_version < 91000 ? -3.402823466e38f : -INFINITY;
  int32_t delta = (int32_t)key.delta;
  const int64_t uids[] = {U_Q, U_K, U_V, U_O, U_STATS, U_SCALE, U_NEG_INF, U_DELTA};
  void *const ptrs[] = {(void *)q, (void *)k, (void *)v, out, lse, &scale_value, &neg_inf, &delta};
  /* uids of scalars the graph does not hold (the unmasked or delta = 0 graphs) are left out */
  const int n = !key.masked ? 6 : key.delta == 0 ? 7 : 8;
  const int64_t uids_unmasked[] = {U_Q, U_K, U_V, U_O, U_STATS, U_SCALE};
  DF_CHECK(execute(handle, plan, key.masked ? uids : uids_unmasked, ptrs, n, ws));
  *handled = true;
  return DF_OK;
}

df_status cudnn_attention_backward(bool *handled, float *dq, float *dk, float *dv, const bf16 *dout, const bf16 *q,
                                   const bf16 *k, const bf16 *v, const bf16 *out, const float *lse, int64_t tq,
                                   int64_t tk, int nh, int nkv, int hd, int64_t q_pos0, int64_t k_pos0, float scale,
                                   cudaStream_t s) {
  *handled = false;
  std::lock_guard<std::mutex> guard(dnn_mutex);
  AttnKey key;
  if (!dnn_applies(&key, 1, tq, tk, nh, nkv, hd, q_pos0, k_pos0, scale, {dq, dk, dv, dout, q, k, v, out, lse}))
    return DF_OK;
  dnn_handle handle = NULL;
  DF_CHECK(handle_for(key.device, s, &handle));
  AttnPlan *plan = plan_for(key, handle);
  if (plan->unsupported) return DF_OK;
  /* scratch: workspace | dq, dk, dv in bf16 | Dsum [nh, tq] | dQ accumulator [nh, tq, hd] fp32 */
  const uint64_t q_n = (uint64_t)tq * nh * hd, kv_n = (uint64_t)tk * nkv * hd;
  const uint64_t off_dq = align256((uint64_t)plan->workspace), off_dk = off_dq + align256(2 * q_n),
                 off_dv = off_dk + align256(2 * kv_n), off_dsum = off_dv + align256(2 * kv_n),
                 off_acc = off_dsum + align256(4ull * nh * tq), total = off_acc + align256(4 * q_n);
  void *base = NULL;
  DF_CHECK(scratch_for(key.device, s, total, &base));
  if (!base) return DF_OK;
  char *b = static_cast<char *>(base);
  bf16 *dq_s = (bf16 *)(b + off_dq), *dk_s = (bf16 *)(b + off_dk), *dv_s = (bf16 *)(b + off_dv);
  float *dsum = (float *)(b + off_dsum), *acc = (float *)(b + off_acc);
  /* cuDNN before 9.6 expects the dQ accumulator zeroed by the caller (its frontend does so). */
  DF_CUDA(cudaMemsetAsync(acc, 0, 4 * q_n, s));
  float scale_value = scale, neg_inf = dnn_version < 91000 ? -3.402823466e38f : -INFINITY, one = 1.0f;
  int32_t delta = (int32_t)key.delta;
  std::vector<int64_t> uids = {U_Q, U_K, U_V, U_O, U_DOUT, U_STATS, U_DQ, U_DK, U_DV, U_DSUM, U_DQ_ACC, U_SCALE, U_ONE};
  std::vector<void *> ptrs = {(void *)q, (void *)k, (void *)v, (void *)out, (void *)dout, (void *)lse, dq_s, dk_s,
                              dv_s, dsum, acc, &scale_value, &one};
  if (key.masked) {
    uids.push_back(U_NEG_INF);
    ptrs.push_back(&neg_inf);
    if (key.delta != 0) {
      uids.push_back(U_DELTA);
      ptrs.push_back(&delta);
    }
  }
  DF_CHECK(execute(handle, plan, uids.data(), ptrs.data(), (int)uids.size(), b));
  DF_CHECK(add_into(dq, dq_s, (int64_t)q_n, s));
  DF_CHECK(add_into(dk, dk_s, (int64_t)kv_n, s));
  DF_CHECK(add_into(dv, dv_s, (int64_t)kv_n, s));
  *handled = true;
  return DF_OK;
}
