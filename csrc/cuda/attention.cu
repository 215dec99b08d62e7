/* Attention of one (query block, key block) pair, its backward, and the log-sum-exp merge of partial
 * results: the ABI entries under DistAttn (distflash.h has the contract), their argument checks, and
 * which kernels run a call.
 *
 * A bf16 call without documents (a sliding window included) asks the bf16 backends in order
 * (BF16_BACKENDS below): cuDNN's fused attention where it is loaded and chosen (cudnn_attention.cu,
 * df_attention_kernel_set), then the tensor-core kernels of flash_attention.cu (hd 64 or 128,
 * 16-byte aligned tensors, positive scale; a window only on the Hopper kernels). Everything else
 * (fp32, other head dims, every document-masked call, what no backend took) runs the general
 * kernels of general_attention.cu. */
#include <math.h>

#include "cudnn_attention.cuh"
#include "flash_attention.cuh"
#include "general_attention.cuh"
#include "kernel_utils.cuh"

/* ---------------- merge ---------------- */

/* One warp per (query, head): out, lse <- log-sum-exp merge with part_out, part_lse. All lanes take
 * the same branch (they read the same lse pair); lane 0 updates lse only after __syncwarp, since
 * lanes of a warp are not guaranteed to run in lockstep. */
template <typename T>
__global__ void attention_merge_kernel(float *out, float *lse, const T *part_out, const float *part_lse, int64_t tq,
                                       int64_t nh, int64_t hd) {
  const int lane = threadIdx.x & 31;
  const int64_t rows = tq * nh;
  const int64_t warps_total = (int64_t)gridDim.x * (blockDim.x >> 5);
  for (int64_t row = blockIdx.x * (int64_t)(blockDim.x >> 5) + (threadIdx.x >> 5); row < rows; row += warps_total) {
    const int64_t t = row / nh, h = row - t * nh;
    const int64_t li = h * tq + t;
    const float l1 = lse[li], l2 = part_lse[li];
    if (l2 == -INFINITY) continue; /* the part saw no key: nothing changes */
    float *o = out + row * hd;
    const T *p = part_out + row * hd;
    if (l1 == -INFINITY) { /* nothing so far: take the part (never read out, which may be anything) */
      for (int64_t d = lane; d < hd; d += 32) o[d] = ld_f32(p + d);
      __syncwarp(); /* every lane has read lse[li] before it changes */
      if (lane == 0) lse[li] = l2;
      continue;
    }
    const float mx = fmaxf(l1, l2);
    const float e1 = expf(l1 - mx), e2 = expf(l2 - mx); /* one of them is 1 */
    const float sum = e1 + e2;
    const float w1 = e1 / sum, w2 = e2 / sum;
    for (int64_t d = lane; d < hd; d += 32) o[d] = w1 * o[d] + w2 * ld_f32(p + d);
    __syncwarp(); /* every lane has read lse[li] before it changes */
    if (lane == 0) lse[li] = mx + log1pf(fminf(e1, e2));
  }
}

/* Checks shared by forward and backward, as the CPU twin (csrc/cpu/attention.c) makes them, plus the
 * limits of these kernels (head dim <= 256, heads within the grid). */
static df_status check_shape(const char *fn, int64_t tq, int64_t tk, int64_t nh, int64_t nkv, int64_t hd,
                             int64_t q_pos0, int64_t k_pos0, float scale, df_dtype dtype, int64_t *q_n, int64_t *k_n) {
  DF_CHECK(check_dim(fn, "tq", tq, 1));
  DF_CHECK(check_dim(fn, "tk", tk, 1));
  DF_CHECK(check_dim(fn, "nh", nh, 1));
  DF_CHECK(check_dim(fn, "nkv", nkv, 1));
  DF_CHECK(check_dim(fn, "hd", hd, 1));
  DF_CHECK(check_dim(fn, "q_pos0", q_pos0, 0));
  DF_CHECK(check_dim(fn, "k_pos0", k_pos0, 0));
  if (nh % nkv != 0)
    return df_fail(DF_ERR_INVALID, "%s: argument 'nkv' (%lld) must divide 'nh' (%lld)", fn, (long long)nkv,
                   (long long)nh);
  if (!isfinite(scale))
    return df_fail(DF_ERR_INVALID, "%s: argument 'scale' must be finite, got %g", fn, (double)scale);
  DF_CHECK(check_dtype(fn, "dtype", dtype));
  DF_CHECK(check_numel(fn, "q", q_n, tq, nh, hd));
  DF_CHECK(check_numel(fn, "k", k_n, tk, nkv, hd));
  if (hd > 256)
    return df_fail(DF_ERR_UNSUPPORTED, "%s: head dim %lld is larger than the 256 the CUDA kernels support", fn,
                   (long long)hd);
  if (nh > 65535)
    return df_fail(DF_ERR_UNSUPPORTED, "%s: %lld heads exceed the CUDA grid limit of 65535", fn, (long long)nh);
  if ((tq + 15) / 16 > 0x7fffffffLL || (tk + 15) / 16 > 0x7fffffffLL)
    return df_fail(DF_ERR_UNSUPPORTED, "%s: a block of %lld queries / %lld keys exceeds the CUDA grid", fn,
                   (long long)tq, (long long)tk);
  return DF_OK;
}

/* doc_starts covers n_docs int64 (device memory: its contents are the caller's promise, see distflash.h);
 * window >= 0. */
static df_status check_docs(const char *fn, const int64_t *doc_starts, int64_t n_docs, int64_t window) {
  DF_CHECK(check_dim(fn, "n_docs", n_docs, 0));
  DF_CHECK(check_dim(fn, "window", window, 0));
  if (n_docs > 0) DF_CHECK(check_elems(fn, "doc_starts", doc_starts, n_docs, sizeof(int64_t)));
  return DF_OK;
}

/* ---------------- the bf16 backends ---------------- */

typedef __nv_bfloat16 bf16;

/* The bf16 attention backends, asked in this order for every block pair without documents (a sliding
 * window included): the first that takes the pair runs it. Each says for itself which pairs it takes
 * (*handled = false for a setting, head dim, mask, window or alignment it does not take:
 * cudnn_attention.cu's dnn_applies, flash_attention.cu's flash_applies); the general kernels of this
 * file run what none takes (fp32, other head dims, documents). A new backend is one file and one row here. The user-facing choice
 * (--attention-kernel, df_attention_kernel_set) only switches cuDNN's row on or off. */
struct Bf16Backend {
  const char *name;
  df_status (*forward)(bool *handled, bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v,
                       int64_t tq, int64_t tk, int nh, int nkv, int hd, int64_t q_pos0, int64_t k_pos0,
                       int64_t window, float scale, cudaStream_t s);
  df_status (*backward)(bool *handled, float *dq, float *dk, float *dv, const bf16 *dout, const bf16 *q,
                        const bf16 *k, const bf16 *v, const bf16 *out, const float *lse, int64_t tq, int64_t tk,
                        int nh, int nkv, int hd, int64_t q_pos0, int64_t k_pos0, int64_t window, float scale,
                        cudaStream_t s);
};
static const Bf16Backend BF16_BACKENDS[] = {
    {"cudnn", cudnn_attention_forward, cudnn_attention_backward},
    {"flash", flash_attention_forward, flash_attention_backward},
};

/* The forward of both entries (fn names the entry in errors); documents never take the bf16 backends
 * (a window without documents may). */
static df_status attention_forward(const char *fn, void *out, float *lse, const void *q, const void *k, const void *v,
                                   int64_t tq, int64_t tk, int64_t nh, int64_t nkv, int64_t hd, int64_t q_pos0,
                                   int64_t k_pos0, float scale, df_dtype dtype, const int64_t *doc_starts,
                                   int64_t n_docs, int64_t window, void *stream) {
  int64_t q_n = 0, k_n = 0;
  DF_CHECK(check_shape(fn, tq, tk, nh, nkv, hd, q_pos0, k_pos0, scale, dtype, &q_n, &k_n));
  DF_CHECK(check_docs(fn, doc_starts, n_docs, window));
  const uint64_t es = dtype_bytes(dtype);
  DF_CHECK(check_elems(fn, "out", out, q_n, es));
  DF_CHECK(check_elems(fn, "lse", lse, nh * tq, sizeof(float)));
  DF_CHECK(check_elems(fn, "q", q, q_n, es));
  DF_CHECK(check_elems(fn, "k", k, k_n, es));
  DF_CHECK(check_elems(fn, "v", v, k_n, es));
  cudaStream_t s = df_stream(stream);
  if (dtype == DF_BF16 && n_docs == 0) {
    for (const Bf16Backend &b : BF16_BACKENDS) {
      bool handled = false;
      DF_CHECK(b.forward(&handled, (bf16 *)out, lse, (const bf16 *)q, (const bf16 *)k, (const bf16 *)v, tq, tk,
                         (int)nh, (int)nkv, (int)hd, q_pos0, k_pos0, window, scale, s));
      if (handled) return DF_OK;
    }
  }
  return general_attention_forward(dtype, out, lse, q, k, v, tq, tk, (int)nh, (int)nkv, (int)hd, q_pos0, k_pos0,
                                   scale, doc_starts, n_docs, window, s);
}

/* The backward of both entries (fn names the entry in errors); documents never take the bf16 backends
 * (a window without documents may). */
static df_status attention_backward(const char *fn, float *dq, float *dk, float *dv, const void *dout, const void *q,
                                    const void *k, const void *v, const void *out, const float *lse, int64_t tq,
                                    int64_t tk, int64_t nh, int64_t nkv, int64_t hd, int64_t q_pos0, int64_t k_pos0,
                                    float scale, df_dtype dtype, const int64_t *doc_starts, int64_t n_docs,
                                    int64_t window, void *stream) {
  int64_t q_n = 0, k_n = 0;
  DF_CHECK(check_shape(fn, tq, tk, nh, nkv, hd, q_pos0, k_pos0, scale, dtype, &q_n, &k_n));
  DF_CHECK(check_docs(fn, doc_starts, n_docs, window));
  const uint64_t es = dtype_bytes(dtype);
  DF_CHECK(check_elems(fn, "dq", dq, q_n, sizeof(float)));
  DF_CHECK(check_elems(fn, "dk", dk, k_n, sizeof(float)));
  DF_CHECK(check_elems(fn, "dv", dv, k_n, sizeof(float)));
  DF_CHECK(check_elems(fn, "dout", dout, q_n, es));
  DF_CHECK(check_elems(fn, "q", q, q_n, es));
  DF_CHECK(check_elems(fn, "k", k, k_n, es));
  DF_CHECK(check_elems(fn, "v", v, k_n, es));
  DF_CHECK(check_elems(fn, "out", out, q_n, es));
  DF_CHECK(check_elems(fn, "lse", lse, nh * tq, sizeof(float)));
  cudaStream_t s = df_stream(stream);
  if (dtype == DF_BF16 && n_docs == 0) {
    for (const Bf16Backend &b : BF16_BACKENDS) {
      bool handled = false;
      DF_CHECK(b.backward(&handled, dq, dk, dv, (const bf16 *)dout, (const bf16 *)q, (const bf16 *)k,
                          (const bf16 *)v, (const bf16 *)out, lse, tq, tk, (int)nh, (int)nkv, (int)hd, q_pos0, k_pos0,
                          window, scale, s));
      if (handled) return DF_OK;
    }
  }
  return general_attention_backward(dtype, dq, dk, dv, dout, q, k, v, out, lse, tq, tk, (int)nh, (int)nkv, (int)hd,
                                    q_pos0, k_pos0, scale, doc_starts, n_docs, window, s);
}

extern "C" {

df_status df_attention_forward(void *out, float *lse, const void *q, const void *k, const void *v, int64_t tq,
                               int64_t tk, int64_t nh, int64_t nkv, int64_t hd, int64_t q_pos0, int64_t k_pos0,
                               float scale, df_dtype dtype, void *stream) {
  return attention_forward("df_attention_forward", out, lse, q, k, v, tq, tk, nh, nkv, hd, q_pos0, k_pos0, scale,
                           dtype, NULL, 0, 0, stream);
}

df_status df_attention_forward_docs(void *out, float *lse, const void *q, const void *k, const void *v, int64_t tq,
                                    int64_t tk, int64_t nh, int64_t nkv, int64_t hd, int64_t q_pos0, int64_t k_pos0,
                                    float scale, df_dtype dtype, const int64_t *doc_starts, int64_t n_docs,
                                    int64_t window, void *stream) {
  return attention_forward("df_attention_forward_docs", out, lse, q, k, v, tq, tk, nh, nkv, hd, q_pos0, k_pos0,
                           scale, dtype, doc_starts, n_docs, window, stream);
}

df_status df_attention_backward(float *dq, float *dk, float *dv, const void *dout, const void *q, const void *k,
                                const void *v, const void *out, const float *lse, int64_t tq, int64_t tk, int64_t nh,
                                int64_t nkv, int64_t hd, int64_t q_pos0, int64_t k_pos0, float scale, df_dtype dtype,
                                void *stream) {
  return attention_backward("df_attention_backward", dq, dk, dv, dout, q, k, v, out, lse, tq, tk, nh, nkv, hd, q_pos0,
                            k_pos0, scale, dtype, NULL, 0, 0, stream);
}

df_status df_attention_backward_docs(float *dq, float *dk, float *dv, const void *dout, const void *q, const void *k,
                                     const void *v, const void *out, const float *lse, int64_t tq, int64_t tk,
                                     int64_t nh, int64_t nkv, int64_t hd, int64_t q_pos0, int64_t k_pos0, float scale,
                                     df_dtype dtype, const int64_t *doc_starts, int64_t n_docs, int64_t window,
                                     void *stream) {
  return attention_backward("df_attention_backward_docs", dq, dk, dv, dout, q, k, v, out, lse, tq, tk, nh, nkv, hd,
                            q_pos0, k_pos0, scale, dtype, doc_starts, n_docs, window, stream);
}

df_status df_attention_merge(float *out, float *lse, const void *part_out, const float *part_lse, int64_t tq,
                             int64_t nh, int64_t hd, df_dtype dtype, void *stream) {
  static const char *fn = "df_attention_merge";
  DF_CHECK(check_dim(fn, "tq", tq, 1));
  DF_CHECK(check_dim(fn, "nh", nh, 1));
  DF_CHECK(check_dim(fn, "hd", hd, 1));
  DF_CHECK(check_dtype(fn, "dtype", dtype));
  int64_t n = 0;
  DF_CHECK(check_numel(fn, "out", &n, tq, nh, hd));
  DF_CHECK(check_elems(fn, "out", out, n, sizeof(float)));
  DF_CHECK(check_elems(fn, "lse", lse, nh * tq, sizeof(float)));
  DF_CHECK(check_elems(fn, "part_out", part_out, n, dtype_bytes(dtype)));
  DF_CHECK(check_elems(fn, "part_lse", part_lse, nh * tq, sizeof(float)));
  const uint64_t threads = (uint64_t)tq * (uint64_t)nh * 32u;
  DF_DISPATCH_DTYPE(dtype, attention_merge_kernel<T><<<df_grid_for(threads, 256), 256, 0, df_stream(stream)>>>(
                               out, lse, (const T *)part_out, part_lse, tq, nh, hd));
  DF_CUDA_LAUNCHED();
  return DF_OK;
}

}  // extern "C"
