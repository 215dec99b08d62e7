/* Token embedding (forward gather with a device-side id check, backward scatter-add) and RMSNorm
 * (forward and backward, one block per row, fp32 math). */
#include <limits.h>

#include <mutex>

#include "kernel_utils.cuh"

#define ROW_THREADS 256
#define MAX_DEVICES 64

/* ---------------- embedding ---------------- */

/* out[r,:] = table[ids[r],:]; an id outside [0, v) zeroes its row and records the smallest such r. */
template <typename T>
__global__ void embedding_forward_kernel(T *out, const T *table, const int32_t *ids, int64_t t, int64_t v, int64_t h,
                                         unsigned long long *first_bad) {
  for (int64_t row = blockIdx.x; row < t; row += gridDim.x) {
    const int32_t id = ids[row];
    T *dst = out + row * h;
    if (id < 0 || (int64_t)id >= v) {
      if (threadIdx.x == 0) atomicMin(first_bad, (unsigned long long)row);
      for (int64_t j = threadIdx.x; j < h; j += blockDim.x) st_f32(dst + j, 0.0f);
      continue;
    }
    const T *src = table + (int64_t)id * h;
    for (int64_t j = threadIdx.x; j < h; j += blockDim.x) dst[j] = src[j];
  }
}

/* dtable[ids[r],:] += dout[r,:]; rows whose id is out of range are skipped (the forward rejected them). */
template <typename T>
__global__ void embedding_backward_kernel(float *dtable, const T *dout, const int32_t *ids, int64_t t, int64_t v,
                                          int64_t h) {
  for (int64_t row = blockIdx.x; row < t; row += gridDim.x) {
    const int32_t id = ids[row];
    if (id < 0 || (int64_t)id >= v) continue;
    float *dst = dtable + (int64_t)id * h;
    const T *src = dout + row * h;
    for (int64_t j = threadIdx.x; j < h; j += blockDim.x) atomicAdd(dst + j, ld_f32(src + j));
  }
}

/* One 8-byte flag per device for the id check, allocated on first use (not in the df_malloc registry).
 * The mutex also serialises the check itself: the flag is shared by all streams of a device. */
static std::mutex embed_lock;
static unsigned long long *embed_flag[MAX_DEVICES];

/* ---------------- RMSNorm ---------------- */

template <typename T>
__global__ void __launch_bounds__(ROW_THREADS)
    rmsnorm_forward_kernel(T *out, float *rstd, const T *x, const T *w, int64_t t, int64_t h, float eps) {
  __shared__ float scratch[32];
  for (int64_t row = blockIdx.x; row < t; row += gridDim.x) {
    const T *xr = x + row * h;
    float ss = 0.0f;
    for (int64_t j = threadIdx.x; j < h; j += blockDim.x) {
      const float v = ld_f32(xr + j);
      ss += v * v;
    }
    ss = block_sum(ss, scratch);
    const float r = 1.0f / sqrtf(ss / (float)h + eps);
    if (threadIdx.x == 0) rstd[row] = r;
    T *o = out + row * h;
    for (int64_t j = threadIdx.x; j < h; j += blockDim.x) st_f32(o + j, ld_f32(xr + j) * r * ld_f32(w + j));
  }
}

/* y = x r w with r = (mean x^2 + eps)^-1/2:
 *   dx_j += r w_j g_j - x_j r^3 / h * sum_i g_i w_i x_i,   dw_j += sum over rows g_j x_j r.
 * SMEM_DW: each block accumulates its rows' dw in shared memory (h floats) and adds it to dw once;
 * otherwise (h too large for shared memory) every row adds to dw directly. */
template <typename T, bool SMEM_DW>
__global__ void __launch_bounds__(ROW_THREADS)
    rmsnorm_backward_kernel(T *dx, float *dw, const T *dout, const T *x, const T *w, const float *rstd, int64_t t,
                            int64_t h) {
  extern __shared__ float dw_part[];
  __shared__ float scratch[32];
  if (SMEM_DW)
    for (int64_t j = threadIdx.x; j < h; j += blockDim.x) dw_part[j] = 0.0f;
  for (int64_t row = blockIdx.x; row < t; row += gridDim.x) {
    const T *xr = x + row * h, *gr = dout + row * h;
    T *dxr = dx + row * h;
    const float r = rstd[row];
    float dot = 0.0f;
    for (int64_t j = threadIdx.x; j < h; j += blockDim.x) dot += ld_f32(gr + j) * ld_f32(w + j) * ld_f32(xr + j);
    dot = block_sum(dot, scratch);
    const float c = r * r * r * dot / (float)h;
    for (int64_t j = threadIdx.x; j < h; j += blockDim.x) {
      const float g = ld_f32(gr + j), xv = ld_f32(xr + j);
      st_f32(dxr + j, ld_f32(dxr + j) + (r * g * ld_f32(w + j) - c * xv));
      if (SMEM_DW)
        dw_part[j] += g * xv * r; /* column j always belongs to this thread: no race */
      else
        atomicAdd(dw + j, g * xv * r);
    }
  }
  if (SMEM_DW)
    for (int64_t j = threadIdx.x; j < h; j += blockDim.x) atomicAdd(dw + j, dw_part[j]);
}

static df_status multiprocessors(int *count) {
  int dev = 0;
  DF_CUDA(cudaGetDevice(&dev));
  DF_CUDA(cudaDeviceGetAttribute(count, cudaDevAttrMultiProcessorCount, dev));
  if (*count < 1) *count = 1;
  return DF_OK;
}

template <typename T>
static df_status launch_rmsnorm_backward(T *dx, float *dw, const T *dout, const T *x, const T *w, const float *rstd,
                                         int64_t t, int64_t h, cudaStream_t s) {
  int sms = 1;
  DF_CHECK(multiprocessors(&sms));
  const unsigned grid = rows_grid(t, (unsigned)sms * 4u);
  const uint64_t smem = (uint64_t)h * 4;
  int dev = 0, optin = 0;
  DF_CUDA(cudaGetDevice(&dev));
  DF_CUDA(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  /* leave room for the static reduction scratch (32 floats) */
  if (smem + 256 <= (uint64_t)optin) {
    if (smem > 48u * 1024u)
      DF_CUDA(cudaFuncSetAttribute(rmsnorm_backward_kernel<T, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   (int)smem));
    rmsnorm_backward_kernel<T, true><<<grid, ROW_THREADS, (size_t)smem, s>>>(dx, dw, dout, x, w, rstd, t, h);
  } else {
    rmsnorm_backward_kernel<T, false><<<grid, ROW_THREADS, 0, s>>>(dx, dw, dout, x, w, rstd, t, h);
  }
  DF_CUDA_LAUNCHED();
  return DF_OK;
}

extern "C" {

/* Argument checks follow the CPU twins (csrc/cpu/norm_embed.c) in order and wording. */

df_status df_embedding_forward(void *out, const void *table, const int32_t *ids, int64_t t, int64_t v, int64_t h,
                               df_dtype dtype, void *stream) {
  static const char *fn = "df_embedding_forward";
  DF_CHECK(check_dim(fn, "t", t, 1));
  DF_CHECK(check_dim(fn, "v", v, 1));
  DF_CHECK(check_dim(fn, "h", h, 1));
  DF_CHECK(check_dtype(fn, "dtype", dtype));
  int64_t out_n = 0, table_n = 0;
  DF_CHECK(check_numel(fn, "out", &out_n, t, h, 1));
  DF_CHECK(check_numel(fn, "table", &table_n, v, h, 1));
  const uint64_t es = dtype_bytes(dtype);
  DF_CHECK(check_elems(fn, "out", out, out_n, es));
  DF_CHECK(check_elems(fn, "table", table, table_n, es));
  DF_CHECK(check_elems(fn, "ids", ids, t, sizeof(int32_t)));
  cudaStream_t s = df_stream(stream);
  unsigned long long first_bad = ULLONG_MAX;
  {
    std::lock_guard<std::mutex> guard(embed_lock);
    int dev = 0;
    DF_CUDA(cudaGetDevice(&dev));
    if (dev < 0 || dev >= MAX_DEVICES)
      return df_fail(DF_ERR_UNSUPPORTED, "%s: device %d is beyond the %d supported", fn, dev, MAX_DEVICES);
    if (!embed_flag[dev]) DF_CUDA(cudaMalloc((void **)&embed_flag[dev], sizeof(unsigned long long)));
    unsigned long long *flag = embed_flag[dev];
    DF_CUDA(cudaMemsetAsync(flag, 0xff, sizeof(unsigned long long), s));
    DF_DISPATCH_DTYPE(dtype, embedding_forward_kernel<T><<<rows_grid(t), ROW_THREADS, 0, s>>>(
                                 (T *)out, (const T *)table, ids, t, v, h, flag));
    DF_CUDA_LAUNCHED();
    DF_CUDA(cudaMemcpyAsync(&first_bad, flag, sizeof first_bad, cudaMemcpyDeviceToHost, s));
    DF_CUDA(cudaStreamSynchronize(s));
  }
  if (first_bad != ULLONG_MAX) {
    int32_t bad_id = 0;
    DF_CUDA(cudaMemcpyAsync(&bad_id, ids + first_bad, sizeof bad_id, cudaMemcpyDeviceToHost, s));
    DF_CUDA(cudaStreamSynchronize(s));
    return df_fail(DF_ERR_INVALID, "%s: ids[%llu] = %d is outside the vocabulary [0, %lld)", fn, first_bad,
                   (int)bad_id, (long long)v);
  }
  return DF_OK;
}

/* Ids are not checked here (that would need a host round trip per call): rows with an id outside
 * [0, v) are skipped. The forward, which runs on the same ids first, rejects them. */
df_status df_embedding_backward(float *dtable, const void *dout, const int32_t *ids, int64_t t, int64_t v, int64_t h,
                                df_dtype dtype, void *stream) {
  static const char *fn = "df_embedding_backward";
  DF_CHECK(check_dim(fn, "t", t, 1));
  DF_CHECK(check_dim(fn, "v", v, 1));
  DF_CHECK(check_dim(fn, "h", h, 1));
  DF_CHECK(check_dtype(fn, "dtype", dtype));
  int64_t dout_n = 0, table_n = 0;
  DF_CHECK(check_numel(fn, "dout", &dout_n, t, h, 1));
  DF_CHECK(check_numel(fn, "dtable", &table_n, v, h, 1));
  DF_CHECK(check_elems(fn, "dtable", dtable, table_n, sizeof(float)));
  DF_CHECK(check_elems(fn, "dout", dout, dout_n, dtype_bytes(dtype)));
  DF_CHECK(check_elems(fn, "ids", ids, t, sizeof(int32_t)));
  DF_DISPATCH_DTYPE(dtype, embedding_backward_kernel<T><<<rows_grid(t), ROW_THREADS, 0, df_stream(stream)>>>(
                               dtable, (const T *)dout, ids, t, v, h));
  DF_CUDA_LAUNCHED();
  return DF_OK;
}

df_status df_rmsnorm_forward(void *out, float *rstd, const void *x, const void *w, int64_t t, int64_t h, float eps,
                             df_dtype dtype, void *stream) {
  static const char *fn = "df_rmsnorm_forward";
  DF_CHECK(check_dim(fn, "t", t, 1));
  DF_CHECK(check_dim(fn, "h", h, 1));
  DF_CHECK(check_dtype(fn, "dtype", dtype));
  if (!(eps >= 0.0f) || isinf(eps))
    return df_fail(DF_ERR_INVALID, "%s: argument 'eps' must be finite and >= 0, got %g", fn, (double)eps);
  int64_t n = 0;
  DF_CHECK(check_numel(fn, "x", &n, t, h, 1));
  const uint64_t es = dtype_bytes(dtype);
  DF_CHECK(check_elems(fn, "out", out, n, es));
  DF_CHECK(check_elems(fn, "rstd", rstd, t, sizeof(float)));
  DF_CHECK(check_elems(fn, "x", x, n, es));
  DF_CHECK(check_elems(fn, "w", w, h, es));
  DF_DISPATCH_DTYPE(dtype, rmsnorm_forward_kernel<T><<<rows_grid(t), ROW_THREADS, 0, df_stream(stream)>>>(
                               (T *)out, rstd, (const T *)x, (const T *)w, t, h, eps));
  DF_CUDA_LAUNCHED();
  return DF_OK;
}

df_status df_rmsnorm_backward(void *dx, float *dw, const void *dout, const void *x, const void *w, const float *rstd,
                              int64_t t, int64_t h, df_dtype dtype, void *stream) {
  static const char *fn = "df_rmsnorm_backward";
  DF_CHECK(check_dim(fn, "t", t, 1));
  DF_CHECK(check_dim(fn, "h", h, 1));
  DF_CHECK(check_dtype(fn, "dtype", dtype));
  int64_t n = 0;
  DF_CHECK(check_numel(fn, "x", &n, t, h, 1));
  const uint64_t es = dtype_bytes(dtype);
  DF_CHECK(check_elems(fn, "dx", dx, n, es));
  DF_CHECK(check_elems(fn, "dw", dw, h, sizeof(float)));
  DF_CHECK(check_elems(fn, "dout", dout, n, es));
  DF_CHECK(check_elems(fn, "x", x, n, es));
  DF_CHECK(check_elems(fn, "w", w, h, es));
  DF_CHECK(check_elems(fn, "rstd", rstd, t, sizeof(float)));
  if (dx == dout) return df_fail(DF_ERR_INVALID, "%s: argument 'dx' may not alias 'dout'", fn);
  DF_DISPATCH_DTYPE(dtype, return launch_rmsnorm_backward<T>((T *)dx, dw, (const T *)dout, (const T *)x,
                                                            (const T *)w, rstd, t, h, df_stream(stream)));
  return DF_OK;
}

}  // extern "C"
