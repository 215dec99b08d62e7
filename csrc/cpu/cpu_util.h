/* Helpers shared by the CPU kernels: argument checks, fp32/bf16 loads and stores, a dot product. */
#ifndef DF_CPU_UTIL_H
#define DF_CPU_UTIL_H

#include <stdlib.h>
#include <string.h>

#include "../common/common.h"

/* No tensor dimension may exceed this; it keeps every byte count below 2^62 after the checks. */
#define DF_MAX_DIM ((int64_t)1 << 40)

static inline uint64_t df_dtype_size(df_dtype dtype) { return dtype == DF_BF16 ? 2 : 4; }

/* dtype must be DF_F32 or DF_BF16. */
static inline df_status df_check_dtype(const char *fn, const char *name, int dtype) {
  if (dtype != DF_F32 && dtype != DF_BF16) {
    return df_fail(DF_ERR_INVALID, "%s: argument '%s' must be DF_F32 (0) or DF_BF16 (1), got %d", fn,
                   name, dtype);
  }
  return DF_OK;
}

/* min <= value <= DF_MAX_DIM. */
static inline df_status df_check_dim(const char *fn, const char *name, int64_t value, int64_t min) {
  if (value < min) {
    return df_fail(DF_ERR_INVALID, "%s: argument '%s' must be >= %lld, got %lld", fn, name,
                   (long long)min, (long long)value);
  }
  if (value > DF_MAX_DIM) {
    return df_fail(DF_ERR_INVALID, "%s: argument '%s' = %lld is too large", fn, name,
                   (long long)value);
  }
  return DF_OK;
}

/* *out = a * b * c, or an error if the element count overflows. */
static inline df_status df_numel(const char *fn, const char *name, int64_t *out, int64_t a,
                                 int64_t b, int64_t c) {
  int64_t ab, abc;
  if (__builtin_mul_overflow(a, b, &ab) || __builtin_mul_overflow(ab, c, &abc) ||
      abc > ((int64_t)1 << 60)) {
    return df_fail(DF_ERR_INVALID, "%s: tensor '%s' has too many elements (%lld x %lld x %lld)", fn,
                   name, (long long)a, (long long)b, (long long)c);
  }
  *out = abc;
  return DF_OK;
}

/* Checks that ptr covers count elements of elem_bytes each (count from df_numel: no overflow). */
static inline df_status df_check_elems(const char *fn, const char *name, const void *ptr,
                                       int64_t count, uint64_t elem_bytes) {
  return df_check_range(fn, name, ptr, (uint64_t)count * elem_bytes);
}

static inline float df_load(const void *p, df_dtype dtype, int64_t i) {
  return dtype == DF_BF16 ? df_bf16_bits_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static inline void df_store(void *p, df_dtype dtype, int64_t i, float value) {
  if (dtype == DF_BF16) {
    ((uint16_t *)p)[i] = df_f32_to_bf16_bits(value);
  } else {
    ((float *)p)[i] = value;
  }
}

/* dst[0:n] = src[offset : offset + n] as fp32. */
static inline void df_load_row(float *restrict dst, const void *src, df_dtype dtype, int64_t offset,
                               int64_t n) {
  if (dtype == DF_BF16) {
    const uint16_t *s = (const uint16_t *)src + offset;
    for (int64_t i = 0; i < n; i++) dst[i] = df_bf16_bits_to_f32(s[i]);
  } else {
    memcpy(dst, (const float *)src + offset, (size_t)n * sizeof(float));
  }
}

/* dst[offset : offset + n] = src[0:n], rounded to bf16 when dtype is DF_BF16. */
static inline void df_store_row(void *dst, df_dtype dtype, int64_t offset, const float *restrict src,
                                int64_t n) {
  if (dtype == DF_BF16) {
    uint16_t *d = (uint16_t *)dst + offset;
    for (int64_t i = 0; i < n; i++) d[i] = df_f32_to_bf16_bits(src[i]);
  } else {
    memcpy((float *)dst + offset, src, (size_t)n * sizeof(float));
  }
}

/* Dot product with 8 independent partial sums (vectorisable without reassociation flags). The
 * summation order depends only on n, so results are reproducible. */
static inline float df_dot(const float *restrict a, const float *restrict b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int l = 0; l < 8; l++) acc[l] += a[i + l] * b[i + l];
  }
  float tail = 0.0f;
  for (; i < n; i++) tail += a[i] * b[i];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail;
}

/* y[0:n] += a * x[0:n] */
static inline void df_axpy_row(float *restrict y, float a, const float *restrict x, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

/* An fp32 view of a whole tensor: the tensor itself when it is fp32, else a converted copy that the
 * caller frees (*owned). Returns NULL when the copy cannot be allocated. */
static inline const float *df_f32_view(const void *p, df_dtype dtype, int64_t n, float **owned) {
  *owned = NULL;
  if (dtype == DF_F32) return (const float *)p;
  float *buf = (float *)malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
  if (!buf) return NULL;
  const uint16_t *s = (const uint16_t *)p;
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; i++) buf[i] = df_bf16_bits_to_f32(s[i]);
  *owned = buf;
  return buf;
}

#endif
