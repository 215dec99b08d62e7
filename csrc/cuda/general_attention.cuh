/* The general attention kernels: fp32 math on CUDA cores, any dtype, any even head dim up to 256,
 * documents and the sliding window. csrc/cuda/attention.cu runs them for every call the bf16
 * backends (cuDNN, the flash kernels) do not take. Same contract as the ABI (distflash.h):
 * q [Tq,nh,hd], k/v [Tk,nkv,hd], out [Tq,nh,hd], lse [nh,Tq], causal by global positions, GQA by
 * h / (nh/nkv); the backward adds into fp32 dq, dk, dv. n_docs == 0 and window == 0 is plain causal
 * (the instantiation without document code). The caller has checked the arguments. */
#pragma once
#include "kernel_utils.cuh"

df_status general_attention_forward(df_dtype dtype, void *out, float *lse, const void *q, const void *k,
                                    const void *v, int64_t tq, int64_t tk, int nh, int nkv, int hd, int64_t q_pos0,
                                    int64_t k_pos0, float scale, const int64_t *doc_starts, int64_t n_docs,
                                    int64_t window, cudaStream_t s);

df_status general_attention_backward(df_dtype dtype, float *dq, float *dk, float *dv, const void *dout,
                                     const void *q, const void *k, const void *v, const void *out, const float *lse,
                                     int64_t tq, int64_t tk, int nh, int nkv, int hd, int64_t q_pos0, int64_t k_pos0,
                                     float scale, const int64_t *doc_starts, int64_t n_docs, int64_t window,
                                     cudaStream_t s);
