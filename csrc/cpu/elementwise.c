/* CPU elementwise ops: SwiGLU, add, convert, sums, AdamW. */
#include <math.h>

#include "cpu_util.h"

/* Loops over more elements than this run on all threads. */
#define PARALLEL_MIN 32768
/* Sums add fixed-size blocks in double, then the block sums in order: deterministic whatever the
 * thread count. */
#define SUM_BLOCK 65536

static inline float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

df_status df_swiglu_forward(void *out, const void *gate, const void *up, int64_t n, df_dtype dtype,
                            void *stream) {
  (void)stream;
  const char *fn = "df_swiglu_forward";
  DF_CHECK(df_check_dim(fn, "n", n, 0));
  DF_CHECK(df_check_dtype(fn, "dtype", (int)dtype));
  if (n == 0) return DF_OK;
  const uint64_t es = df_dtype_size(dtype);
  DF_CHECK(df_check_elems(fn, "out", out, n, es));
  DF_CHECK(df_check_elems(fn, "gate", gate, n, es));
  DF_CHECK(df_check_elems(fn, "up", up, n, es));
#pragma omp parallel for schedule(static) if (n > PARALLEL_MIN)
  for (int64_t i = 0; i < n; i++) {
    float g = df_load(gate, dtype, i), u = df_load(up, dtype, i);
    df_store(out, dtype, i, g * sigmoidf(g) * u);
  }
  return DF_OK;
}

/* silu(g) = g s with s = sigmoid(g); silu'(g) = s (1 + g (1 - s)). */
df_status df_swiglu_backward(void *dgate, void *dup, const void *dout, const void *gate,
                             const void *up, int64_t n, df_dtype dtype, void *stream) {
  (void)stream;
  const char *fn = "df_swiglu_backward";
  DF_CHECK(df_check_dim(fn, "n", n, 0));
  DF_CHECK(df_check_dtype(fn, "dtype", (int)dtype));
  if (n == 0) return DF_OK;
  const uint64_t es = df_dtype_size(dtype);
  DF_CHECK(df_check_elems(fn, "dgate", dgate, n, es));
  DF_CHECK(df_check_elems(fn, "dup", dup, n, es));
  DF_CHECK(df_check_elems(fn, "dout", dout, n, es));
  DF_CHECK(df_check_elems(fn, "gate", gate, n, es));
  DF_CHECK(df_check_elems(fn, "up", up, n, es));
#pragma omp parallel for schedule(static) if (n > PARALLEL_MIN)
  for (int64_t i = 0; i < n; i++) {
    float g = df_load(gate, dtype, i), u = df_load(up, dtype, i), d = df_load(dout, dtype, i);
    float s = sigmoidf(g);
    df_store(dgate, dtype, i, d * u * s * (1.0f + g * (1.0f - s)));
    df_store(dup, dtype, i, d * g * s);
  }
  return DF_OK;
}

df_status df_add(void *out, const void *a, const void *b, int64_t n, df_dtype dtype, void *stream) {
  (void)stream;
  const char *fn = "df_add";
  DF_CHECK(df_check_dim(fn, "n", n, 0));
  DF_CHECK(df_check_dtype(fn, "dtype", (int)dtype));
  if (n == 0) return DF_OK;
  const uint64_t es = df_dtype_size(dtype);
  DF_CHECK(df_check_elems(fn, "out", out, n, es));
  DF_CHECK(df_check_elems(fn, "a", a, n, es));
  DF_CHECK(df_check_elems(fn, "b", b, n, es));
  /* Each element is read before it is written, so out may alias a or b. */
  if (dtype == DF_F32) {
    const float *af = (const float *)a, *bf = (const float *)b;
    float *of = (float *)out;
#pragma omp parallel for schedule(static) if (n > PARALLEL_MIN)
    for (int64_t i = 0; i < n; i++) of[i] = af[i] + bf[i];
  } else {
#pragma omp parallel for schedule(static) if (n > PARALLEL_MIN)
    for (int64_t i = 0; i < n; i++) {
      df_store(out, dtype, i, df_load(a, dtype, i) + df_load(b, dtype, i));
    }
  }
  return DF_OK;
}

df_status df_convert(void *out, df_dtype out_dtype, const void *in, df_dtype in_dtype, int64_t n,
                     void *stream) {
  (void)stream;
  const char *fn = "df_convert";
  DF_CHECK(df_check_dim(fn, "n", n, 0));
  DF_CHECK(df_check_dtype(fn, "out_dtype", (int)out_dtype));
  DF_CHECK(df_check_dtype(fn, "in_dtype", (int)in_dtype));
  if (n == 0) return DF_OK;
  DF_CHECK(df_check_elems(fn, "out", out, n, df_dtype_size(out_dtype)));
  DF_CHECK(df_check_elems(fn, "in", in, n, df_dtype_size(in_dtype)));
  if (out_dtype == in_dtype) {
    if (out != in) memmove(out, in, (size_t)n * df_dtype_size(in_dtype));
    return DF_OK;
  }
#pragma omp parallel for schedule(static) if (n > PARALLEL_MIN)
  for (int64_t i = 0; i < n; i++) df_store(out, out_dtype, i, df_load(in, in_dtype, i));
  return DF_OK;
}

/* *sum += sum of f(x[i]) with f the identity (squares = 0) or the square (squares = 1). */
static df_status reduce_sum(const char *fn, float *sum, const float *x, int64_t n, int squares) {
  DF_CHECK(df_check_dim(fn, "n", n, 0));
  DF_CHECK(df_check_elems(fn, "sum", sum, 1, sizeof(float)));
  if (n == 0) return DF_OK;
  DF_CHECK(df_check_elems(fn, "x", x, n, sizeof(float)));
  const int64_t blocks = (n + SUM_BLOCK - 1) / SUM_BLOCK;
  double *partial = (double *)malloc((size_t)blocks * sizeof(double));
  if (!partial) return df_fail(DF_ERR_OOM, "%s: out of host memory", fn);
#pragma omp parallel for schedule(static) if (blocks > 1)
  for (int64_t b = 0; b < blocks; b++) {
    int64_t i0 = b * SUM_BLOCK, i1 = i0 + SUM_BLOCK < n ? i0 + SUM_BLOCK : n;
    double acc[4] = {0, 0, 0, 0};
    int64_t i = i0;
    if (squares) {
      for (; i + 4 <= i1; i += 4) {
        for (int l = 0; l < 4; l++) acc[l] += (double)x[i + l] * (double)x[i + l];
      }
      for (; i < i1; i++) acc[0] += (double)x[i] * (double)x[i];
    } else {
      for (; i + 4 <= i1; i += 4) {
        for (int l = 0; l < 4; l++) acc[l] += (double)x[i + l];
      }
      for (; i < i1; i++) acc[0] += (double)x[i];
    }
    partial[b] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  }
  double total = 0.0;
  for (int64_t b = 0; b < blocks; b++) total += partial[b];
  free(partial);
  *sum = (float)((double)*sum + total);
  return DF_OK;
}

df_status df_sum_squares(float *sum, const float *x, int64_t n, void *stream) {
  (void)stream;
  return reduce_sum("df_sum_squares", sum, x, n, 1);
}

df_status df_sum(float *sum, const float *x, int64_t n, void *stream) {
  (void)stream;
  return reduce_sum("df_sum", sum, x, n, 0);
}

df_status df_adamw(float *param, const float *grad, float *m, float *v, int64_t n, float lr,
                   float beta1, float beta2, float eps, float weight_decay, float bc1, float bc2,
                   float grad_scale, void *copy, df_dtype copy_dtype, void *stream) {
  (void)stream;
  const char *fn = "df_adamw";
  DF_CHECK(df_check_dim(fn, "n", n, 0));
  if (!(bc1 > 0.0f) || !(bc2 > 0.0f)) {
    return df_fail(DF_ERR_INVALID,
                   "%s: bias corrections 'bc1' (%g) and 'bc2' (%g) must be > 0 (step >= 1)", fn,
                   (double)bc1, (double)bc2);
  }
  if (!isfinite(lr) || !isfinite(beta1) || !isfinite(beta2) || !isfinite(eps) ||
      !isfinite(weight_decay) || !isfinite(grad_scale)) {
    return df_fail(DF_ERR_INVALID,
                   "%s: hyperparameters must be finite (lr %g, beta1 %g, beta2 %g, eps %g, "
                   "weight_decay %g, grad_scale %g)",
                   fn, (double)lr, (double)beta1, (double)beta2, (double)eps,
                   (double)weight_decay, (double)grad_scale);
  }
  if (copy) DF_CHECK(df_check_dtype(fn, "copy_dtype", (int)copy_dtype));
  if (n == 0) return DF_OK;
  DF_CHECK(df_check_elems(fn, "param", param, n, sizeof(float)));
  DF_CHECK(df_check_elems(fn, "grad", grad, n, sizeof(float)));
  DF_CHECK(df_check_elems(fn, "m", m, n, sizeof(float)));
  DF_CHECK(df_check_elems(fn, "v", v, n, sizeof(float)));
  if (copy) DF_CHECK(df_check_elems(fn, "copy", copy, n, df_dtype_size(copy_dtype)));
#pragma omp parallel for schedule(static) if (n > PARALLEL_MIN)
  for (int64_t i = 0; i < n; i++) {
    float g = grad[i] * grad_scale;
    float mi = beta1 * m[i] + (1.0f - beta1) * g;
    float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    float p = param[i];
    p -= lr * (weight_decay * p + (mi / bc1) / (sqrtf(vi / bc2) + eps));
    m[i] = mi;
    v[i] = vi;
    param[i] = p;
    if (copy) df_store(copy, copy_dtype, i, p);
  }
  return DF_OK;
}
