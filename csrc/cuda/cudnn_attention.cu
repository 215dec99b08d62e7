/* cuDNN fused flash attention through the cuDNN 9 backend (graph) API; see cudnn_attention.cuh.
 *
 * The pieces: the library and its handles (cudnn_library.cu), the descriptor builder
 * (cudnn_graph.cuh), the attention graphs and their mask rule (cudnn_attention_graph.cu), the plan
 * cache (cudnn_attention_plan.cu). This file holds the two entries: whether cuDNN takes a call, the
 * scratch, binding the tensors and enqueueing.
 *
 * cuDNN writes dQ, dK, dV in bf16 into scratch; a small kernel adds them into distflash's fp32
 * accumulators. Workspace and scratch: one growing buffer per (device, stream), like the flash
 * backward's scratch. dnn_mutex (cudnn_library.cuh) guards all of it and is held through
 * cudnnBackendExecute, which only enqueues work. */
#include <stdio.h>
#include <string.h>

#include <initializer_list>
#include <vector>

#include "cudnn_attention.cuh"
#include "cudnn_attention_plan.cuh"
#include "stream_scratch.cuh"

typedef __nv_bfloat16 bf16;

/* ---------------- scratch ---------------- */

/* Workspace and the bf16 gradients (stream_scratch.cuh); a stream beyond its table is not cuDNN's. */
static StreamScratch dnn_scratch;

static uint64_t align256(uint64_t n) { return (n + 255) & ~255ull; }

/* ---------------- the shared front half of both entries ---------------- */

static bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

/* Whether cuDNN is to be asked at all, and the plan key; caller holds dnn_mutex. */
static bool dnn_applies(AttnKey *key, int backward, int64_t tq, int64_t tk, int nh, int nkv, int hd, int64_t q_pos0,
                        int64_t k_pos0, int64_t window, float scale, std::initializer_list<const void *> ptrs) {
  if (df_attention_kernel_get() == DF_ATTENTION_NATIVE) return false;
  if (window > 0) return false; /* the graphs mask causally only */
  if (hd != 64 && hd != 128) return false;
  if (!(scale > 0.0f) || tq > INT32_MAX || tk > INT32_MAX) return false;
  for (const void *p : ptrs)
    if (!aligned16(p)) return false;
  const int64_t delta = q_pos0 - k_pos0;
  if (delta < 0) return false; /* leading queries see no key: the native kernels leave them at 0 / -inf */
  if (!dnn_ready()) return false;
  /* Before 9.16 cuDNN's own frontend pads kv lengths that are not multiples of 128 with a padding
   * mask for correctness; distflash does not build that variant, so those shapes stay native. */
  if (dnn_version < 91600 && tk % 128 != 0) return false;
  memset(key, 0, sizeof *key);
  if (cudaGetDevice(&key->device) != cudaSuccess) return false;
  key->backward = backward;
  key->masked = delta < tk - 1;
  key->tq = tq;
  key->tk = tk;
  key->nh = nh;
  key->nkv = nkv;
  key->hd = hd;
  key->delta = key->masked ? delta : 0;
  return key->device >= 0 && key->device < DNN_MAX_DEVICES;
}

/* Binds the uids to pointers (device tensors, or host scalars for by-value ones) and enqueues. */
static df_status execute(dnn_handle handle, AttnPlan *plan, const int64_t *uids, void *const *ptrs, int n,
                         void *workspace) {
  Graph vp_owner;
  dnn_desc vp = vp_owner.create(DNN_VARIANT_PACK_DESCRIPTOR, "variant pack");
  vp_owner.set(vp, DNN_ATTR_VARIANT_PACK_UNIQUE_IDS, DNN_TYPE_INT64, n, uids, "variant pack uids");
  vp_owner.set(vp, DNN_ATTR_VARIANT_PACK_DATA_POINTERS, DNN_TYPE_VOID_PTR, n, ptrs, "variant pack pointers");
  vp_owner.set(vp, DNN_ATTR_VARIANT_PACK_WORKSPACE, DNN_TYPE_VOID_PTR, 1, &workspace, "variant pack workspace");
  vp_owner.finalize(vp, "variant pack finalize");
  if (!vp_owner.failed()) vp_owner.check(dnn.backend_execute(handle, plan->plan, vp), "cudnnBackendExecute");
  if (vp_owner.failed()) return df_fail(DF_ERR_LIBRARY, "cuDNN attention: %s", vp_owner.error);
  return DF_OK;
}

/* acc[i] += grad[i] (bf16 -> fp32), n elements. */
__global__ void add_bf16_into_f32(float *acc, const bf16 *grad, int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    acc[i] += __bfloat162float(grad[i]);
}

static df_status add_into(float *acc, const bf16 *grad, int64_t n, cudaStream_t s) {
  add_bf16_into_f32<<<df_grid_for((uint64_t)n, 256), 256, 0, s>>>(acc, grad, n);
  DF_CUDA_LAUNCHED();
  return DF_OK;
}

df_status cudnn_attention_forward(bool *handled, bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v,
                                  int64_t tq, int64_t tk, int nh, int nkv, int hd, int64_t q_pos0, int64_t k_pos0,
                                  int64_t window, float scale, cudaStream_t s) {
  *handled = false;
  std::lock_guard<std::mutex> guard(dnn_mutex);
  AttnKey key;
  if (!dnn_applies(&key, 0, tq, tk, nh, nkv, hd, q_pos0, k_pos0, window, scale, {out, q, k, v, lse})) return DF_OK;
  dnn_handle handle = NULL;
  DF_CHECK(dnn_handle_for(key.device, s, &handle));
  AttnPlan *plan = dnn_plan_for(key, handle);
  if (plan->unsupported) return DF_OK;
  void *ws = NULL;
  DF_CHECK(dnn_scratch.get(key.device, s, align256((uint64_t)plan->workspace) + 256, &ws));
  if (!ws) return DF_OK; /* no scratch slot for this stream */
  float scale_value = scale, neg_inf = dnn_version < 91000 ? -3.402823466e38f : -INFINITY;
  int32_t delta = (int32_t)key.delta;
  const int64_t uids[] = {U_Q, U_K, U_V, U_O, U_STATS, U_SCALE, U_NEG_INF, U_DELTA};
  void *const ptrs[] = {(void *)q, (void *)k, (void *)v, out, lse, &scale_value, &neg_inf, &delta};
  /* uids of scalars the graph does not hold (the unmasked or delta = 0 graphs) are left out */
  const int n = !key.masked ? 6 : key.delta == 0 ? 7 : 8;
  const int64_t uids_unmasked[] = {U_Q, U_K, U_V, U_O, U_STATS, U_SCALE};
  DF_CHECK(execute(handle, plan, key.masked ? uids : uids_unmasked, ptrs, n, ws));
  *handled = true;
  return DF_OK;
}

df_status cudnn_attention_backward(bool *handled, float *dq, float *dk, float *dv, const bf16 *dout, const bf16 *q,
                                   const bf16 *k, const bf16 *v, const bf16 *out, const float *lse, int64_t tq,
                                   int64_t tk, int nh, int nkv, int hd, int64_t q_pos0, int64_t k_pos0, int64_t window,
                                   float scale, cudaStream_t s) {
  *handled = false;
  std::lock_guard<std::mutex> guard(dnn_mutex);
  AttnKey key;
  if (!dnn_applies(&key, 1, tq, tk, nh, nkv, hd, q_pos0, k_pos0, window, scale,
                   {dq, dk, dv, dout, q, k, v, out, lse}))
    return DF_OK;
  dnn_handle handle = NULL;
  DF_CHECK(dnn_handle_for(key.device, s, &handle));
  AttnPlan *plan = dnn_plan_for(key, handle);
  if (plan->unsupported) return DF_OK;
  /* scratch: workspace | dq, dk, dv in bf16 | Dsum [nh, tq] | dQ accumulator [nh, tq, hd] fp32.
   * The memory plan counts the same (cudnnScratchBytes in src/runtime/attention_kernel.ts, which
   * plans without this library): change both together. */
  const uint64_t q_n = (uint64_t)tq * nh * hd, kv_n = (uint64_t)tk * nkv * hd;
  const uint64_t off_dq = align256((uint64_t)plan->workspace), off_dk = off_dq + align256(2 * q_n),
                 off_dv = off_dk + align256(2 * kv_n), off_dsum = off_dv + align256(2 * kv_n),
                 off_acc = off_dsum + align256(4ull * nh * tq), total = off_acc + align256(4 * q_n);
  void *base = NULL;
  DF_CHECK(dnn_scratch.get(key.device, s, total, &base));
  if (!base) return DF_OK;
  char *b = static_cast<char *>(base);
  bf16 *dq_s = (bf16 *)(b + off_dq), *dk_s = (bf16 *)(b + off_dk), *dv_s = (bf16 *)(b + off_dv);
  float *dsum = (float *)(b + off_dsum), *acc = (float *)(b + off_acc);
  /* cuDNN before 9.6 expects the dQ accumulator zeroed by the caller (its frontend does so). */
  DF_CUDA(cudaMemsetAsync(acc, 0, 4 * q_n, s));
  float scale_value = scale, neg_inf = dnn_version < 91000 ? -3.402823466e38f : -INFINITY, one = 1.0f;
  int32_t delta = (int32_t)key.delta;
  std::vector<int64_t> uids = {U_Q, U_K, U_V, U_O, U_DOUT, U_STATS, U_DQ, U_DK, U_DV, U_DSUM, U_DQ_ACC, U_SCALE, U_ONE};
  std::vector<void *> ptrs = {(void *)q, (void *)k, (void *)v, (void *)out, (void *)dout, (void *)lse, dq_s, dk_s,
                              dv_s, dsum, acc, &scale_value, &one};
  if (key.masked) {
    uids.push_back(U_NEG_INF);
    ptrs.push_back(&neg_inf);
    if (key.delta != 0) {
      uids.push_back(U_DELTA);
      ptrs.push_back(&delta);
    }
  }
  DF_CHECK(execute(handle, plan, uids.data(), ptrs.data(), (int)uids.size(), b));
  DF_CHECK(add_into(dq, dq_s, (int64_t)q_n, s));
  DF_CHECK(add_into(dk, dk_s, (int64_t)kv_n, s));
  DF_CHECK(add_into(dv, dv_s, (int64_t)kv_n, s));
  *handled = true;
  return DF_OK;
}
