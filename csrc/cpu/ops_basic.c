/* CPU twins of csrc/cuda/ops_basic.cu: casts, axpy and random initialisation. */
#include <math.h>

#include "../common/common.h"

df_status df_cast_f32_to_bf16(uint16_t *out, const float *in, uint64_t n, void *stream) {
  (void)stream;
  DF_CHECK(df_check_range("df_cast_f32_to_bf16", "out", out, 2 * n));
  DF_CHECK(df_check_range("df_cast_f32_to_bf16", "in", in, 4 * n));
  for (uint64_t i = 0; i < n; i++) out[i] = df_f32_to_bf16_bits(in[i]);
  return DF_OK;
}

df_status df_cast_bf16_to_f32(float *out, const uint16_t *in, uint64_t n, void *stream) {
  (void)stream;
  DF_CHECK(df_check_range("df_cast_bf16_to_f32", "out", out, 4 * n));
  DF_CHECK(df_check_range("df_cast_bf16_to_f32", "in", in, 2 * n));
  for (uint64_t i = 0; i < n; i++) out[i] = df_bf16_bits_to_f32(in[i]);
  return DF_OK;
}

df_status df_axpy_f32(float *y, const float *x, float a, uint64_t n, void *stream) {
  (void)stream;
  DF_CHECK(df_check_range("df_axpy_f32", "y", y, 4 * n));
  DF_CHECK(df_check_range("df_axpy_f32", "x", x, 4 * n));
  for (uint64_t i = 0; i < n; i++) y[i] += a * x[i];
  return DF_OK;
}

df_status df_fill_normal_f32(float *out, uint64_t n, uint64_t seed, uint64_t index0, float mean,
                             float std, void *stream) {
  (void)stream;
  DF_CHECK(df_check_range("df_fill_normal_f32", "out", out, 4 * n));
  const uint64_t key = df_mix64(seed);
#pragma omp parallel for if (n > 65536) schedule(static)
  for (uint64_t i = 0; i < n; i++) {
    const uint64_t h = df_mix64(key ^ ((index0 + i) * 0x9e3779b97f4a7c15ull));
    const float u1 = ((float)(uint32_t)(h >> 40) + 0.5f) * (1.0f / 16777216.0f); /* (0, 1) */
    const float u2 = (float)(uint32_t)(h & 0xffffffu) * (1.0f / 16777216.0f);
    out[i] = mean + std * sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
  }
  return DF_OK;
}
