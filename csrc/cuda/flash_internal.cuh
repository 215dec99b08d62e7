/* What the flash-attention kernels share (csrc/cuda/flash_fwd.cuh, flash_bwd.cuh: the mma.sync
 * kernels for sm_80 and sm_90a, launched by flash_attention.cu; csrc/cuda/flash_fwd_sm90.cu,
 * flash_bwd_sm90.cu: the Hopper kernels): the PTX wrappers, the parameter structs and the per-head
 * rows of the backward. Internal to those files. */
#pragma once
#ifdef FLASH_EMULATE
#include "../emu/sm90_emu.h" /* the host emulation that runs the Hopper kernels in CPU tests */
#else
#include "kernel_utils.cuh"
#endif

namespace flash {

typedef __nv_bfloat16 bf16;

#define FLASH_LOG2E 1.4426950408889634f
#define FLASH_LN2 0.6931471805599453f

/* ---------------- PTX wrappers (the host emulation has its own) ---------------- */
#ifndef FLASH_EMULATE

__device__ __forceinline__ uint32_t smem_u32(const void *p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

/* 16-byte cp.async; when !valid nothing is read and the 16 bytes are zero-filled. */
__device__ __forceinline__ void cp_async16(uint32_t dst, const void *src, bool valid) {
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t addr, uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

/* d += a b for one m16n8k16 tile, bf16 operands, fp32 accumulators. */
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Two fp32 values to a bf16 pair (lo in the low half), round to nearest even. */
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  uint32_t r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ void st_shared_u32(uint32_t addr, uint32_t v) {
  asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
}
__device__ __forceinline__ uint4 ld_shared_u128(uint32_t addr) {
  uint4 v;
  asm volatile("ld.shared.v4.b32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(addr)
               : "memory");
  return v;
}
__device__ __forceinline__ float ld_shared_f32(uint32_t addr) {
  float v;
  asm volatile("ld.shared.f32 %0, [%1];\n" : "=f"(v) : "r"(addr) : "memory");
  return v;
}

/* dst[0..1] += (a, b) in global memory (fp32). */
__device__ __forceinline__ void atomic_add2(float *dst, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float2 *>(dst), make_float2(a, b));
#else
  atomicAdd(dst, a);
  atomicAdd(dst + 1, b);
#endif
}

/* dst[0..3] += v in global memory (fp32; dst 16-byte aligned). */
__device__ __forceinline__ void atomic_add4(float *dst, float4 v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float4 *>(dst), v);
#else
  atomicAdd(dst, v.x);
  atomicAdd(dst + 1, v.y);
  atomicAdd(dst + 2, v.z);
  atomicAdd(dst + 3, v.w);
#endif
}

#endif  // FLASH_EMULATE

static __device__ __forceinline__ int clamp_int(int64_t v) {
  return (int)(v < -(1 << 30) ? -(1 << 30) : v > (1 << 30) ? (1 << 30) : v);
}

struct FwdParams {
  const bf16 *q, *k, *v;
  bf16 *out;
  float *lse;
  int64_t tq, tk, q_stride, kv_stride;
  int64_t delta;  /* q_pos0 - k_pos0: query i sees key j iff j - i <= delta */
  int64_t window; /* sliding window (0: none), the Hopper kernels only: see TileMask */
  int group, n_qtiles;
  float scale_log2;
};

struct BwdParams {
  const bf16 *q, *k, *v, *dout;
  float *dq, *dk, *dv;
  const float *L, *D; /* [nh][tq_pad] */
  int64_t tq, tk, q_stride, kv_stride, tq_pad;
  int64_t delta;
  int64_t window; /* as in FwdParams */
  int group, n_ktiles;
  float scale, scale_log2;
};

/* The rows one backward block reads for query head h, in every backward kernel (flash_bwd.cuh,
 * flash_bwd_sm90.cu): the Q and dO columns of the head, K and V of its kv head kvh = h / group (GQA),
 * and the head's L and D rows. */
template <int HD>
struct BwdHead {
  const bf16 *q, *dout, *k, *v;
  const float *L, *D;
  __device__ __forceinline__ BwdHead(const BwdParams &p, int h, int kvh)
      : q(p.q + (int64_t)h * HD),
        dout(p.dout + (int64_t)h * HD),
        k(p.k + (int64_t)kvh * HD),
        v(p.v + (int64_t)kvh * HD),
        L(p.L + (int64_t)h * p.tq_pad),
        D(p.D + (int64_t)h * p.tq_pad) {}
  /* cp.async of the L and D values of query rows [i0, i0 + BQ) to buffer buf of the double-buffered
   * rows at sL and sD, 16 bytes a thread: threads [0, BQ/4) copy L, the next BQ/4 copy D (the rows
   * are padded to tq_pad, so always valid). */
  template <int BQ>
  __device__ __forceinline__ void load_l_d(uint32_t sL, uint32_t sD, int buf, int64_t i0, int tid) const {
    if (tid < BQ / 4) cp_async16(sL + buf * BQ * 4 + tid * 16, L + i0 + tid * 4, true);
    else if (tid < BQ / 2) cp_async16(sD + buf * BQ * 4 + (tid - BQ / 4) * 16, D + i0 + (tid - BQ / 4) * 4, true);
  }
};

/* The keys [0, return value) that some query of the tile [i0, i0 + BQ) sees (<= 0: none). */
template <int BQ>
__device__ __forceinline__ int64_t fwd_keys_seen(const FwdParams &p, int64_t i0) {
  const int64_t i_last = (i0 + BQ < p.tq ? i0 + BQ : p.tq) - 1;
  const int64_t j_end = i_last + p.delta + 1;
  return j_end < p.tk ? j_end : p.tk;
}

/* The mask of a block pair, in one place for the kernels that take a window (the Hopper kernels;
 * the mma.sync kernels apply the causal part inline and take no window). Query i sees key j iff
 *   j < tk,  j - i <= delta  (causal: s <= p in global positions, delta = q_pos0 - k_pos0),
 *   and with a window W > 0:  i + delta - j < W  (p - s < W, Mistral's sliding window; the rule's
 *   owner is src/model/documents.ts).
 * In tile-local terms (ii, jj from the tiles' first query i0 and key j0) that is
 *   jj < jmax  and  lo <= jj - ii <= lim. */
struct TileMask {
  int lim, lo, jmax;
  bool partial; /* some (query, key) of the BQ x BK tile pair is masked */
  __device__ __forceinline__ bool visible(int ii, int jj) const { return jj < jmax && jj - ii <= lim && jj - ii >= lo; }
};

template <int BQ, int BK>
__device__ __forceinline__ TileMask tile_mask(int64_t delta, int64_t window, int64_t tk, int64_t i0, int64_t j0) {
  TileMask m;
  m.lim = clamp_int(delta - (j0 - i0));
  m.lo = window > 0 ? clamp_int(delta - (j0 - i0) - window + 1) : -(1 << 30);
  m.jmax = clamp_int(tk - j0);
  m.partial = j0 + BK - 1 - i0 > delta || j0 + BK > tk || (window > 0 && i0 + BQ - 1 + delta - j0 >= window);
  return m;
}

/* The first key some query of the tile [i0, ...) sees under the window (0 without one). */
__device__ __forceinline__ int64_t first_key_seen(int64_t delta, int64_t window, int64_t i0) {
  const int64_t j = i0 + delta - window + 1;
  return window > 0 && j > 0 ? j : 0;
}

/* The queries [.., return value) that some key of the tile ending at j_last (its last real key)
 * can be seen by under the window (tq without one). */
__device__ __forceinline__ int64_t query_end_seen(int64_t delta, int64_t window, int64_t tq, int64_t j_last) {
  if (window <= 0) return tq;
  const int64_t i = j_last + window - delta;
  return i < tq ? i : tq;
}

/* A query tile that sees no key: out = 0, lse = -inf. */
template <int BQ, int HD, int THREADS>
__device__ __forceinline__ void fwd_store_empty(const FwdParams &p, int h, int64_t i0) {
  for (int idx = threadIdx.x; idx < BQ * (HD / 8); idx += THREADS) {
    const int64_t i = i0 + idx / (HD / 8);
    if (i < p.tq)
      *reinterpret_cast<uint4 *>(p.out + i * p.q_stride + (int64_t)h * HD + (idx % (HD / 8)) * 8) =
          make_uint4(0, 0, 0, 0);
  }
  for (int r = threadIdx.x; r < BQ; r += THREADS)
    if (i0 + r < p.tq) p.lse[(int64_t)h * p.tq + i0 + r] = -INFINITY;
}

/* The Hopper kernels (wgmma, head dims 64 and 128): sm90_available() is false when this build or
 * device cannot run them; overlap selects the forward's intra-warpgroup pipelined loop; the
 * backward runs after flash_bwd_prep_kernel has filled p.L and p.D. */
#ifndef FLASH_EMULATE
bool sm90_available();
df_status launch_fwd_sm90(const FwdParams &p, int nh, int hd, bool overlap, cudaStream_t s);
df_status launch_bwd_sm90(const BwdParams &p, int nh, int hd, cudaStream_t s);
#endif

}  // namespace flash
