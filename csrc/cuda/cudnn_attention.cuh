/* cuDNN's fused flash attention (graph API, libcudnn opened at run time) under df_attention_forward /
 * df_attention_backward: csrc/cuda/attention.cu asks it first for bf16 calls without documents.
 * Same contract as the ABI (q [Tq,nh,hd], k/v [Tk,nkv,hd], lse [nh,Tq] natural log, causal by
 * global positions, GQA by h / (nh/nkv), the backward adds into fp32 dq, dk, dv). Each entry returns
 * DF_OK with *handled = false when the call is not cuDNN's to take (native kernels chosen, cuDNN not
 * loaded, a shape or mask it cannot express, a graph it would not build): the caller then runs the
 * native kernels. A sliding window (window > 0) is never cuDNN's here. Tested against the fp32 kernels on an H100 (tests/cudnn_gpu.test.ts, 2026-12-07). */
#pragma once
#include "kernel_utils.cuh"

df_status cudnn_attention_forward(bool *handled, __nv_bfloat16 *out, float *lse, const __nv_bfloat16 *q,
                                  const __nv_bfloat16 *k, const __nv_bfloat16 *v, int64_t tq, int64_t tk, int nh,
                                  int nkv, int hd, int64_t q_pos0, int64_t k_pos0, int64_t window, float scale,
                                  cudaStream_t s);

df_status cudnn_attention_backward(bool *handled, float *dq, float *dk, float *dv, const __nv_bfloat16 *dout,
                                   const __nv_bfloat16 *q, const __nv_bfloat16 *k, const __nv_bfloat16 *v,
                                   const __nv_bfloat16 *out, const float *lse, int64_t tq, int64_t tk, int nh,
                                   int nkv, int hd, int64_t q_pos0, int64_t k_pos0, int64_t window, float scale,
                                   cudaStream_t s);
