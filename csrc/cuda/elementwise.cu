/* Elementwise ops and reductions: SwiGLU, add, convert, sum, sum of squares, AdamW.
 * Grid-stride loops over n elements; fp32 arithmetic whatever the storage type. */
#include "kernel_utils.cuh"

#define GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

template <typename T>
__global__ void swiglu_forward_kernel(T *out, const T *gate, const T *up, int64_t n) {
  GRID_STRIDE(i, n) {
    const float g = ld_f32(gate + i), u = ld_f32(up + i);
    st_f32(out + i, g * sigmoidf_(g) * u);
  }
}

template <typename T>
__global__ void swiglu_backward_kernel(T *dgate, T *dup, const T *dout, const T *gate, const T *up, int64_t n) {
  GRID_STRIDE(i, n) {
    const float d = ld_f32(dout + i), g = ld_f32(gate + i), u = ld_f32(up + i);
    const float sig = sigmoidf_(g);
    const float silu = g * sig;
    const float dsilu = sig * (1.0f + g * (1.0f - sig));
    st_f32(dgate + i, d * u * dsilu);
    st_f32(dup + i, d * silu);
  }
}

template <typename T>
__global__ void add_kernel(T *out, const T *a, const T *b, int64_t n) {
  GRID_STRIDE(i, n) st_f32(out + i, ld_f32(a + i) + ld_f32(b + i));
}

template <typename TO, typename TI>
__global__ void convert_kernel(TO *out, const TI *in, int64_t n) {
  GRID_STRIDE(i, n) st_f32(out + i, ld_f32(in + i));
}

/* sum += sum(x) (SQUARE: of x^2), accumulated in double like the CPU twin: per-thread double partials,
 * a block reduction, one double atomicAdd per block into a scratch accumulator; then sum_finish adds
 * the total to the fp32 *sum with a single rounding. */
template <bool SQUARE>
__global__ void sum_kernel(double *acc_out, const float *x, int64_t n) {
  __shared__ double scratch[32];
  double acc = 0.0;
  GRID_STRIDE(i, n) {
    const double v = (double)x[i];
    acc += SQUARE ? v * v : v;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) scratch[warp] = acc;
  __syncthreads();
  if (warp == 0) {
    acc = lane < (int)(blockDim.x >> 5) ? scratch[lane] : 0.0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) atomicAdd(acc_out, acc);
  }
}

__global__ void sum_finish_kernel(float *sum, const double *acc) { *sum = (float)((double)*sum + *acc); }

template <typename TC>
__global__ void adamw_kernel(float *param, const float *grad, float *m, float *v, int64_t n, float lr, float beta1,
                             float beta2, float eps, float weight_decay, float bc1, float bc2, float grad_scale,
                             TC *copy) {
  GRID_STRIDE(i, n) {
    const float g = grad[i] * grad_scale;
    const float mi = beta1 * m[i] + (1.0f - beta1) * g;
    const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    const float p = param[i];
    const float update = weight_decay * p + (mi / bc1) / (sqrtf(vi / bc2) + eps);
    const float pn = p - lr * update;
    param[i] = pn;
    if (copy) st_f32(copy + i, pn);
  }
}

extern "C" {

/* Argument checks follow the CPU twins (csrc/cpu/elementwise.c) in order and wording. */

df_status df_swiglu_forward(void *out, const void *gate, const void *up, int64_t n, df_dtype dtype, void *stream) {
  static const char *fn = "df_swiglu_forward";
  DF_CHECK(check_dim(fn, "n", n, 0));
  DF_CHECK(check_dtype(fn, "dtype", dtype));
  if (n == 0) return DF_OK;
  const uint64_t es = dtype_bytes(dtype);
  DF_CHECK(check_elems(fn, "out", out, n, es));
  DF_CHECK(check_elems(fn, "gate", gate, n, es));
  DF_CHECK(check_elems(fn, "up", up, n, es));
  DF_DISPATCH_DTYPE(dtype, swiglu_forward_kernel<T><<<df_grid_for(n, 256), 256, 0, df_stream(stream)>>>(
                               (T *)out, (const T *)gate, (const T *)up, n));
  DF_CUDA_LAUNCHED();
  return DF_OK;
}

df_status df_swiglu_backward(void *dgate, void *dup, const void *dout, const void *gate, const void *up, int64_t n,
                             df_dtype dtype, void *stream) {
  static const char *fn = "df_swiglu_backward";
  DF_CHECK(check_dim(fn, "n", n, 0));
  DF_CHECK(check_dtype(fn, "dtype", dtype));
  if (n == 0) return DF_OK;
  const uint64_t es = dtype_bytes(dtype);
  DF_CHECK(check_elems(fn, "dgate", dgate, n, es));
  DF_CHECK(check_elems(fn, "dup", dup, n, es));
  DF_CHECK(check_elems(fn, "dout", dout, n, es));
  DF_CHECK(check_elems(fn, "gate", gate, n, es));
  DF_CHECK(check_elems(fn, "up", up, n, es));
  DF_DISPATCH_DTYPE(dtype, swiglu_backward_kernel<T><<<df_grid_for(n, 256), 256, 0, df_stream(stream)>>>(
                               (T *)dgate, (T *)dup, (const T *)dout, (const T *)gate, (const T *)up, n));
  DF_CUDA_LAUNCHED();
  return DF_OK;
}

df_status df_add(void *out, const void *a, const void *b, int64_t n, df_dtype dtype, void *stream) {
  static const char *fn = "df_add";
  DF_CHECK(check_dim(fn, "n", n, 0));
  DF_CHECK(check_dtype(fn, "dtype", dtype));
  if (n == 0) return DF_OK;
  const uint64_t es = dtype_bytes(dtype);
  DF_CHECK(check_elems(fn, "out", out, n, es));
  DF_CHECK(check_elems(fn, "a", a, n, es));
  DF_CHECK(check_elems(fn, "b", b, n, es));
  /* each element is read before it is written, so out may alias a or b */
  DF_DISPATCH_DTYPE(dtype, add_kernel<T><<<df_grid_for(n, 256), 256, 0, df_stream(stream)>>>(
                               (T *)out, (const T *)a, (const T *)b, n));
  DF_CUDA_LAUNCHED();
  return DF_OK;
}

df_status df_convert(void *out, df_dtype out_dtype, const void *in, df_dtype in_dtype, int64_t n, void *stream) {
  static const char *fn = "df_convert";
  DF_CHECK(check_dim(fn, "n", n, 0));
  DF_CHECK(check_dtype(fn, "out_dtype", out_dtype));
  DF_CHECK(check_dtype(fn, "in_dtype", in_dtype));
  if (n == 0) return DF_OK;
  DF_CHECK(check_elems(fn, "out", out, n, dtype_bytes(out_dtype)));
  DF_CHECK(check_elems(fn, "in", in, n, dtype_bytes(in_dtype)));
  cudaStream_t s = df_stream(stream);
  if (out_dtype == in_dtype) {
    if (out != in) DF_CUDA(cudaMemcpyAsync(out, in, (size_t)n * dtype_bytes(in_dtype), cudaMemcpyDeviceToDevice, s));
    return DF_OK;
  }
  if (out_dtype == DF_BF16)
    convert_kernel<__nv_bfloat16, float><<<df_grid_for(n, 256), 256, 0, s>>>((__nv_bfloat16 *)out, (const float *)in, n);
  else
    convert_kernel<float, __nv_bfloat16><<<df_grid_for(n, 256), 256, 0, s>>>((float *)out, (const __nv_bfloat16 *)in, n);
  DF_CUDA_LAUNCHED();
  return DF_OK;
}

static df_status reduce_sum(const char *fn, float *sum, const float *x, int64_t n, bool squares, cudaStream_t s) {
  DF_CHECK(check_dim(fn, "n", n, 0));
  DF_CHECK(check_elems(fn, "sum", sum, 1, sizeof(float)));
  if (n == 0) return DF_OK;
  DF_CHECK(check_elems(fn, "x", x, n, sizeof(float)));
  /* A stream-ordered scratch double: concurrent sums on other streams each get their own. */
  double *acc = NULL;
  DF_CUDA(cudaMallocAsync((void **)&acc, sizeof(double), s));
  cudaError_t err = cudaMemsetAsync(acc, 0, sizeof(double), s);
  if (err == cudaSuccess) {
    if (squares)
      sum_kernel<true><<<df_grid_for(n, 256), 256, 0, s>>>(acc, x, n);
    else
      sum_kernel<false><<<df_grid_for(n, 256), 256, 0, s>>>(acc, x, n);
    err = cudaGetLastError();
  }
  if (err == cudaSuccess) {
    sum_finish_kernel<<<1, 1, 0, s>>>(sum, acc);
    err = cudaGetLastError();
  }
  cudaFreeAsync(acc, s);
  DF_CUDA(err);
  return DF_OK;
}

df_status df_sum_squares(float *sum, const float *x, int64_t n, void *stream) {
  return reduce_sum("df_sum_squares", sum, x, n, true, df_stream(stream));
}

df_status df_sum(float *sum, const float *x, int64_t n, void *stream) {
  return reduce_sum("df_sum", sum, x, n, false, df_stream(stream));
}

df_status df_adamw(float *param, const float *grad, float *m, float *v, int64_t n, float lr, float beta1, float beta2,
                   float eps, float weight_decay, float bc1, float bc2, float grad_scale, void *copy,
                   df_dtype copy_dtype, void *stream) {
  static const char *fn = "df_adamw";
  DF_CHECK(check_dim(fn, "n", n, 0));
  if (!(bc1 > 0.0f) || !(bc2 > 0.0f))
    return df_fail(DF_ERR_INVALID, "%s: bias corrections 'bc1' (%g) and 'bc2' (%g) must be > 0 (step >= 1)", fn,
                   (double)bc1, (double)bc2);
  if (!isfinite(lr) || !isfinite(beta1) || !isfinite(beta2) || !isfinite(eps) || !isfinite(weight_decay) ||
      !isfinite(grad_scale))
    return df_fail(DF_ERR_INVALID,
                   "%s: hyperparameters must be finite (lr %g, beta1 %g, beta2 %g, eps %g, weight_decay %g, "
                   "grad_scale %g)",
                   fn, (double)lr, (double)beta1, (double)beta2, (double)eps, (double)weight_decay,
                   (double)grad_scale);
  if (copy) DF_CHECK(check_dtype(fn, "copy_dtype", copy_dtype));
  if (n == 0) return DF_OK;
  DF_CHECK(check_elems(fn, "param", param, n, sizeof(float)));
  DF_CHECK(check_elems(fn, "grad", grad, n, sizeof(float)));
  DF_CHECK(check_elems(fn, "m", m, n, sizeof(float)));
  DF_CHECK(check_elems(fn, "v", v, n, sizeof(float)));
  if (copy) DF_CHECK(check_elems(fn, "copy", copy, n, dtype_bytes(copy_dtype)));
  cudaStream_t s = df_stream(stream);
  const unsigned grid = df_grid_for(n, 256);
  if (copy && copy_dtype == DF_BF16)
    adamw_kernel<__nv_bfloat16><<<grid, 256, 0, s>>>(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, bc1,
                                                     bc2, grad_scale, (__nv_bfloat16 *)copy);
  else
    adamw_kernel<float><<<grid, 256, 0, s>>>(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, bc1, bc2,
                                             grad_scale, (float *)copy);
  DF_CUDA_LAUNCHED();
  return DF_OK;
}

}  // extern "C"
