/* CPU attention of one (query block, key block) pair, causal and optionally masked by document: the
 * reference for the CUDA kernels.
 *
 * Scores are computed in fp32, one (query, head) row at a time, with an exact two-pass softmax over
 * the visible keys. Query i (global position p = q_pos0 + i) sees key j (s = k_pos0 + j) iff
 * doc_start(p) <= s <= p; without documents doc_start is 0, i.e. plain causal attention, and the
 * causal entries are the document entries with no documents (one implementation). A sliding window
 * W > 0 (Mistral) also requires p - s < W, as Hugging Face transformers' sliding_window_overlay
 * (kv_idx > q_idx - sliding_window): the left bound becomes max(doc_start(p), p - W + 1) and, per
 * key, the queries end at min(doc_end(s), s + W). The keys a query
 * sees, and the queries that see a key, are contiguous ranges computed once per row. Query head h
 * reads kv head h / (nh / nkv). Every output element is computed by one thread in a fixed order, so
 * results do not depend on the thread count.
 */
#include <math.h>

#include "cpu_util.h"

/* Document boundaries of the whole sequence: starts[0] = 0 < starts[1] < ... < starts[n - 1].
 * n = 0 is one document without end (plain causal). window > 0: the sliding window (0: none). */
typedef struct {
  const int64_t *starts;
  int64_t n;
  int64_t window;
} doc_bounds;

/* Number of document starts <= p (binary search). */
static inline int64_t starts_up_to(doc_bounds d, int64_t p) {
  int64_t lo = 0, hi = d.n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (d.starts[mid] <= p) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/* First position of the document holding position p. */
static inline int64_t doc_start(doc_bounds d, int64_t p) {
  const int64_t c = starts_up_to(d, p);
  return c > 0 ? d.starts[c - 1] : 0;
}

/* First position after the document holding position p (INT64_MAX for the last one). */
static inline int64_t doc_end(doc_bounds d, int64_t p) {
  const int64_t c = starts_up_to(d, p);
  return c < d.n ? d.starts[c] : INT64_MAX;
}

/* First key position query p sees: doc_start(p), or p - window + 1 when that is later. */
static inline int64_t first_key(doc_bounds d, int64_t p) {
  const int64_t a = doc_start(d, p);
  if (d.window > 0 && p - d.window + 1 > a) return p - d.window + 1;
  return a;
}

/* First query position past those that see key s: doc_end(s), or s + window when that is earlier. */
static inline int64_t query_end(doc_bounds d, int64_t s) {
  const int64_t e = doc_end(d, s);
  if (d.window > 0 && d.window <= INT64_MAX - s && s + d.window < e) return s + d.window;
  return e;
}

/* Keys [*lo, *end) of the block that query i sees: first_key(p) <= k_pos0 + j <= p. */
static inline void key_range(doc_bounds d, int64_t i, int64_t tk, int64_t q_pos0, int64_t k_pos0,
                             int64_t *lo, int64_t *end) {
  const int64_t p = q_pos0 + i;
  int64_t a = first_key(d, p) - k_pos0, b = p - k_pos0 + 1;
  if (a < 0) a = 0;
  if (b > tk) b = tk;
  *lo = a;
  *end = b > a ? b : a;
}

/* Queries [*lo, *end) of the block that see key j: s <= q_pos0 + i < query_end(s), s = k_pos0 + j.
 */
static inline void query_range(doc_bounds d, int64_t j, int64_t tq, int64_t q_pos0, int64_t k_pos0,
                               int64_t *lo, int64_t *end) {
  const int64_t s = k_pos0 + j, e = query_end(d, s);
  int64_t a = s - q_pos0, b = e == INT64_MAX ? tq : e - q_pos0;
  if (a < 0) a = 0;
  if (b > tq) b = tq;
  *lo = a;
  *end = b > a ? b : a;
}

/* doc_starts: n_docs >= 0, inside one allocation, starting at 0 and strictly ascending;
 * window >= 0. */
static df_status check_docs(const char *fn, const int64_t *starts, int64_t n, int64_t window,
                            doc_bounds *out) {
  DF_CHECK(df_check_dim(fn, "n_docs", n, 0));
  DF_CHECK(df_check_dim(fn, "window", window, 0));
  if (n > 0) {
    DF_CHECK(df_check_elems(fn, "doc_starts", starts, n, sizeof(int64_t)));
    if (starts[0] != 0) {
      return df_fail(DF_ERR_INVALID, "%s: doc_starts[0] must be 0, got %lld", fn,
                     (long long)starts[0]);
    }
    for (int64_t i = 1; i < n; i++) {
      if (starts[i] <= starts[i - 1]) {
        return df_fail(DF_ERR_INVALID,
                       "%s: doc_starts must ascend strictly, got %lld then %lld at index %lld", fn,
                       (long long)starts[i - 1], (long long)starts[i], (long long)i);
      }
    }
  }
  out->starts = n > 0 ? starts : NULL;
  out->n = n;
  out->window = window;
  return DF_OK;
}

/* Checks shared by forward and backward: sizes, head grouping, positions, scale, dtype. */
static df_status check_shape(const char *fn, int64_t tq, int64_t tk, int64_t nh, int64_t nkv,
                             int64_t hd, int64_t q_pos0, int64_t k_pos0, float scale,
                             df_dtype dtype, int64_t *q_n, int64_t *k_n) {
  DF_CHECK(df_check_dim(fn, "tq", tq, 1));
  DF_CHECK(df_check_dim(fn, "tk", tk, 1));
  DF_CHECK(df_check_dim(fn, "nh", nh, 1));
  DF_CHECK(df_check_dim(fn, "nkv", nkv, 1));
  DF_CHECK(df_check_dim(fn, "hd", hd, 1));
  DF_CHECK(df_check_dim(fn, "q_pos0", q_pos0, 0));
  DF_CHECK(df_check_dim(fn, "k_pos0", k_pos0, 0));
  if (nh % nkv != 0) {
    return df_fail(DF_ERR_INVALID, "%s: argument 'nkv' (%lld) must divide 'nh' (%lld)", fn,
                   (long long)nkv, (long long)nh);
  }
  if (!isfinite(scale)) {
    return df_fail(DF_ERR_INVALID, "%s: argument 'scale' must be finite, got %g", fn,
                   (double)scale);
  }
  DF_CHECK(df_check_dtype(fn, "dtype", (int)dtype));
  DF_CHECK(df_numel(fn, "q", q_n, tq, nh, hd));
  DF_CHECK(df_numel(fn, "k", k_n, tk, nkv, hd));
  return DF_OK;
}

/* The forward of both entries; fn names the entry in errors. */
static df_status attention_forward(const char *fn, void *out, float *lse, const void *q,
                                   const void *k, const void *v, int64_t tq, int64_t tk,
                                   int64_t nh, int64_t nkv, int64_t hd, int64_t q_pos0,
                                   int64_t k_pos0, float scale, df_dtype dtype,
                                   const int64_t *doc_starts, int64_t n_docs, int64_t window) {
  int64_t q_n = 0, k_n = 0;
  DF_CHECK(check_shape(fn, tq, tk, nh, nkv, hd, q_pos0, k_pos0, scale, dtype, &q_n, &k_n));
  doc_bounds docs;
  DF_CHECK(check_docs(fn, doc_starts, n_docs, window, &docs));
  const uint64_t es = df_dtype_size(dtype);
  DF_CHECK(df_check_elems(fn, "out", out, q_n, es));
  DF_CHECK(df_check_elems(fn, "lse", lse, nh * tq, sizeof(float)));
  DF_CHECK(df_check_elems(fn, "q", q, q_n, es));
  DF_CHECK(df_check_elems(fn, "k", k, k_n, es));
  DF_CHECK(df_check_elems(fn, "v", v, k_n, es));

  float *k_owned = NULL, *v_owned = NULL;
  const float *kf = df_f32_view(k, dtype, k_n, &k_owned);
  const float *vf = df_f32_view(v, dtype, k_n, &v_owned);
  if (!kf || !vf) {
    free(k_owned);
    free(v_owned);
    return df_fail(DF_ERR_OOM, "%s: out of host memory", fn);
  }
  int failed = 0;
  const int64_t group = nh / nkv;
  const double work = (double)tq * (double)tk * (double)nh * (double)hd;
#pragma omp parallel if (work > 1e5) reduction(| : failed)
  {
    float *buf = (float *)malloc((size_t)(tk + 2 * hd) * sizeof(float));
    if (!buf) failed = 1;
    float *p = buf, *qrow = buf + tk, *orow = buf + tk + hd;
#pragma omp for collapse(2) schedule(dynamic, 8)
    for (int64_t h = 0; h < nh; h++) {
      for (int64_t i = 0; i < tq; i++) {
        if (!buf) continue;
        const int64_t g = h / group, row = (i * nh + h) * hd;
        int64_t lo = 0, end = 0;
        key_range(docs, i, tk, q_pos0, k_pos0, &lo, &end);
        for (int64_t d = 0; d < hd; d++) orow[d] = 0.0f;
        if (lo == end) {
          df_store_row(out, dtype, row, orow, hd);
          lse[h * tq + i] = -INFINITY;
          continue;
        }
        df_load_row(qrow, q, dtype, row, hd);
        float m = -INFINITY;
        for (int64_t j = lo; j < end; j++) {
          p[j] = scale * df_dot(qrow, kf + (j * nkv + g) * hd, hd);
          if (p[j] > m) m = p[j];
        }
        float sum = 0.0f;
        for (int64_t j = lo; j < end; j++) {
          p[j] = expf(p[j] - m);
          sum += p[j];
          df_axpy_row(orow, p[j], vf + (j * nkv + g) * hd, hd);
        }
        const float inv = 1.0f / sum;
        for (int64_t d = 0; d < hd; d++) orow[d] *= inv;
        df_store_row(out, dtype, row, orow, hd);
        lse[h * tq + i] = m + logf(sum);
      }
    }
    free(buf);
  }
  free(k_owned);
  free(v_owned);
  if (failed) return df_fail(DF_ERR_OOM, "%s: out of host memory", fn);
  return DF_OK;
}

/* With P_ij = exp(scale q_i.k_j - lse_i) (lse over ALL keys of the sequence) and
 * D_i = dout_i . out_i:  dv_j += P_ij dout_i;  dS_ij = P_ij (dout_i . v_j - D_i);
 * dq_i += scale dS_ij k_j;  dk_j += scale dS_ij q_i.
 * Three passes, each race-free: D per (query, head); dq per (query, head); dk and dv per
 * (key, kv head), summing over the group's query heads and the queries in a fixed order. */
/* The backward of both entries; fn names the entry in errors. */
static df_status attention_backward(const char *fn, float *dq, float *dk, float *dv,
                                    const void *dout, const void *q, const void *k, const void *v,
                                    const void *out, const float *lse, int64_t tq, int64_t tk,
                                    int64_t nh, int64_t nkv, int64_t hd, int64_t q_pos0,
                                    int64_t k_pos0, float scale, df_dtype dtype,
                                    const int64_t *doc_starts, int64_t n_docs,
                                    int64_t window) {
  int64_t q_n = 0, k_n = 0;
  DF_CHECK(check_shape(fn, tq, tk, nh, nkv, hd, q_pos0, k_pos0, scale, dtype, &q_n, &k_n));
  doc_bounds docs;
  DF_CHECK(check_docs(fn, doc_starts, n_docs, window, &docs));
  const uint64_t es = df_dtype_size(dtype);
  DF_CHECK(df_check_elems(fn, "dq", dq, q_n, sizeof(float)));
  DF_CHECK(df_check_elems(fn, "dk", dk, k_n, sizeof(float)));
  DF_CHECK(df_check_elems(fn, "dv", dv, k_n, sizeof(float)));
  DF_CHECK(df_check_elems(fn, "dout", dout, q_n, es));
  DF_CHECK(df_check_elems(fn, "q", q, q_n, es));
  DF_CHECK(df_check_elems(fn, "k", k, k_n, es));
  DF_CHECK(df_check_elems(fn, "v", v, k_n, es));
  DF_CHECK(df_check_elems(fn, "out", out, q_n, es));
  DF_CHECK(df_check_elems(fn, "lse", lse, nh * tq, sizeof(float)));

  float *owned[4] = {NULL, NULL, NULL, NULL};
  const float *qf = df_f32_view(q, dtype, q_n, &owned[0]);
  const float *kf = df_f32_view(k, dtype, k_n, &owned[1]);
  const float *vf = df_f32_view(v, dtype, k_n, &owned[2]);
  const float *df = df_f32_view(dout, dtype, q_n, &owned[3]);
  float *dd = (float *)malloc((size_t)(nh * tq) * sizeof(float)); /* D, [nh, tq] */
  if (!qf || !kf || !vf || !df || !dd) {
    for (int i = 0; i < 4; i++) free(owned[i]);
    free(dd);
    return df_fail(DF_ERR_OOM, "%s: out of host memory", fn);
  }
  int failed = 0;
  const int64_t group = nh / nkv;
  const double work = (double)tq * (double)tk * (double)nh * (double)hd;

#pragma omp parallel if (work > 1e5) reduction(| : failed)
  {
    float *buf = (float *)malloc((size_t)(3 * hd) * sizeof(float));
    if (!buf) failed = 1;
    float *orow = buf, *acc = buf + hd, *acc2 = buf + 2 * hd;

#pragma omp for collapse(2) schedule(static)
    for (int64_t h = 0; h < nh; h++) {
      for (int64_t i = 0; i < tq; i++) {
        if (!buf) continue;
        const int64_t row = (i * nh + h) * hd;
        df_load_row(orow, out, dtype, row, hd);
        dd[h * tq + i] = df_dot(df + row, orow, hd);
      }
    }

    /* dq */
#pragma omp for collapse(2) schedule(dynamic, 8)
    for (int64_t h = 0; h < nh; h++) {
      for (int64_t i = 0; i < tq; i++) {
        const float l = lse[h * tq + i];
        if (!buf || l == -INFINITY) continue;
        const int64_t g = h / group, row = (i * nh + h) * hd;
        int64_t lo = 0, end = 0;
        key_range(docs, i, tk, q_pos0, k_pos0, &lo, &end);
        const float di = dd[h * tq + i];
        for (int64_t d = 0; d < hd; d++) acc[d] = 0.0f;
        for (int64_t j = lo; j < end; j++) {
          const float *kj = kf + (j * nkv + g) * hd, *vj = vf + (j * nkv + g) * hd;
          float p = expf(scale * df_dot(qf + row, kj, hd) - l);
          float ds = p * (df_dot(df + row, vj, hd) - di);
          df_axpy_row(acc, scale * ds, kj, hd);
        }
        for (int64_t d = 0; d < hd; d++) dq[row + d] += acc[d];
      }
    }

    /* dk, dv */
#pragma omp for collapse(2) schedule(dynamic, 8)
    for (int64_t g = 0; g < nkv; g++) {
      for (int64_t j = 0; j < tk; j++) {
        if (!buf) continue;
        const int64_t krow = (j * nkv + g) * hd;
        const float *kj = kf + krow, *vj = vf + krow;
        int64_t i0 = 0, i1 = 0;
        query_range(docs, j, tq, q_pos0, k_pos0, &i0, &i1);
        for (int64_t d = 0; d < hd; d++) acc[d] = acc2[d] = 0.0f; /* dk, dv of this key */
        for (int64_t h = g * group; h < (g + 1) * group; h++) {
          for (int64_t i = i0; i < i1; i++) {
            const float l = lse[h * tq + i];
            if (l == -INFINITY) continue;
            const int64_t row = (i * nh + h) * hd;
            float p = expf(scale * df_dot(qf + row, kj, hd) - l);
            float ds = p * (df_dot(df + row, vj, hd) - dd[h * tq + i]);
            df_axpy_row(acc2, p, df + row, hd);
            df_axpy_row(acc, scale * ds, qf + row, hd);
          }
        }
        for (int64_t d = 0; d < hd; d++) {
          dk[krow + d] += acc[d];
          dv[krow + d] += acc2[d];
        }
      }
    }
    free(buf);
  }
  for (int i = 0; i < 4; i++) free(owned[i]);
  free(dd);
  if (failed) return df_fail(DF_ERR_OOM, "%s: out of host memory", fn);
  return DF_OK;
}

df_status df_attention_forward(void *out, float *lse, const void *q, const void *k, const void *v,
                               int64_t tq, int64_t tk, int64_t nh, int64_t nkv, int64_t hd,
                               int64_t q_pos0, int64_t k_pos0, float scale, df_dtype dtype,
                               void *stream) {
  (void)stream;
  return attention_forward("df_attention_forward", out, lse, q, k, v, tq, tk, nh, nkv, hd, q_pos0,
                           k_pos0, scale, dtype, NULL, 0, 0);
}

df_status df_attention_forward_docs(void *out, float *lse, const void *q, const void *k,
                                    const void *v, int64_t tq, int64_t tk, int64_t nh, int64_t nkv,
                                    int64_t hd, int64_t q_pos0, int64_t k_pos0, float scale,
                                    df_dtype dtype, const int64_t *doc_starts, int64_t n_docs,
                                    int64_t window, void *stream) {
  (void)stream;
  return attention_forward("df_attention_forward_docs", out, lse, q, k, v, tq, tk, nh, nkv, hd,
                           q_pos0, k_pos0, scale, dtype, doc_starts, n_docs, window);
}

df_status df_attention_backward(float *dq, float *dk, float *dv, const void *dout, const void *q,
                                const void *k, const void *v, const void *out, const float *lse,
                                int64_t tq, int64_t tk, int64_t nh, int64_t nkv, int64_t hd,
                                int64_t q_pos0, int64_t k_pos0, float scale, df_dtype dtype,
                                void *stream) {
  (void)stream;
  return attention_backward("df_attention_backward", dq, dk, dv, dout, q, k, v, out, lse, tq, tk,
                            nh, nkv, hd, q_pos0, k_pos0, scale, dtype, NULL, 0, 0);
}

df_status df_attention_backward_docs(float *dq, float *dk, float *dv, const void *dout,
                                     const void *q, const void *k, const void *v, const void *out,
                                     const float *lse, int64_t tq, int64_t tk, int64_t nh,
                                     int64_t nkv, int64_t hd, int64_t q_pos0, int64_t k_pos0,
                                     float scale, df_dtype dtype, const int64_t *doc_starts,
                                     int64_t n_docs, int64_t window, void *stream) {
  (void)stream;
  return attention_backward("df_attention_backward_docs", dq, dk, dv, dout, q, k, v, out, lse, tq,
                            tk, nh, nkv, hd, q_pos0, k_pos0, scale, dtype, doc_starts, n_docs,
                            window);
}

/* new_lse = logaddexp(lse, part_lse); out = out e^(lse - new_lse) + part e^(part_lse - new_lse).
 * A side with lse = -inf contributes nothing (its out is not read), so no NaN appears. */
df_status df_attention_merge(float *out, float *lse, const void *part_out, const float *part_lse,
                             int64_t tq, int64_t nh, int64_t hd, df_dtype dtype, void *stream) {
  (void)stream;
  const char *fn = "df_attention_merge";
  DF_CHECK(df_check_dim(fn, "tq", tq, 1));
  DF_CHECK(df_check_dim(fn, "nh", nh, 1));
  DF_CHECK(df_check_dim(fn, "hd", hd, 1));
  DF_CHECK(df_check_dtype(fn, "dtype", (int)dtype));
  int64_t n = 0;
  DF_CHECK(df_numel(fn, "out", &n, tq, nh, hd));
  DF_CHECK(df_check_elems(fn, "out", out, n, sizeof(float)));
  DF_CHECK(df_check_elems(fn, "lse", lse, nh * tq, sizeof(float)));
  DF_CHECK(df_check_elems(fn, "part_out", part_out, n, df_dtype_size(dtype)));
  DF_CHECK(df_check_elems(fn, "part_lse", part_lse, nh * tq, sizeof(float)));
#pragma omp parallel for collapse(2) schedule(static) if (n > 65536)
  for (int64_t i = 0; i < tq; i++) {
    for (int64_t h = 0; h < nh; h++) {
      const float a = lse[h * tq + i], b = part_lse[h * tq + i];
      float *o = out + (i * nh + h) * hd;
      const int64_t row = (i * nh + h) * hd;
      if (b == -INFINITY) continue; /* nothing to add */
      if (a == -INFINITY) {         /* nothing so far: take the part */
        df_load_row(o, part_out, dtype, row, hd);
        lse[h * tq + i] = b;
        continue;
      }
      const float mx = a > b ? a : b;
      const float new_lse = mx + log1pf(expf(-fabsf(a - b)));
      const float wa = expf(a - new_lse), wb = expf(b - new_lse);
      for (int64_t d = 0; d < hd; d++) o[d] = o[d] * wa + df_load(part_out, dtype, row + d) * wb;
      lse[h * tq + i] = new_lse;
    }
  }
  return DF_OK;
}
