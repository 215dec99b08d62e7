/* CPU embedding lookup and RMSNorm, forward and backward. */
#include <math.h>

#include "cpu_util.h"

/* Parameter gradients (dtable, dw) are summed over tokens by splitting the columns among threads:
 * each column is summed by one thread in token order, so results are deterministic and race-free. */
#define COLUMN_BLOCK 64

df_status df_embedding_forward(void *out, const void *table, const int32_t *ids, int64_t t,
                               int64_t v, int64_t h, df_dtype dtype, void *stream) {
  (void)stream;
  const char *fn = "df_embedding_forward";
  DF_CHECK(df_check_dim(fn, "t", t, 1));
  DF_CHECK(df_check_dim(fn, "v", v, 1));
  DF_CHECK(df_check_dim(fn, "h", h, 1));
  DF_CHECK(df_check_dtype(fn, "dtype", (int)dtype));
  int64_t out_n = 0, table_n = 0;
  DF_CHECK(df_numel(fn, "out", &out_n, t, h, 1));
  DF_CHECK(df_numel(fn, "table", &table_n, v, h, 1));
  const uint64_t es = df_dtype_size(dtype);
  DF_CHECK(df_check_elems(fn, "out", out, out_n, es));
  DF_CHECK(df_check_elems(fn, "table", table, table_n, es));
  DF_CHECK(df_check_elems(fn, "ids", ids, t, sizeof(int32_t)));
  for (int64_t i = 0; i < t; i++) {
    if (ids[i] < 0 || ids[i] >= v) {
      return df_fail(DF_ERR_INVALID, "%s: ids[%lld] = %d is outside the vocabulary [0, %lld)", fn,
                     (long long)i, ids[i], (long long)v);
    }
  }
  const size_t row_bytes = (size_t)h * es;
#pragma omp parallel for schedule(static) if (out_n > 65536)
  for (int64_t i = 0; i < t; i++) {
    memcpy((char *)out + (size_t)i * row_bytes, (const char *)table + (size_t)ids[i] * row_bytes,
           row_bytes);
  }
  return DF_OK;
}

df_status df_embedding_backward(float *dtable, const void *dout, const int32_t *ids, int64_t t,
                                int64_t v, int64_t h, df_dtype dtype, void *stream) {
  (void)stream;
  const char *fn = "df_embedding_backward";
  DF_CHECK(df_check_dim(fn, "t", t, 1));
  DF_CHECK(df_check_dim(fn, "v", v, 1));
  DF_CHECK(df_check_dim(fn, "h", h, 1));
  DF_CHECK(df_check_dtype(fn, "dtype", (int)dtype));
  int64_t dout_n = 0, table_n = 0;
  DF_CHECK(df_numel(fn, "dout", &dout_n, t, h, 1));
  DF_CHECK(df_numel(fn, "dtable", &table_n, v, h, 1));
  DF_CHECK(df_check_elems(fn, "dtable", dtable, table_n, sizeof(float)));
  DF_CHECK(df_check_elems(fn, "dout", dout, dout_n, df_dtype_size(dtype)));
  DF_CHECK(df_check_elems(fn, "ids", ids, t, sizeof(int32_t)));
  for (int64_t i = 0; i < t; i++) {
    if (ids[i] < 0 || ids[i] >= v) {
      return df_fail(DF_ERR_INVALID, "%s: ids[%lld] = %d is outside the vocabulary [0, %lld)", fn,
                     (long long)i, ids[i], (long long)v);
    }
  }
  const int64_t blocks = (h + COLUMN_BLOCK - 1) / COLUMN_BLOCK;
#pragma omp parallel for schedule(static) if (dout_n > 65536)
  for (int64_t cb = 0; cb < blocks; cb++) {
    int64_t c0 = cb * COLUMN_BLOCK, c1 = c0 + COLUMN_BLOCK < h ? c0 + COLUMN_BLOCK : h;
    for (int64_t i = 0; i < t; i++) {
      float *dst = dtable + (int64_t)ids[i] * h;
      for (int64_t c = c0; c < c1; c++) dst[c] += df_load(dout, dtype, i * h + c);
    }
  }
  return DF_OK;
}

df_status df_rmsnorm_forward(void *out, float *rstd, const void *x, const void *w, int64_t t,
                             int64_t h, float eps, df_dtype dtype, void *stream) {
  (void)stream;
  const char *fn = "df_rmsnorm_forward";
  DF_CHECK(df_check_dim(fn, "t", t, 1));
  DF_CHECK(df_check_dim(fn, "h", h, 1));
  DF_CHECK(df_check_dtype(fn, "dtype", (int)dtype));
  if (!(eps >= 0.0f) || isinf(eps)) {
    return df_fail(DF_ERR_INVALID, "%s: argument 'eps' must be finite and >= 0, got %g", fn,
                   (double)eps);
  }
  int64_t n = 0;
  DF_CHECK(df_numel(fn, "x", &n, t, h, 1));
  const uint64_t es = df_dtype_size(dtype);
  DF_CHECK(df_check_elems(fn, "out", out, n, es));
  DF_CHECK(df_check_elems(fn, "rstd", rstd, t, sizeof(float)));
  DF_CHECK(df_check_elems(fn, "x", x, n, es));
  DF_CHECK(df_check_elems(fn, "w", w, h, es));
  float *wf = (float *)malloc((size_t)h * sizeof(float));
  if (!wf) return df_fail(DF_ERR_OOM, "%s: out of host memory", fn);
  df_load_row(wf, w, dtype, 0, h);
  int failed = 0;
#pragma omp parallel if (n > 32768) reduction(| : failed)
  {
    float *row = (float *)malloc((size_t)h * sizeof(float));
    if (!row) failed = 1;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < t; i++) {
      if (!row) continue;
      df_load_row(row, x, dtype, i * h, h);
      float ss = df_dot(row, row, h);
      float r = 1.0f / sqrtf(ss / (float)h + eps);
      rstd[i] = r;
      for (int64_t c = 0; c < h; c++) row[c] = row[c] * r * wf[c];
      df_store_row(out, dtype, i * h, row, h);
    }
    free(row);
  }
  free(wf);
  if (failed) return df_fail(DF_ERR_OOM, "%s: out of host memory", fn);
  return DF_OK;
}

/* With g = dout * w and r = rstd: out = x r w, dr/dx = -r^3 x / H, so
 *   dx = r (g - x r^2 (g . x) / H),   dw = sum over tokens of dout x r. */
df_status df_rmsnorm_backward(void *dx, float *dw, const void *dout, const void *x, const void *w,
                              const float *rstd, int64_t t, int64_t h, df_dtype dtype,
                              void *stream) {
  (void)stream;
  const char *fn = "df_rmsnorm_backward";
  DF_CHECK(df_check_dim(fn, "t", t, 1));
  DF_CHECK(df_check_dim(fn, "h", h, 1));
  DF_CHECK(df_check_dtype(fn, "dtype", (int)dtype));
  int64_t n = 0;
  DF_CHECK(df_numel(fn, "x", &n, t, h, 1));
  const uint64_t es = df_dtype_size(dtype);
  DF_CHECK(df_check_elems(fn, "dx", dx, n, es));
  DF_CHECK(df_check_elems(fn, "dw", dw, h, sizeof(float)));
  DF_CHECK(df_check_elems(fn, "dout", dout, n, es));
  DF_CHECK(df_check_elems(fn, "x", x, n, es));
  DF_CHECK(df_check_elems(fn, "w", w, h, es));
  DF_CHECK(df_check_elems(fn, "rstd", rstd, t, sizeof(float)));
  if (dx == dout) return df_fail(DF_ERR_INVALID, "%s: argument 'dx' may not alias 'dout'", fn);
  float *wf = (float *)malloc((size_t)h * sizeof(float));
  if (!wf) return df_fail(DF_ERR_OOM, "%s: out of host memory", fn);
  df_load_row(wf, w, dtype, 0, h);
  int failed = 0;
#pragma omp parallel if (n > 32768) reduction(| : failed)
  {
    float *buf = (float *)malloc((size_t)(3 * h) * sizeof(float));
    if (!buf) failed = 1;
    float *xr = buf, *g = buf + h, *acc = buf + 2 * h;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < t; i++) {
      if (!buf) continue;
      df_load_row(xr, x, dtype, i * h, h);
      df_load_row(g, dout, dtype, i * h, h);
      for (int64_t c = 0; c < h; c++) g[c] *= wf[c];
      float r = rstd[i];
      float coeff = r * r * df_dot(g, xr, h) / (float)h;
      df_load_row(acc, dx, dtype, i * h, h);
      for (int64_t c = 0; c < h; c++) acc[c] += r * (g[c] - xr[c] * coeff);
      df_store_row(dx, dtype, i * h, acc, h);
    }
    /* dw: columns split among threads, tokens summed in order. */
    const int64_t blocks = (h + COLUMN_BLOCK - 1) / COLUMN_BLOCK;
#pragma omp for schedule(static)
    for (int64_t cb = 0; cb < blocks; cb++) {
      int64_t c0 = cb * COLUMN_BLOCK, c1 = c0 + COLUMN_BLOCK < h ? c0 + COLUMN_BLOCK : h;
      float col[COLUMN_BLOCK];
      for (int64_t c = c0; c < c1; c++) col[c - c0] = 0.0f;
      for (int64_t i = 0; i < t; i++) {
        float r = rstd[i];
        for (int64_t c = c0; c < c1; c++) {
          col[c - c0] += df_load(dout, dtype, i * h + c) * df_load(x, dtype, i * h + c) * r;
        }
      }
      for (int64_t c = c0; c < c1; c++) dw[c] += col[c - c0];
    }
    free(buf);
  }
  free(wf);
  if (failed) return df_fail(DF_ERR_OOM, "%s: out of host memory", fn);
  return DF_OK;
}
