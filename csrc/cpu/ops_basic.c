/* CPU twins of csrc/cuda/ops_basic.cu: casts and axpy. */
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
