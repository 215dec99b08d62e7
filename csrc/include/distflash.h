/*
 * distflash.h: the one C ABI of both native backends.
 *
 * libdistflash_cpu.so (plain C, built with cc) and libdistflash_cuda.so (built with nvcc) export
 * exactly these functions, so the TypeScript above them has one code path. Conventions:
 *   - Every function returns a df_status; DF_OK is 0. On failure, df_last_error() returns a
 *     message (thread-local) that names the function and the bad argument.
 *   - "Device" pointers come from df_malloc. On the CPU backend they are host memory. Every op
 *     checks that each pointer range it touches lies inside a live allocation, so a freed or
 *     foreign pointer is an error, not a crash.
 *   - Streams and events are opaque handles; on the CPU backend they exist but work is
 *     synchronous. A NULL stream means the default stream.
 *   - bf16 values are passed as uint16_t bit patterns.
 */
#ifndef DISTFLASH_H
#define DISTFLASH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DF_API __attribute__((visibility("default")))
#define DF_ABI_VERSION 1

typedef enum {
  DF_OK = 0,
  DF_ERR_INVALID = 1,     /* bad argument: size, pointer, shape */
  DF_ERR_OOM = 2,         /* allocation failed */
  DF_ERR_DEVICE = 3,      /* CUDA runtime or driver error */
  DF_ERR_UNSUPPORTED = 4, /* not available on this backend or build */
  DF_ERR_LIBRARY = 5,     /* a run-time library (cuBLASLt) could not be loaded */
  DF_ERR_INTERNAL = 6
} df_status;

typedef struct {
  char name[256];
  uint64_t total_bytes;
  uint64_t free_bytes;
  int32_t cc_major;
  int32_t cc_minor;
  int32_t multiprocessors;
  int32_t pci_bus_id;
} df_device_props;

/* ---- library and errors ---- */
DF_API const char *df_last_error(void);
DF_API const char *df_backend_name(void);  /* "cpu" or "cuda" */
DF_API const char *df_build_info(void);    /* compiler, flags, architectures, git commit */
DF_API int32_t df_abi_version(void);

/* ---- devices ---- */
DF_API df_status df_device_count(int32_t *count);
DF_API df_status df_device_props_get(int32_t device, df_device_props *props);
DF_API df_status df_set_device(int32_t device);
DF_API df_status df_driver_version(int32_t *version);  /* CUDA encoding 1000*major + 10*minor; 0 on CPU */
DF_API df_status df_runtime_version(int32_t *version);
DF_API df_status df_device_synchronize(void);
DF_API df_status df_mem_info(uint64_t *free_bytes, uint64_t *total_bytes);

/* ---- memory ---- */
DF_API df_status df_malloc(void **ptr, uint64_t bytes);
DF_API df_status df_free(void *ptr);
DF_API df_status df_malloc_host(void **ptr, uint64_t bytes); /* pinned on CUDA */
DF_API df_status df_free_host(void *ptr);
DF_API df_status df_memcpy_h2d(void *dst, const void *src, uint64_t bytes, void *stream);
DF_API df_status df_memcpy_d2h(void *dst, const void *src, uint64_t bytes, void *stream);
/* Like df_memcpy_d2h but returns once queued: dst must be page-locked (df_host_register) and stay
 * untouched until the stream has passed the copy. */
DF_API df_status df_memcpy_d2h_async(void *dst, const void *src, uint64_t bytes, void *stream);
DF_API df_status df_memcpy_d2d(void *dst, const void *src, uint64_t bytes, void *stream);
/* `rows` rows of `width` bytes, row i from src + i * src_pitch to dst + i * dst_pitch (device to
 * device): a slice of the columns of a row-major matrix, e.g. some heads of [T, heads, head_dim]. */
DF_API df_status df_memcpy_2d(void *dst, uint64_t dst_pitch, const void *src, uint64_t src_pitch,
                              uint64_t width, uint64_t rows, void *stream);
DF_API df_status df_memset(void *ptr, int32_t value, uint64_t bytes, void *stream);
/* Page-locks host memory (another library's allocation) so copies to and from it run at full PCIe
 * speed and asynchronously; the CPU backend accepts and ignores both calls. */
DF_API df_status df_host_register(void *host, uint64_t bytes);
DF_API df_status df_host_unregister(void *host);
DF_API df_status df_live_allocations(uint64_t *count, uint64_t *bytes);

/* ---- streams and events ---- */
DF_API df_status df_stream_create(void **stream);
DF_API df_status df_stream_destroy(void *stream);
DF_API df_status df_stream_synchronize(void *stream);
DF_API df_status df_event_create(void **event);
DF_API df_status df_event_destroy(void *event);
DF_API df_status df_event_record(void *event, void *stream);
DF_API df_status df_stream_wait_event(void *stream, void *event);
DF_API df_status df_event_synchronize(void *event);
DF_API df_status df_event_elapsed_ms(float *ms, void *start, void *end);

/* ---- first ops ---- */
DF_API df_status df_cast_f32_to_bf16(uint16_t *out, const float *in, uint64_t n, void *stream);
DF_API df_status df_cast_bf16_to_f32(float *out, const uint16_t *in, uint64_t n, void *stream);
/* y = a * x + y, fp32 */
DF_API df_status df_axpy_f32(float *y, const float *x, float a, uint64_t n, void *stream);
/* out[i] = mean + std * N(0,1), the normal drawn from (seed, index0 + i) alone (Box-Muller on two
 * 32-bit uniforms of one splitmix64 hash), so a slice of a tensor is the same whichever rank draws it */
DF_API df_status df_fill_normal_f32(float *out, uint64_t n, uint64_t seed, uint64_t index0, float mean,
                                    float std, void *stream);


/* ==== Llama ops ====
 * Layout: every tensor is row-major and contiguous. T = tokens, H = hidden size, nh = query heads,
 * nkv = key/value heads, hd = head dim. Activations use `dtype` (DF_F32 or DF_BF16); statistics
 * (rstd, lse), gradients of parameters and attention gradients are fp32 unless stated.
 * "+=" marks outputs that are accumulated into (the caller zeroes them first); all other outputs
 * are overwritten. Arithmetic is fp32 inside every kernel whatever the storage type.
 */
typedef enum { DF_F32 = 0, DF_BF16 = 1 } df_dtype;

/* C[M,N] = alpha * op(A) @ op(B) + beta * C. op(A) is [M,K]: A is stored [M,K], or [K,M] when
 * trans_a. op(B) is [K,N]: B is stored [K,N], or [N,K] when trans_b. A and B share ab_dtype; C has
 * c_dtype. Leading dimensions are the row strides in elements. fp32 accumulation. Linear layer
 * y = x W^T with W [out,in]: gemm(0, 1, T, out, in, 1, x, in, W, in, 0, y, out). */
DF_API df_status df_gemm(int32_t trans_a, int32_t trans_b, int64_t m, int64_t n, int64_t k,
                         float alpha, const void *a, int64_t lda, const void *b, int64_t ldb,
                         float beta, void *c, int64_t ldc, df_dtype ab_dtype, df_dtype c_dtype,
                         void *stream);

/* out[t,:] = table[ids[t],:]. Ids must lie in [0, V): checked, an error otherwise. */
DF_API df_status df_embedding_forward(void *out, const void *table, const int32_t *ids, int64_t t,
                                      int64_t v, int64_t h, df_dtype dtype, void *stream);
/* dtable[ids[t],:] += dout[t,:]  (dtable fp32) */
DF_API df_status df_embedding_backward(float *dtable, const void *dout, const int32_t *ids,
                                       int64_t t, int64_t v, int64_t h, df_dtype dtype,
                                       void *stream);

/* out = x * rstd * w, rstd[t] = 1/sqrt(mean(x[t,:]^2) + eps) (rstd saved for backward) */
DF_API df_status df_rmsnorm_forward(void *out, float *rstd, const void *x, const void *w,
                                    int64_t t, int64_t h, float eps, df_dtype dtype, void *stream);
/* dx += d/dx, dw += d/dw (dw fp32). dx may not alias dout. */
DF_API df_status df_rmsnorm_backward(void *dx, float *dw, const void *dout, const void *x,
                                     const void *w, const float *rstd, int64_t t, int64_t h,
                                     df_dtype dtype, void *stream);

/* In place on x [T, heads, hd]: rotate pairs (i, i + hd/2) by angle pos[t] * inv_freq[i]
 * (Hugging Face's rotate_half convention). inverse != 0 rotates by -angle: the backward. */
DF_API df_status df_rope(void *x, const int32_t *pos, const float *inv_freq, int64_t t,
                         int64_t heads, int64_t hd, int32_t inverse, df_dtype dtype, void *stream);

/* Causal softmax attention of one block pair. q [Tq,nh,hd], k and v [Tk,nkv,hd], out [Tq,nh,hd],
 * lse [nh,Tq] (natural log of the sum of exp(scale * q.k) over visible keys). Query i sees key j
 * iff k_pos0 + j <= q_pos0 + i (global positions). Query head h reads kv head h / (nh/nkv).
 * A query that sees no key gets out = 0 and lse = -inf. */
DF_API df_status df_attention_forward(void *out, float *lse, const void *q, const void *k,
                                      const void *v, int64_t tq, int64_t tk, int64_t nh,
                                      int64_t nkv, int64_t hd, int64_t q_pos0, int64_t k_pos0,
                                      float scale, df_dtype dtype, void *stream);
/* Backward of the same block pair given the FINAL out and lse of the queries (merged over all key
 * blocks): dq += , dk += , dv += (all fp32). */
DF_API df_status df_attention_backward(float *dq, float *dk, float *dv, const void *dout,
                                       const void *q, const void *k, const void *v,
                                       const void *out, const float *lse, int64_t tq, int64_t tk,
                                       int64_t nh, int64_t nkv, int64_t hd, int64_t q_pos0,
                                       int64_t k_pos0, float scale, df_dtype dtype, void *stream);
/* Document masking: the same block pair when the sequence packs several documents that must not
 * see each other. doc_starts holds the global positions where documents begin (n_docs entries,
 * sorted strictly ascending, the first one 0: the boundaries of the whole sequence, the same array
 * for every block pair). Query i (p = q_pos0 + i) sees key j (s = k_pos0 + j) iff
 * doc_start(p) <= s <= p, doc_start(p) being the largest entry <= p. n_docs = 0 (doc_starts may
 * then be NULL) is plain causal attention, bit for bit the result of df_attention_forward/backward.
 * doc_starts is DEVICE memory (df_malloc; host memory on the CPU backend), uploaded once per batch.
 * The CPU backend checks its contents; CUDA cannot without a copy and trusts them. Everything else
 * is as above: a query that sees no key gets out = 0 and lse = -inf, and the backward takes the
 * FINAL out and lse and adds into the fp32 dq, dk, dv.
 * window (Mistral's sliding window) tightens the rule: window > 0 adds p - s < window (Hugging Face
 * transformers' sliding_window_overlay: kv_idx > q_idx - sliding_window, on top of causal), so query
 * p sees s iff max(doc_start(p), p - window + 1) <= s <= p; window = 0 is no window. It applies with
 * or without documents (n_docs = 0 and window > 0 is a windowed causal pair).
 * CUDA: with documents or a window the fp32 CUDA-core kernels run for every dtype and head dim
 * (the bf16 tensor-core path masks neither yet). The document path passed its CUDA tests on an
 * H100; the window in it is compiled but has NEVER RUN on a GPU (none was available when it was
 * written): tests/attention_docs.test.ts checks it when one is lent. */
DF_API df_status df_attention_forward_docs(void *out, float *lse, const void *q, const void *k,
                                           const void *v, int64_t tq, int64_t tk, int64_t nh,
                                           int64_t nkv, int64_t hd, int64_t q_pos0, int64_t k_pos0,
                                           float scale, df_dtype dtype, const int64_t *doc_starts,
                                           int64_t n_docs, int64_t window, void *stream);
DF_API df_status df_attention_backward_docs(float *dq, float *dk, float *dv, const void *dout,
                                            const void *q, const void *k, const void *v,
                                            const void *out, const float *lse, int64_t tq,
                                            int64_t tk, int64_t nh, int64_t nkv, int64_t hd,
                                            int64_t q_pos0, int64_t k_pos0, float scale,
                                            df_dtype dtype, const int64_t *doc_starts,
                                            int64_t n_docs, int64_t window, void *stream);
/* Which kernels run df_attention_forward / df_attention_backward (not the _docs entries) on the
 * CUDA backend, process-wide: DF_ATTENTION_AUTO (default) runs cuDNN's fused attention where libcudnn
 * 9 loads and takes the call (bf16, hd 64 or 128, a block pair whose mask it can express), else the
 * native kernels; DF_ATTENTION_NATIVE never uses cuDNN; DF_ATTENTION_CUDNN is AUTO that insists
 * cuDNN loads: setting it fails with DF_ERR_LIBRARY (why it did not load) or, on the CPU backend,
 * DF_ERR_UNSUPPORTED. A call cuDNN cannot take still runs the native kernels. The names and their
 * order are src/runtime/attention_kernel.ts's ATTENTION_KERNELS. */
typedef enum { DF_ATTENTION_AUTO = 0, DF_ATTENTION_NATIVE = 1, DF_ATTENTION_CUDNN = 2 } df_attention_kernel;
DF_API df_status df_attention_kernel_set(int32_t kernel);
DF_API int32_t df_attention_kernel_get(void);
/* Opens libcudnn once per process (the search order is in README.md: DISTFLASH_CUDNN_PATH, the
 * dynamic loader's libcudnn.so.9, the nvidia/cudnn/lib folder of Python environments). DF_OK with
 * its version (cudnnGetVersion: major*10000 + minor*100 + patch) and the file opened (path, up to
 * path_bytes with the NUL; path may be NULL), or DF_ERR_LIBRARY saying where it looked and why
 * each place failed. Both backends export it (the CPU backend only looks: the loader is tested there). */
DF_API df_status df_cudnn_probe(int64_t *version, char *path, uint64_t path_bytes);
/* Merge a partial result into a running one by log-sum-exp, in fp32:
 * out [Tq,nh,hd] f32 and lse [nh,Tq] are updated with part_out (dtype) and part_lse. */
DF_API df_status df_attention_merge(float *out, float *lse, const void *part_out,
                                    const float *part_lse, int64_t tq, int64_t nh, int64_t hd,
                                    df_dtype dtype, void *stream);

/* out = silu(gate) * up, elementwise over n */
DF_API df_status df_swiglu_forward(void *out, const void *gate, const void *up, int64_t n,
                                   df_dtype dtype, void *stream);
/* dgate = dout * up * silu'(gate), dup = dout * silu(gate) (overwritten) */
DF_API df_status df_swiglu_backward(void *dgate, void *dup, const void *dout, const void *gate,
                                    const void *up, int64_t n, df_dtype dtype, void *stream);

/* out = a + b, elementwise (out may alias a or b) */
DF_API df_status df_add(void *out, const void *a, const void *b, int64_t n, df_dtype dtype,
                        void *stream);
/* out = convert(in): any of f32/bf16 to any (a copy when equal) */
DF_API df_status df_convert(void *out, df_dtype out_dtype, const void *in, df_dtype in_dtype,
                            int64_t n, void *stream);

/* Cross-entropy over vocabulary chunks, so no [T, V] logits tensor ever exists.
 * Per chunk of logits [T, vc] (fp32) covering vocabulary ids [v0, v0 + vc):
 *   df_ce_chunk_forward updates the running max m[t], running sum s[t] (of exp(logit - m)) and
 *   picks target[t] = logit[labels[t]] when the label falls in the chunk. Start with m = -inf,
 *   s = 0. Then loss[t] = m + log(s) - target (0 where labels[t] < 0: ignored), and lse = m + log s.
 *   df_ce_finalize computes loss [T] and lse [T] from m, s, target.
 *   df_ce_chunk_backward overwrites the chunk in place with dlogits =
 *   scale * (softmax(logits) - onehot(labels)) (0 rows for ignored labels). */
DF_API df_status df_ce_chunk_forward(float *m, float *s, float *target, const float *logits,
                                     const int32_t *labels, int64_t t, int64_t vc, int64_t v0,
                                     void *stream);
DF_API df_status df_ce_finalize(float *loss, float *lse, const float *m, const float *s,
                                const float *target, const int32_t *labels, int64_t t,
                                void *stream);
DF_API df_status df_ce_chunk_backward(float *logits, const float *lse, const int32_t *labels,
                                      int64_t t, int64_t vc, int64_t v0, float scale,
                                      void *stream);

/* sum += sum(x^2) over n fp32 values (sum is one fp32 on the device) */
DF_API df_status df_sum_squares(float *sum, const float *x, int64_t n, void *stream);
/* sum += sum(x) over n fp32 values */
DF_API df_status df_sum(float *sum, const float *x, int64_t n, void *stream);

/* AdamW on fp32 master weights, decoupled weight decay as torch.optim.AdamW:
 *   g = grad * grad_scale; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 *   param -= lr * (weight_decay * param + (m / bc1) / (sqrt(v / bc2) + eps))
 * with bc1 = 1 - b1^step, bc2 = 1 - b2^step. If copy is not NULL, copy = param in copy_dtype. */
DF_API df_status df_adamw(float *param, const float *grad, float *m, float *v, int64_t n, float lr,
                          float beta1, float beta2, float eps, float weight_decay, float bc1,
                          float bc2, float grad_scale, void *copy, df_dtype copy_dtype,
                          void *stream);

#ifdef __cplusplus
}
#endif
#endif /* DISTFLASH_H */
