/* Rotary position embedding, in place, Hugging Face rotate_half convention: the pair (i, i + hd/2)
 * of every head of token t turns by pos[t] * inv_freq[i] (by minus that angle for the backward).
 * One thread per (token, pair index) computes the sine and cosine once and walks all heads. */
#include "kernel_utils.cuh"

template <typename T>
__global__ void rope_kernel(T *x, const int32_t *pos, const float *inv_freq, int64_t t, int64_t heads, int64_t hd,
                            float sign) {
  const int64_t half = hd / 2, total = t * half;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t tok = idx / half, i = idx - tok * half;
    /* The angle in fp32, as transformers computes it (inv_freq @ position_ids in float32). */
    const float angle = (float)pos[tok] * inv_freq[i];
    float sn, cs;
    sincosf(angle, &sn, &cs);
    sn *= sign;
    T *row = x + tok * heads * hd + i;
    for (int64_t h = 0; h < heads; h++, row += hd) {
      const float a = ld_f32(row), b = ld_f32(row + half);
      st_f32(row, a * cs - b * sn);
      st_f32(row + half, b * cs + a * sn);
    }
  }
}

extern "C" {

df_status df_rope(void *x, const int32_t *pos, const float *inv_freq, int64_t t, int64_t heads, int64_t hd,
                  int32_t inverse, df_dtype dtype, void *stream) {
  static const char *fn = "df_rope";
  DF_CHECK(check_dim(fn, "t", t, 1));
  DF_CHECK(check_dim(fn, "heads", heads, 1));
  DF_CHECK(check_dim(fn, "hd", hd, 2));
  if (hd % 2) return df_fail(DF_ERR_INVALID, "%s: argument 'hd' must be even, got %lld", fn, (long long)hd);
  DF_CHECK(check_dtype(fn, "dtype", dtype));
  int64_t n = 0;
  DF_CHECK(check_numel(fn, "x", &n, t, heads, hd));
  DF_CHECK(check_elems(fn, "x", x, n, dtype_bytes(dtype)));
  DF_CHECK(check_elems(fn, "pos", pos, t, sizeof(int32_t)));
  DF_CHECK(check_elems(fn, "inv_freq", inv_freq, hd / 2, sizeof(float)));
  const float sign = inverse ? -1.0f : 1.0f;
  const uint64_t threads_needed = (uint64_t)t * (uint64_t)(hd / 2);
  DF_DISPATCH_DTYPE(dtype, rope_kernel<T><<<df_grid_for(threads_needed, 256), 256, 0, df_stream(stream)>>>(
                               (T *)x, pos, inv_freq, t, heads, hd, sign));
  DF_CUDA_LAUNCHED();
  return DF_OK;
}

}  // extern "C"
