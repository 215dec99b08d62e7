/* Cross-entropy over vocabulary chunks (the LM head's logits never exist for the whole vocabulary).
 * One block per row of the chunk: an online (max, sum of exp) over the row, merged into the running
 * m[t], s[t]; the backward overwrites the chunk in place with the gradient. */
#include "kernel_utils.cuh"

#define CE_THREADS 256

/* Merge (mb, sb) into (ma, sa): the pair describing sum exp(x - m) over the union. */
__device__ __forceinline__ void online_merge(float &ma, float &sa, float mb, float sb) {
  const float mx = fmaxf(ma, mb);
  if (mx == -INFINITY) return; /* both empty (or all -inf): nothing to add */
  sa = sa * expf(ma - mx) + sb * expf(mb - mx);
  ma = mx;
}

__global__ void __launch_bounds__(CE_THREADS)
    ce_chunk_forward_kernel(float *m, float *s, float *target, const float *logits, const int32_t *labels, int64_t t,
                            int64_t vc, int64_t v0) {
  __shared__ float sm_m[CE_THREADS / 32], sm_s[CE_THREADS / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t row = blockIdx.x; row < t; row += gridDim.x) {
    const float *x = logits + row * vc;
    float tm = -INFINITY, ts = 0.0f;
    for (int64_t j = threadIdx.x; j < vc; j += blockDim.x) {
      const float v = x[j];
      if (v > tm) {
        ts = ts * expf(tm - v) + 1.0f; /* tm = -inf gives 0 * 0 + 1 */
        tm = v;
      } else if (v != -INFINITY) {
        ts += expf(v - tm);
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float om = __shfl_xor_sync(0xffffffffu, tm, o), os = __shfl_xor_sync(0xffffffffu, ts, o);
      online_merge(tm, ts, om, os);
    }
    if (lane == 0) {
      sm_m[warp] = tm;
      sm_s[warp] = ts;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      float bm = sm_m[0], bs = sm_s[0];
      for (int w = 1; w < (int)(blockDim.x >> 5); w++) online_merge(bm, bs, sm_m[w], sm_s[w]);
      float rm = m[row], rs = s[row];
      online_merge(rm, rs, bm, bs);
      m[row] = rm;
      s[row] = rs;
      const int32_t label = labels[row];
      if (label >= 0 && (int64_t)label >= v0 && (int64_t)label < v0 + vc) target[row] = x[label - v0];
    }
    __syncthreads(); /* sm_m/sm_s are reused by the next row */
  }
}

__global__ void ce_finalize_kernel(float *loss, float *lse, const float *m, const float *s, const float *target,
                                   const int32_t *labels, int64_t t) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < t; i += (int64_t)gridDim.x * blockDim.x) {
    const float l = m[i] + logf(s[i]);
    lse[i] = l;
    loss[i] = labels[i] < 0 ? 0.0f : l - target[i];
  }
}

__global__ void __launch_bounds__(CE_THREADS)
    ce_chunk_backward_kernel(float *logits, const float *lse, const int32_t *labels, int64_t t, int64_t vc, int64_t v0,
                             float scale) {
  for (int64_t row = blockIdx.x; row < t; row += gridDim.x) {
    float *x = logits + row * vc;
    const int32_t label = labels[row];
    if (label < 0) {
      for (int64_t j = threadIdx.x; j < vc; j += blockDim.x) x[j] = 0.0f;
      continue;
    }
    const float l = lse[row];
    const int64_t hit = (int64_t)label - v0; /* column of the label in this chunk, if any */
    for (int64_t j = threadIdx.x; j < vc; j += blockDim.x) {
      const float p = expf(x[j] - l);
      x[j] = scale * (j == hit ? p - 1.0f : p);
    }
  }
}

/* Checks of the chunk ops, as the CPU twin (csrc/cpu/cross_entropy.c) makes them. */
static df_status check_chunk(const char *fn, int64_t t, int64_t vc, int64_t v0, int64_t *n) {
  DF_CHECK(check_dim(fn, "t", t, 1));
  DF_CHECK(check_dim(fn, "vc", vc, 1));
  DF_CHECK(check_dim(fn, "v0", v0, 0));
  if (v0 + vc > ((int64_t)1 << 31))
    return df_fail(DF_ERR_INVALID, "%s: chunk [v0, v0 + vc) = [%lld, %lld) goes past 2^31 ids", fn, (long long)v0,
                   (long long)(v0 + vc));
  return check_numel(fn, "logits", n, t, vc, 1);
}

extern "C" {

df_status df_ce_chunk_forward(float *m, float *s, float *target, const float *logits, const int32_t *labels, int64_t t,
                              int64_t vc, int64_t v0, void *stream) {
  static const char *fn = "df_ce_chunk_forward";
  int64_t n = 0;
  DF_CHECK(check_chunk(fn, t, vc, v0, &n));
  DF_CHECK(check_elems(fn, "m", m, t, sizeof(float)));
  DF_CHECK(check_elems(fn, "s", s, t, sizeof(float)));
  DF_CHECK(check_elems(fn, "target", target, t, sizeof(float)));
  DF_CHECK(check_elems(fn, "logits", logits, n, sizeof(float)));
  DF_CHECK(check_elems(fn, "labels", labels, t, sizeof(int32_t)));
  ce_chunk_forward_kernel<<<rows_grid(t), CE_THREADS, 0, df_stream(stream)>>>(m, s, target, logits, labels, t, vc, v0);
  DF_CUDA_LAUNCHED();
  return DF_OK;
}

df_status df_ce_finalize(float *loss, float *lse, const float *m, const float *s, const float *target,
                         const int32_t *labels, int64_t t, void *stream) {
  static const char *fn = "df_ce_finalize";
  DF_CHECK(check_dim(fn, "t", t, 1));
  DF_CHECK(check_elems(fn, "loss", loss, t, sizeof(float)));
  DF_CHECK(check_elems(fn, "lse", lse, t, sizeof(float)));
  DF_CHECK(check_elems(fn, "m", m, t, sizeof(float)));
  DF_CHECK(check_elems(fn, "s", s, t, sizeof(float)));
  DF_CHECK(check_elems(fn, "target", target, t, sizeof(float)));
  DF_CHECK(check_elems(fn, "labels", labels, t, sizeof(int32_t)));
  ce_finalize_kernel<<<df_grid_for(t, 256), 256, 0, df_stream(stream)>>>(loss, lse, m, s, target, labels, t);
  DF_CUDA_LAUNCHED();
  return DF_OK;
}

df_status df_ce_chunk_backward(float *logits, const float *lse, const int32_t *labels, int64_t t, int64_t vc,
                               int64_t v0, float scale, void *stream) {
  static const char *fn = "df_ce_chunk_backward";
  int64_t n = 0;
  DF_CHECK(check_chunk(fn, t, vc, v0, &n));
  DF_CHECK(check_elems(fn, "logits", logits, n, sizeof(float)));
  DF_CHECK(check_elems(fn, "lse", lse, t, sizeof(float)));
  DF_CHECK(check_elems(fn, "labels", labels, t, sizeof(int32_t)));
  ce_chunk_backward_kernel<<<rows_grid(t), CE_THREADS, 0, df_stream(stream)>>>(logits, lse, labels, t, vc, v0, scale);
  DF_CUDA_LAUNCHED();
  return DF_OK;
}

}  // extern "C"
