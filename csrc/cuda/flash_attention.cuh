/* Tensor-core flash attention for bf16 storage and head dims 64 and 128: the fast path under
 * df_attention_forward / df_attention_backward (csrc/cuda/attention.cu routes to it; everything else
 * runs the fp32 CUDA-core kernels there). Same contract as the ABI: q [Tq,nh,hd], k/v [Tk,nkv,hd],
 * out [Tq,nh,hd], lse [nh,Tq] (natural log), causal by global positions, GQA by h / (nh/nkv),
 * backward accumulates (+=) into fp32 dq, dk, dv. window > 0 adds Mistral's sliding window (p - s <
 * window; the _docs entries' rule without documents): only the Hopper kernels take it.
 *
 * Each entry returns DF_OK with *handled = false when the call is outside what these kernels take
 * (the caller then runs the general kernels), so the checks live in one place: flash_attention.cu.
 */
#pragma once
#include "kernel_utils.cuh"

df_status flash_attention_forward(bool *handled, __nv_bfloat16 *out, float *lse, const __nv_bfloat16 *q,
                                  const __nv_bfloat16 *k, const __nv_bfloat16 *v, int64_t tq, int64_t tk, int nh,
                                  int nkv, int hd, int64_t q_pos0, int64_t k_pos0, int64_t window, float scale,
                                  cudaStream_t s);

df_status flash_attention_backward(bool *handled, float *dq, float *dk, float *dv, const __nv_bfloat16 *dout,
                                   const __nv_bfloat16 *q, const __nv_bfloat16 *k, const __nv_bfloat16 *v,
                                   const __nv_bfloat16 *out, const float *lse, int64_t tq, int64_t tk, int nh,
                                   int nkv, int hd, int64_t q_pos0, int64_t k_pos0, int64_t window, float scale,
                                   cudaStream_t s);
