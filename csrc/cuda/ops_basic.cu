/* Casts, axpy and random initialisation: twins of csrc/cpu/ops_basic.c. */
#include "cuda_common.cuh"

__global__ void cast_f32_to_bf16_kernel(uint16_t *out, const float *in, uint64_t n) {
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x)
    out[i] = __bfloat16_as_ushort(__float2bfloat16_rn(in[i]));
}

__global__ void cast_bf16_to_f32_kernel(float *out, const uint16_t *in, uint64_t n) {
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x)
    out[i] = __bfloat162float(__ushort_as_bfloat16(in[i]));
}

__global__ void axpy_f32_kernel(float *y, const float *x, float a, uint64_t n) {
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x)
    y[i] += a * x[i];
}

__global__ void fill_normal_f32_kernel(float *out, uint64_t n, uint64_t key, uint64_t index0, float mean,
                                       float std) {
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
    const uint64_t h = df_mix64(key ^ ((index0 + i) * 0x9e3779b97f4a7c15ull));
    const float u1 = ((float)(uint32_t)(h >> 40) + 0.5f) * (1.0f / 16777216.0f);
    const float u2 = (float)(uint32_t)(h & 0xffffffu) * (1.0f / 16777216.0f);
    out[i] = mean + std * sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
  }
}

extern "C" {

df_status df_cast_f32_to_bf16(uint16_t *out, const float *in, uint64_t n, void *stream) {
  DF_CHECK(df_check_range("df_cast_f32_to_bf16", "out", out, 2 * n));
  DF_CHECK(df_check_range("df_cast_f32_to_bf16", "in", in, 4 * n));
  if (n == 0) return DF_OK;
  cast_f32_to_bf16_kernel<<<df_grid_for(n, 256), 256, 0, df_stream(stream)>>>(out, in, n);
  DF_CUDA_LAUNCHED();
  return DF_OK;
}

df_status df_cast_bf16_to_f32(float *out, const uint16_t *in, uint64_t n, void *stream) {
  DF_CHECK(df_check_range("df_cast_bf16_to_f32", "out", out, 4 * n));
  DF_CHECK(df_check_range("df_cast_bf16_to_f32", "in", in, 2 * n));
  if (n == 0) return DF_OK;
  cast_bf16_to_f32_kernel<<<df_grid_for(n, 256), 256, 0, df_stream(stream)>>>(out, in, n);
  DF_CUDA_LAUNCHED();
  return DF_OK;
}

df_status df_axpy_f32(float *y, const float *x, float a, uint64_t n, void *stream) {
  DF_CHECK(df_check_range("df_axpy_f32", "y", y, 4 * n));
  DF_CHECK(df_check_range("df_axpy_f32", "x", x, 4 * n));
  if (n == 0) return DF_OK;
  axpy_f32_kernel<<<df_grid_for(n, 256), 256, 0, df_stream(stream)>>>(y, x, a, n);
  DF_CUDA_LAUNCHED();
  return DF_OK;
}

df_status df_fill_normal_f32(float *out, uint64_t n, uint64_t seed, uint64_t index0, float mean, float std,
                             void *stream) {
  DF_CHECK(df_check_range("df_fill_normal_f32", "out", out, 4 * n));
  if (n == 0) return DF_OK;
  fill_normal_f32_kernel<<<df_grid_for(n, 256), 256, 0, df_stream(stream)>>>(out, n, df_mix64(seed), index0, mean,
                                                                              std);
  DF_CUDA_LAUNCHED();
  return DF_OK;
}

}  // extern "C"
