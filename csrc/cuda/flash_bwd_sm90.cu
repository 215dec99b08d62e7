/* Flash attention backward for Hopper (sm_90a): wgmma from shared memory, head dims 64 and 128, bf16.
 *
 * The structure of the mma.sync backward (flash_bwd2_kernel in csrc/cuda/flash_bwd.cuh, after
 * FlashAttention-2) with every product on wgmma: a block of two warpgroups owns BK = 128 keys of one
 * query head's kv head (warpgroup w the keys 64 w .. 64 w + 63) and walks the query tiles (BQ = 64)
 * that see them, Q, dO, L and D double-buffered with cp.async. Per query tile, each warpgroup:
 *   S^T = K Q^T and dP^T = V dO^T        (m64n64k16, both operands K-major in shared memory),
 *   P^T = exp2(S^T scale log2e - L), dS^T = P^T (dP^T - D)   (on the accumulators),
 *   dV += P^T dO and dK += dS^T Q         (m64nHDk16, P^T / dS^T from registers, dO / Q transposed),
 * dS^T goes to shared memory, and after a block barrier
 *   dQ = dS K                              (m64n64k16, dS and K both read transposed: head dim 128,
 *                                           the warpgroup's half of the columns over all 128 keys;
 *                                           64, all columns over the warpgroup's own keys),
 * added to the fp32 dq with atomics.
 * dK (times scale) and dV are added to dk and dv with atomics at the end of the key tile (GQA: the
 * query heads of a group share them). L = lse log2e and D = rowsum(dO O) come from
 * flash_bwd_prep_kernel, as for the mma.sync kernels.
 *
 * Tile layouts, descriptors and the accumulator layout: csrc/cuda/flash_sm90.cuh. */
#include "flash_sm90.cuh"

namespace flash {

template <int HD_>
struct BwdSm90 {
  static constexpr int HD = HD_, BK = 128, BQ = 64, THREADS = 256;
  static constexpr int KV_BYTES = BK * HD * 2, KV_HALF = BK * 128; /* K or V; one column half */
  static constexpr int QT_BYTES = BQ * HD * 2, QT_HALF = BQ * 128; /* a Q or dO tile; one half */
  static constexpr int DS_BYTES = BK * BQ * 2;                     /* dS^T: [keys][queries] */
  /* K, V, two Q, two dO, dS^T, two L and D rows; 1024 bytes to align the start. */
  static constexpr int SMEM = 2 * KV_BYTES + 4 * QT_BYTES + DS_BYTES + 4 * BQ * 4 + 1024;
};

template <class C>
__global__ void __launch_bounds__(C::THREADS, 1) flash_bwd_sm90_kernel(const BwdParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int HD = C::HD, BK = C::BK, BQ = C::BQ;
  constexpr int KV_HALF = C::KV_HALF, QT_BYTES = C::QT_BYTES, QT_HALF = C::QT_HALF;
  extern __shared__ unsigned char smem_raw[];
  const uint32_t sK = (smem_u32(smem_raw) + 1023u) & ~1023u, sV = sK + C::KV_BYTES;
  const uint32_t sQ = sV + C::KV_BYTES, sdO = sQ + 2 * QT_BYTES, sdS = sdO + 2 * QT_BYTES;
  const uint32_t sL = sdS + C::DS_BYTES, sD = sL + 2 * BQ * 4;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2, w4 = warp & 3;
  const int g = lane >> 2, t4 = lane & 3;
  const int krow = warp * 16; /* the warp's first key row in the tile (warpgroup wg: keys 64 wg ..) */
  const int h = blockIdx.x, kvh = h / p.group;
  const int64_t tq = p.tq, tk = p.tk, delta = p.delta;
  const float sl2 = p.scale_log2;
  const BwdHead<HD> rows(p, h, kvh);

  auto load_q_tile = [&](int qt, int buf) {
    const int64_t i0 = (int64_t)qt * BQ;
    load_tile_sw128<BQ, HD>(sQ + buf * QT_BYTES, rows.q, i0, tq, p.q_stride);
    load_tile_sw128<BQ, HD>(sdO + buf * QT_BYTES, rows.dout, i0, tq, p.q_stride);
    rows.template load_l_d<BQ>(sL, sD, buf, i0, tid);
  };

  for (int kt = blockIdx.y; kt < p.n_ktiles; kt += gridDim.y) {
    const int64_t j0 = (int64_t)kt * BK;
    int64_t i_first = j0 - delta; /* the first query that sees key j0 */
    if (i_first < 0) i_first = 0;
    /* Past the window of the tile's last key no query sees any of its keys. */
    const int64_t i_end = query_end_seen(delta, p.window, tq, (j0 + BK < tk ? j0 + BK : tk) - 1);
    __syncthreads(); /* the previous key tile's shared memory is no longer read */
    if (i_first >= i_end) continue;
    const int qt0 = (int)(i_first / BQ), qt_end = (int)((i_end + BQ - 1) / BQ);

    load_tile_sw128<BK, HD>(sK, rows.k, j0, tk, p.kv_stride);
    load_tile_sw128<BK, HD>(sV, rows.v, j0, tk, p.kv_stride);
    load_q_tile(qt0, 0);
    cp_async_commit();

    float dk[HD / 2], dv[HD / 2];
#pragma unroll
    for (int i = 0; i < HD / 2; i++) dk[i] = dv[i] = 0.0f;

    for (int qt = qt0; qt < qt_end; qt++) {
      const int buf = (qt - qt0) & 1;
      cp_async_wait<0>();
      fence_proxy_async();
      __syncthreads(); /* tile qt has landed; every warp is done with tile qt - 1 (both buffers free) */
      if (qt + 1 < qt_end) load_q_tile(qt + 1, buf ^ 1);
      cp_async_commit();
      const uint32_t qb = sQ + buf * QT_BYTES, ob = sdO + buf * QT_BYTES;
      const uint32_t Lb = sL + buf * BQ * 4, Db = sD + buf * BQ * 4;
      const int64_t i0 = (int64_t)qt * BQ;

      /* S^T = K Q^T and dP^T = V dO^T: the warpgroup's 64 keys x the tile's 64 queries. */
      float s[32], dp[32];
      pin(s);
      pin(dp);
      wg_fence();
#pragma unroll
      for (int kk = 0; kk < HD / 16; kk++) {
        const uint32_t kvo = (kk >> 2) * KV_HALF + wg * 64 * 128 + (kk & 3) * 32;
        const uint32_t qo = (kk >> 2) * QT_HALF + (kk & 3) * 32;
        wgmma_ss_n64<0, 0>(s, desc_sw128(sK + kvo, 16, 1024), desc_sw128(qb + qo, 16, 1024), kk > 0);
      }
#pragma unroll
      for (int kk = 0; kk < HD / 16; kk++) {
        const uint32_t kvo = (kk >> 2) * KV_HALF + wg * 64 * 128 + (kk & 3) * 32;
        const uint32_t qo = (kk >> 2) * QT_HALF + (kk & 3) * 32;
        wgmma_ss_n64<0, 0>(dp, desc_sw128(sV + kvo, 16, 1024), desc_sw128(ob + qo, 16, 1024), kk > 0);
      }
      wg_commit();
      wg_wait<0>();
      pin(s);
      pin(dp);

      /* P^T = exp2(S^T scale log2e - L) (0 where masked), dS^T = P^T (dP^T - D). */
      const TileMask mask = tile_mask<BQ, BK>(delta, p.window, tk, i0, j0);
#pragma unroll
      for (int nt = 0; nt < BQ / 8; nt++) {
#pragma unroll
        for (int c = 0; c < 2; c++) {
          const int ii = nt * 8 + 2 * t4 + c;
          const float Li = ld_shared_f32(Lb + ii * 4), Di = ld_shared_f32(Db + ii * 4);
#pragma unroll
          for (int hh = 0; hh < 2; hh++) {
            const int jj = krow + g + hh * 8, e = 4 * nt + 2 * hh + c;
            float pv = ex2(fmaf(s[e], sl2, -Li));
            if (mask.partial && !mask.visible(ii, jj)) pv = 0.0f;
            s[e] = pv;
            dp[e] = pv * (dp[e] - Di);
          }
        }
      }
      uint32_t pa[BQ / 16][4], sa[BQ / 16][4];
      pack_a(pa, s);
      pack_a(sa, dp);

      /* dS^T to shared memory, one 128-byte row per key: the packed A fragments are its bf16 pairs
       * (fragment kk, register 2 (nt & 1) + hh holds row g + 8 hh, columns 8 nt + 2 t4 ..). Stored
       * before the dK product is issued: its A registers may not be touched while it runs. */
#pragma unroll
      for (int nt = 0; nt < BQ / 8; nt++)
#pragma unroll
        for (int hh = 0; hh < 2; hh++) {
          const int r = krow + g + hh * 8;
          st_shared_u32(sdS + r * 128 + ((nt ^ (r & 7)) << 4) + 4 * t4, sa[nt >> 1][2 * (nt & 1) + hh]);
        }

      /* dV += P^T dO and dK += dS^T Q: the warpgroup's 64 keys x HD columns, over 64 queries. */
      pin(dv);
      pin(dk);
      pin(pa);
      pin(sa);
      wg_fence();
#pragma unroll
      for (int kk = 0; kk < BQ / 16; kk++) wgmma_rs(dv, pa[kk], desc_sw128(ob + kk * 16 * 128, QT_HALF, 1024));
#pragma unroll
      for (int kk = 0; kk < BQ / 16; kk++) wgmma_rs(dk, sa[kk], desc_sw128(qb + kk * 16 * 128, QT_HALF, 1024));
      wg_commit();

      fence_proxy_async();
      __syncthreads(); /* dS^T of both warpgroups is in shared memory */

      /* dQ = dS K for the tile's 64 queries: with HD = 128 each warpgroup takes 64 columns over the
       * block's 128 keys; with HD = 64 each takes all 64 columns over its own 64 keys, and the two
       * partial sums meet in the atomics. */
      float dq[32];
      pin(dq);
      wg_fence();
      if (HD == 128) {
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++)
          wgmma_ss_n64<1, 1>(dq, desc_sw128(sdS + kk * 16 * 128, BQ * 128, 1024),
                             desc_sw128(sK + wg * KV_HALF + kk * 16 * 128, KV_HALF, 1024), kk > 0);
      } else {
#pragma unroll
        for (int kk = 0; kk < 64 / 16; kk++) {
          const uint32_t rows = (wg * 64 + kk * 16) * 128;
          wgmma_ss_n64<1, 1>(dq, desc_sw128(sdS + rows, BQ * 128, 1024), desc_sw128(sK + rows, KV_HALF, 1024), kk > 0);
        }
      }
      wg_commit();
      wg_wait<0>(); /* dV, dK and dQ */
      pin(dq);
      pin(dv);
      pin(dk);
      pin(pa);
      pin(sa);
#pragma unroll
      for (int hh = 0; hh < 2; hh++) {
        const int64_t i = i0 + w4 * 16 + g + hh * 8;
        if (i < tq) {
          float *row = p.dq + i * p.q_stride + (int64_t)h * HD + (HD == 128 ? wg * 64 : 0) + 2 * t4;
#pragma unroll
          for (int nt = 0; nt < 8; nt++) atomic_add2(row + nt * 8, dq[4 * nt + 2 * hh] * p.scale, dq[4 * nt + 2 * hh + 1] * p.scale);
        }
      }
    }

    /* dK (times scale) and dV of the warp's 16 keys, all HD columns. */
#pragma unroll
    for (int hh = 0; hh < 2; hh++) {
      const int64_t j = j0 + krow + g + hh * 8;
      if (j < tk) {
        float *dkr = p.dk + j * p.kv_stride + (int64_t)kvh * HD + 2 * t4;
        float *dvr = p.dv + j * p.kv_stride + (int64_t)kvh * HD + 2 * t4;
#pragma unroll
        for (int dn = 0; dn < HD / 8; dn++) {
          atomic_add2(dkr + dn * 8, dk[4 * dn + 2 * hh] * p.scale, dk[4 * dn + 2 * hh + 1] * p.scale);
          atomic_add2(dvr + dn * 8, dv[4 * dn + 2 * hh], dv[4 * dn + 2 * hh + 1]);
        }
      }
    }
  }
#else
  (void)p;
#endif
}

#ifndef FLASH_EMULATE /* the host side: the emulation (csrc/emu) launches the kernel itself */

template <int HD>
static df_status launch(const BwdParams &prm, int nh, cudaStream_t s) {
  using C = BwdSm90<HD>;
  auto kernel = flash_bwd_sm90_kernel<C>;
  DF_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM));
  BwdParams p = prm;
  p.n_ktiles = (int)((p.tk + C::BK - 1) / C::BK);
  const unsigned grid_y = (unsigned)(p.n_ktiles < 65535 ? p.n_ktiles : 65535);
  kernel<<<dim3((unsigned)nh, grid_y), C::THREADS, C::SMEM, s>>>(p);
  DF_CUDA_LAUNCHED();
  return DF_OK;
}

df_status launch_bwd_sm90(const BwdParams &p, int nh, int hd, cudaStream_t s) {
  return hd == 64 ? launch<64>(p, nh, s) : launch<128>(p, nh, s);
}

#endif  // FLASH_EMULATE

}  // namespace flash
