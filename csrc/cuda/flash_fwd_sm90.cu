/* Flash attention forward for Hopper (sm_90a): wgmma from shared memory, head dims 64 and 128, bf16.
 *
 * The design of FlashAttention-3 (Shah et al., 2024) in its simplest form, written for this ABI: a
 * block of two warpgroups owns BQ = 128 queries of one head (warpgroup w the rows 64 w .. 64 w + 63)
 * and walks the key tiles (BK = 128) its queries can see, last first, with cp.async double
 * buffering as in the mma.sync kernel (csrc/cuda/flash_fwd.cuh). Per key tile a warpgroup issues
 * S = Q K^T as HD / 16 wgmma.m64n128k16 with both operands in shared memory, runs the online softmax
 * on the accumulators, and issues O += P V as 8 wgmma.m64nHDk16 with P from registers (an accumulator n8
 * pair converted to bf16 is the register A fragment, as with mma.sync) and V from shared memory read
 * transposed. The two warpgroups run the same loop; while one is in its softmax the other's wgmma
 * keep the tensor cores busy. The OVERLAP variant also pipelines inside a warpgroup (below). No TMA
 * and no producer warp yet: those are next (bench/NOTES.md).
 *
 * Tile layouts, descriptors and the accumulator layout: csrc/cuda/flash_sm90.cuh. */
#ifndef FLASH_EMULATE
#include <mutex>
#endif

#include "flash_sm90.cuh"

namespace flash {

struct FwdSm90 {
  static constexpr int BQ = 128, BK = 128, THREADS = 256;
  static constexpr int HALF_BYTES = 128 * 128; /* one column half of a tile: 128 rows of 128 B */
  /* One Q, K or V tile (BQ = BK = 128 rows) of head dim HD (64: one half; 128: two). */
  static constexpr __host__ __device__ int tile_bytes(int hd) { return 128 * hd * 2; }
  /* Q, two K, two or three V, and 1024 bytes to align the start. */
  static constexpr __host__ __device__ int smem_bytes(int hd, bool overlap) {
    return (overlap ? 6 : 5) * tile_bytes(hd) + 1024;
  }
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

/* Issues S = Q K^T for the warpgroup's 64 rows (`q_rows`: their first row in the Q tile) over the
 * head dim: HD / 16 steps of 16, 4 per column half. */
template <int HD>
__device__ __forceinline__ void issue_qk(float (&s)[64], uint32_t q_rows, uint32_t kb) {
  pin(s);
  wg_fence();
#pragma unroll
  for (int kk = 0; kk < HD / 16; kk++) {
    const uint32_t koff = (kk >> 2) * FwdSm90::HALF_BYTES + (kk & 3) * 32;
    wgmma_ss(s, desc_sw128(q_rows + koff, 16, 1024), desc_sw128(kb + koff, 16, 1024), kk > 0);
  }
  wg_commit();
}

/* Issues O += P V: P's n8 pairs as register A fragments, V read transposed, 16 keys a step (N = the
 * head dim: 64 or 128, o has N / 2 accumulators). */
template <int NO>
__device__ __forceinline__ void issue_pv(float (&o)[NO], uint32_t (&pa)[FwdSm90::BK / 16][4], uint32_t vb) {
  pin(o);
  pin(pa);
  wg_fence();
#pragma unroll
  for (int kk = 0; kk < FwdSm90::BK / 16; kk++) wgmma_rs(o, pa[kk], desc_sw128(vb + kk * 16 * 128, FwdSm90::HALF_BYTES, 1024));
  wg_commit();
}

/* Masks the scores of key tile j0 where the causal frontier, the window's edge or the end of the
 * keys crosses it (TileMask has the rule); `row` is the thread's first row in the query tile (the
 * second is row + 8). */
__device__ __forceinline__ void mask_scores(float (&s)[64], const FwdParams &p, int64_t i0, int64_t j0, int row,
                                            int t4) {
  constexpr int BQ = FwdSm90::BQ, BK = FwdSm90::BK;
  const TileMask mask = tile_mask<BQ, BK>(p.delta, p.window, p.tk, i0, j0);
  if (!mask.partial) return;
#pragma unroll
  for (int nt = 0; nt < BK / 8; nt++)
#pragma unroll
    for (int e = 0; e < 4; e++) {
      const int ii = row + ((e >> 1) << 3), jj = nt * 8 + 2 * t4 + (e & 1);
      if (!mask.visible(ii, jj)) s[4 * nt + e] = -INFINITY;
    }
}

/* Online softmax in base 2 over one key tile for the thread's rows g (hh = 0) and g + 8 (hh = 1):
 * s becomes P relative to the new running maximum m, l the running sum; alpha[hh] is the factor
 * that rescales what O holds. Returns whether some row of the warp has a new maximum. */
__device__ __forceinline__ bool online_softmax(float (&s)[64], float (&m)[2], float (&l)[2], float (&alpha)[2],
                                               float sl2) {
  bool changed = false;
#pragma unroll
  for (int hh = 0; hh < 2; hh++) {
    float mx = m[hh];
#pragma unroll
    for (int nt = 0; nt < FwdSm90::BK / 8; nt++) mx = fmaxf(mx, fmaxf(s[4 * nt + 2 * hh], s[4 * nt + 2 * hh + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float ms = mx == -INFINITY ? 0.0f : mx * sl2; /* nothing seen yet: every p is 0 */
    alpha[hh] = ex2(m[hh] * sl2 - ms);
    changed |= mx != m[hh];
    m[hh] = mx;
    float rs = 0.0f;
#pragma unroll
    for (int nt = 0; nt < FwdSm90::BK / 8; nt++) {
#pragma unroll
      for (int e = 0; e < 2; e++) {
        const float pv = ex2(fmaf(s[4 * nt + 2 * hh + e], sl2, -ms));
        s[4 * nt + 2 * hh + e] = pv;
        rs += pv;
      }
    }
    l[hh] = l[hh] * alpha[hh] + rs;
  }
  return __any_sync(0xffffffffu, changed);
}

template <int NO>
__device__ __forceinline__ void rescale(float (&o)[NO], const float (&alpha)[2]) {
#pragma unroll
  for (int i = 0; i < NO; i++) o[i] *= alpha[(i >> 1) & 1];
}


#endif  // __CUDA_ARCH_FEAT_SM90_ALL

/* OVERLAP = false: each wgmma batch is waited for before its result is used (the two warpgroups
 * overlap each other). OVERLAP = true (FlashAttention-3's intra-warpgroup pipelining): the P V
 * product of tile t - 1 is issued behind S of tile t and runs during tile t's softmax; O is rescaled
 * once it has landed. V then needs three buffers (V of t - 1 is read while V of t + 1 loads). */
template <int HD, bool OVERLAP>
__global__ void __launch_bounds__(FwdSm90::THREADS, 1) flash_fwd_sm90_kernel(const FwdParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int BQ = FwdSm90::BQ, BK = FwdSm90::BK, THREADS = FwdSm90::THREADS;
  constexpr int TILE_BYTES = FwdSm90::tile_bytes(HD), V_BUFS = OVERLAP ? 3 : 2;
  extern __shared__ unsigned char smem_raw[];
  const uint32_t sQ = (smem_u32(smem_raw) + 1023u) & ~1023u, sK = sQ + TILE_BYTES, sV = sK + 2 * TILE_BYTES;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2, g = lane >> 2, t4 = lane & 3;
  const int wrow = warp * 16; /* the warp's first row in the tile (warpgroup wg: rows 64 wg ..) */
  const uint32_t q_rows = sQ + wg * 64 * 128;
  const int h = blockIdx.x, kvh = h / p.group;
  const int64_t tq = p.tq, tk = p.tk;
  const float sl2 = p.scale_log2;
  const bf16 *qh = p.q + (int64_t)h * HD, *kh = p.k + (int64_t)kvh * HD, *vh = p.v + (int64_t)kvh * HD;

  for (int yt = blockIdx.y; yt < p.n_qtiles; yt += gridDim.y) {
    const int64_t i0 = (int64_t)(p.n_qtiles - 1 - yt) * BQ; /* latest query tiles first */
    const int64_t j_end = fwd_keys_seen<BQ>(p, i0), j_begin = first_key_seen(p.delta, p.window, i0);
    __syncthreads(); /* the previous tile's shared memory is no longer read */
    if (j_end <= j_begin) {
      fwd_store_empty<BQ, HD, THREADS>(p, h, i0);
      continue;
    }
    /* Key tiles are walked from the last (t = 0: key tile kt_end - 1) down to the first the window
     * leaves visible, n_kt of them. */
    const int kt_end = (int)((j_end + BK - 1) / BK), n_kt = kt_end - (int)(j_begin / BK);
    auto key_row = [&](int t) { return (int64_t)(kt_end - 1 - t) * BK; };

    load_tile_sw128<128, HD>(sQ, qh, i0, tq, p.q_stride);
    load_tile_sw128<128, HD>(sK, kh, key_row(0), tk, p.kv_stride);
    load_tile_sw128<128, HD>(sV, vh, key_row(0), tk, p.kv_stride);
    cp_async_commit();

    float o[HD / 2], s[64], alpha[2];
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    uint32_t pa[BK / 16][4];
#pragma unroll
    for (int i = 0; i < 64; i++) s[i] = 0.0f;
#pragma unroll
    for (int i = 0; i < HD / 2; i++) o[i] = 0.0f;

    for (int t = 0; t < n_kt; t++) {
      if (OVERLAP) {
        cp_async_wait<0>(); /* K and V of tile t */
        fence_proxy_async();
        __syncthreads(); /* every warp is past tile t - 1: K of t - 1 and V of t - 2 are free */
        if (t + 1 < n_kt) {
          load_tile_sw128<128, HD>(sK + ((t + 1) & 1) * TILE_BYTES, kh, key_row(t + 1), tk, p.kv_stride);
          load_tile_sw128<128, HD>(sV + ((t + 1) % V_BUFS) * TILE_BYTES, vh, key_row(t + 1), tk, p.kv_stride);
        }
        cp_async_commit();
        issue_qk<HD>(s, q_rows, sK + (t & 1) * TILE_BYTES);
        if (t > 0) {
          issue_pv(o, pa, sV + ((t - 1) % V_BUFS) * TILE_BYTES);
          wg_wait<1>(); /* S of tile t (groups complete in order; P V may still run) */
        } else {
          wg_wait<0>();
        }
        pin(s);
        mask_scores(s, p, i0, key_row(t), wrow + g, t4);
        const bool changed = online_softmax(s, m, l, alpha, sl2);
        wg_wait<0>(); /* P V of tile t - 1 */
        pin(o);
        pin(pa);
        if (changed) rescale(o, alpha);
        pack_a(pa, s);
      } else {
        if (t + 1 < n_kt) {
          load_tile_sw128<128, HD>(sK + ((t + 1) & 1) * TILE_BYTES, kh, key_row(t + 1), tk, p.kv_stride);
          load_tile_sw128<128, HD>(sV + ((t + 1) & 1) * TILE_BYTES, vh, key_row(t + 1), tk, p.kv_stride);
        }
        cp_async_commit();
        cp_async_wait<1>();
        fence_proxy_async();
        __syncthreads();
        issue_qk<HD>(s, q_rows, sK + (t & 1) * TILE_BYTES);
        wg_wait<0>();
        pin(s);
        mask_scores(s, p, i0, key_row(t), wrow + g, t4);
        if (online_softmax(s, m, l, alpha, sl2)) rescale(o, alpha);
        pack_a(pa, s);
        issue_pv(o, pa, sV + (t & 1) * TILE_BYTES);
        wg_wait<0>();
        pin(o);
        pin(pa);
        __syncthreads(); /* this buffer is refilled next iteration */
      }
    }
    if (OVERLAP) { /* the last tile's P V */
      issue_pv(o, pa, sV + ((n_kt - 1) % V_BUFS) * TILE_BYTES);
      wg_wait<0>();
      pin(o);
    }

    /* Epilogue: normalise, stage the warp's rows in its own rows of the Q tile (the other warpgroup
     * reads only its own rows), store 16 bytes a lane. */
#pragma unroll
    for (int hh = 0; hh < 2; hh++) {
      float lsum = l[hh];
      lsum += __shfl_xor_sync(0xffffffffu, lsum, 1);
      lsum += __shfl_xor_sync(0xffffffffu, lsum, 2);
      const float inv = lsum > 0.0f ? 1.0f / lsum : 0.0f;
      const int rr = wrow + g + hh * 8;
#pragma unroll
      for (int nt = 0; nt < HD / 8; nt++)
        st_shared_u32(sQ + sw128<BQ>(rr, nt) + 4 * t4, pack_bf16(o[4 * nt + 2 * hh] * inv, o[4 * nt + 2 * hh + 1] * inv));
      const int64_t i = i0 + rr;
      if (t4 == 0 && i < tq)
        p.lse[(int64_t)h * tq + i] = lsum > 0.0f ? (m[hh] * sl2 + __log2f(lsum)) * FLASH_LN2 : -INFINITY;
    }
    __syncwarp();
#pragma unroll
    for (int it = 0; it < 16 * (HD / 8) / 32; it++) {
      const int idx = lane + it * 32;
      const int rr = wrow + idx / (HD / 8), c = idx % (HD / 8);
      const int64_t i = i0 + rr;
      if (i < tq)
        *reinterpret_cast<uint4 *>(p.out + i * p.q_stride + (int64_t)h * HD + c * 8) = ld_shared_u128(sQ + sw128<BQ>(rr, c));
    }
  }
#else
  (void)p;
#endif
}

#ifndef FLASH_EMULATE /* the host side: the emulation (csrc/emu) launches the kernel itself */

/* Writes 1 only in code compiled for sm_90a: a build for plain sm_90 (or PTX JIT-compiled from
 * compute_80) would run the kernels above with empty bodies. */
__global__ void sm90_probe_kernel(int *flag) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  *flag = 1;
#else
  *flag = 0;
#endif
}

bool sm90_available() {
  static std::mutex mutex;
  static int known[64]; /* per device: 0 unknown, 1 yes, 2 no */
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) {
    (void)cudaGetLastError();
    return false;
  }
  std::lock_guard<std::mutex> lock(mutex);
  if (known[dev] != 0) return known[dev] == 1;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  if (major != 9) {
    known[dev] = 2;
    return false;
  }
  /* Only a definite answer is cached; a failed probe (e.g. out of memory) clears its error, so the
   * caller's fallback kernel does not report it, and is tried again next time. */
  int *flag = NULL, host = 0;
  bool read = false;
  if (cudaMalloc(&flag, sizeof(int)) == cudaSuccess) {
    sm90_probe_kernel<<<1, 1>>>(flag);
    read = cudaGetLastError() == cudaSuccess &&
           cudaMemcpy(&host, flag, sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess;
    cudaFree(flag);
  }
  (void)cudaGetLastError();
  if (!read) return false;
  known[dev] = host == 1 ? 1 : 2;
  return host == 1;
}

template <int HD, bool OVERLAP>
static df_status launch(const FwdParams &prm, int nh, cudaStream_t s) {
  constexpr int smem = FwdSm90::smem_bytes(HD, OVERLAP);
  auto kernel = flash_fwd_sm90_kernel<HD, OVERLAP>;
  DF_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  FwdParams p = prm;
  p.n_qtiles = (int)((p.tq + FwdSm90::BQ - 1) / FwdSm90::BQ);
  const unsigned grid_y = (unsigned)(p.n_qtiles < 65535 ? p.n_qtiles : 65535);
  kernel<<<dim3((unsigned)nh, grid_y), FwdSm90::THREADS, smem, s>>>(p);
  DF_CUDA_LAUNCHED();
  return DF_OK;
}

df_status launch_fwd_sm90(const FwdParams &p, int nh, int hd, bool overlap, cudaStream_t s) {
  if (hd == 64) return overlap ? launch<64, true>(p, nh, s) : launch<64, false>(p, nh, s);
  return overlap ? launch<128, true>(p, nh, s) : launch<128, false>(p, nh, s);
}

#endif  // FLASH_EMULATE

}  // namespace flash
