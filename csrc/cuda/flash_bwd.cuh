/* The mma.sync flash-attention backward (sm_80 and sm_90a) and its prep kernel. Included only by
 * flash_attention.cu, which launches them. The per-head rows every backward kernel reads (this file's
 * and flash_bwd_sm90.cu's) come from BwdHead in flash_internal.cuh.
 *
 * Backward (FA2's key-major loop): a block owns BK = 128 keys of one query head's kv head (one block
 * per query head, so GQA groups are spread over blocks; dK and dV are added with atomics) and walks
 * the query tiles (BQ = 64) that see its keys, longest key tiles first. Per tile it recomputes
 * P^T = exp2(K Q^T * scale*log2e - lse*log2e) from the final lse, dP^T = V dO^T and
 * dS^T = P^T (dP^T - D) with D = rowsum(dO * O) precomputed by a small kernel into a per-(device,
 * stream) scratch buffer; P^T and dS^T go to shared memory as bf16; dV += P^T dO and dK += dS^T Q
 * accumulate in registers; dQ = dS K is added to the fp32 dq with atomics. The default kernel
 * (flash_bwd2_kernel) uses FA2's warp grid (32 x 32 warp tiles for S and dP, 32 keys x HD/2 for dK
 * and dV, 32 queries x HD/4 for dQ); flash_bwd_kernel (warps of 16 keys holding all columns of their
 * dK/dV rows, P^T and dS^T fed from registers) stays as a variant. bench/NOTES.md has the numbers. */
#pragma once
#include "flash_tiles.cuh"

namespace flash {

/* D[h][i] = sum_d dO[i,h,d] O[i,h,d] and L[h][i] = lse[h][i] * log2(e) (+inf where lse = -inf or
 * i >= tq, so exp2(s - L) = 0 there), over the padded rows i < tq_pad. One warp per (i, h). */
__global__ void flash_bwd_prep_kernel(float *L, float *D, const bf16 *dout, const bf16 *out, const float *lse,
                                      int64_t tq, int64_t tq_pad, int nh, int hd) {
  const int lane = threadIdx.x & 31;
  const int64_t rows = tq_pad * nh;
  const int64_t warps_total = (int64_t)gridDim.x * (blockDim.x >> 5);
  for (int64_t row = blockIdx.x * (int64_t)(blockDim.x >> 5) + (threadIdx.x >> 5); row < rows; row += warps_total) {
    const int64_t h = row / tq_pad, i = row - h * tq_pad;
    float dsum = 0.0f, lval = INFINITY;
    if (i < tq) {
      const __nv_bfloat162 *o2 = reinterpret_cast<const __nv_bfloat162 *>(out + (i * nh + h) * hd);
      const __nv_bfloat162 *d2 = reinterpret_cast<const __nv_bfloat162 *>(dout + (i * nh + h) * hd);
      for (int c = lane; c < hd / 2; c += 32) {
        const float2 a = __bfloat1622float2(o2[c]), b = __bfloat1622float2(d2[c]);
        dsum = fmaf(a.x, b.x, fmaf(a.y, b.y, dsum));
      }
      dsum = warp_sum(dsum);
      const float lv = lse[h * tq + i];
      lval = lv == -INFINITY ? INFINITY : lv * FLASH_LOG2E;
    }
    if (lane == 0) {
      D[row] = dsum;
      L[row] = lval;
    }
  }
}


template <int HD_, int NW_, int BQ_>
struct BwdCfg {
  static constexpr int HD = HD_, NW = NW_, BQ = BQ_;
  static constexpr int THREADS = NW * 32, BK = NW * 16;
  static constexpr int SB = BQ * 2 < 128 ? 128 : BQ * 2; /* row bytes of the dS^T tile (padded) */
  static constexpr int KV_BYTES = BK * HD * 2, QT_BYTES = BQ * HD * 2, DS_BYTES = BK * SB;
  static constexpr int SMEM = 2 * KV_BYTES + 4 * QT_BYTES + DS_BYTES + 4 * BQ * 4;
  static constexpr int RG = BQ / 16;           /* dQ: row groups of 16 queries */
  static constexpr int CG = NW / RG;           /* dQ: column groups */
  static constexpr int DQC = HD / CG;          /* dQ: head-dim columns per warp */
  static_assert(NW % RG == 0 && DQC % 16 == 0, "dQ split");
};

template <class C>
__global__ void __launch_bounds__(C::THREADS, 1) flash_bwd_kernel(const BwdParams p) {
  constexpr int HD = C::HD, BK = C::BK, BQ = C::BQ, THREADS = C::THREADS, RB = HD * 2, SB = C::SB;
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t sK = smem_u32(smem), sV = sK + C::KV_BYTES, sQ = sV + C::KV_BYTES;
  const uint32_t sdO = sQ + 2 * C::QT_BYTES, sdS = sdO + 2 * C::QT_BYTES, sL = sdS + C::DS_BYTES;
  const uint32_t sD = sL + 2 * BQ * 4;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t4 = lane & 3;
  const int h = blockIdx.x, kvh = h / p.group;
  const int64_t tq = p.tq, tk = p.tk, delta = p.delta;
  const float sl2 = p.scale_log2;
  const BwdHead<HD> rows(p, h, kvh);
  const int krow = warp * 16; /* the warp's first key row in the tile */
  const int qr = (warp % C::RG) * 16, qc = (warp / C::RG) * C::DQC; /* the warp's dQ block */
  const Frag<RB> fk(sK + krow * RB, FRAG_A, 0, lane), fv(sV + krow * RB, FRAG_A, 0, lane);
  const Frag<RB> fq(sQ, FRAG_B, 0, lane), fdo(sdO, FRAG_B, 0, lane);
  const Frag<RB> fqt(sQ, FRAG_BT, 0, lane), fdot(sdO, FRAG_BT, 0, lane), fkt(sK, FRAG_BT, qc / 16, lane);
  const Frag<SB> fds(sdS, FRAG_AT, qr / 16, lane);
  const int nqt = (int)((tq + BQ - 1) / BQ);

  auto load_q_tile = [&](int qt, int buf) {
    const int64_t i0 = (int64_t)qt * BQ;
    load_tile<BQ, HD, THREADS>(sQ + buf * C::QT_BYTES, rows.q, i0, tq, p.q_stride);
    load_tile<BQ, HD, THREADS>(sdO + buf * C::QT_BYTES, rows.dout, i0, tq, p.q_stride);
    rows.template load_l_d<BQ>(sL, sD, buf, i0, tid);
  };

  for (int kt = blockIdx.y; kt < p.n_ktiles; kt += gridDim.y) {
    const int64_t j0 = (int64_t)kt * BK;
    int64_t i_first = j0 - delta; /* the first query that sees key j0 */
    if (i_first < 0) i_first = 0;
    __syncthreads(); /* the previous key tile's shared memory is no longer read */
    if (i_first >= tq) continue;
    const int qt0 = (int)(i_first / BQ);

    load_tile<BK, HD, THREADS>(sK, rows.k, j0, tk, p.kv_stride);
    load_tile<BK, HD, THREADS>(sV, rows.v, j0, tk, p.kv_stride);
    load_q_tile(qt0, 0);
    cp_async_commit();

    float dk[HD / 8][4], dv[HD / 8][4];
#pragma unroll
    for (int dn = 0; dn < HD / 8; dn++)
#pragma unroll
      for (int e = 0; e < 4; e++) dk[dn][e] = dv[dn][e] = 0.0f;

    for (int qt = qt0; qt < nqt; qt++) {
      const int buf = (qt - qt0) & 1;
      if (qt + 1 < nqt) load_q_tile(qt + 1, buf ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
      __syncthreads();
      const uint32_t qoff = buf * C::QT_BYTES; /* the buffer's offset in the Q and dO tiles */
      const uint32_t Lb = sL + buf * BQ * 4, Db = sD + buf * BQ * 4;
      const int64_t i0 = (int64_t)qt * BQ;

      /* S^T = K Q^T for the warp's 16 keys x BQ queries */
      float s[BQ / 8][4];
#pragma unroll
      for (int nt = 0; nt < BQ / 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) s[nt][e] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < HD / 16; kk++) {
        uint32_t a[4];
        ld_frag(a, fk, 0, 0, kk);
#pragma unroll
        for (int np = 0; np < BQ / 16; np++) {
          uint32_t b[4];
          ld_frag(b, fq, qoff, np * 16, kk);
          mma_bf16(s[2 * np], a, b[0], b[1]);
          mma_bf16(s[2 * np + 1], a, b[2], b[3]);
        }
      }

      /* P^T = exp2(S^T scale log2e - L), 0 where masked */
      const bool masked = j0 + BK - 1 - i0 > delta || j0 + BK > tk;
      const int lim = clamp_int(delta - (j0 - i0)); /* visible iff jj - ii <= lim (tile-local) */
      const int jmax = clamp_int(tk - j0);
#pragma unroll
      for (int nt = 0; nt < BQ / 8; nt++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
          const int ii = nt * 8 + 2 * t4 + (e & 1), jj = krow + g + ((e >> 1) << 3);
          float pv = ex2(fmaf(s[nt][e], sl2, -ld_shared_f32(Lb + ii * 4)));
          if (masked && (jj >= jmax || jj - ii > lim)) pv = 0.0f;
          s[nt][e] = pv;
        }
      }

      /* dP^T = V dO^T */
      float dp[BQ / 8][4];
#pragma unroll
      for (int nt = 0; nt < BQ / 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) dp[nt][e] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < HD / 16; kk++) {
        uint32_t a[4];
        ld_frag(a, fv, 0, 0, kk);
#pragma unroll
        for (int np = 0; np < BQ / 16; np++) {
          uint32_t b[4];
          ld_frag(b, fdo, qoff, np * 16, kk);
          mma_bf16(dp[2 * np], a, b[0], b[1]);
          mma_bf16(dp[2 * np + 1], a, b[2], b[3]);
        }
      }

      /* dS^T = P^T (dP^T - D), staged as bf16 for dQ */
#pragma unroll
      for (int nt = 0; nt < BQ / 8; nt++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
          const int ii = nt * 8 + 2 * t4 + (e & 1);
          dp[nt][e] = s[nt][e] * (dp[nt][e] - ld_shared_f32(Db + ii * 4));
        }
        st_shared_u32(sdS + swz<SB>(krow + g, nt) + 4 * t4, pack_bf16(dp[nt][0], dp[nt][1]));
        st_shared_u32(sdS + swz<SB>(krow + g + 8, nt) + 4 * t4, pack_bf16(dp[nt][2], dp[nt][3]));
      }

      /* dV += P^T dO and dK += dS^T Q, A operands straight from registers */
#pragma unroll
      for (int kk = 0; kk < BQ / 16; kk++) {
        uint32_t pa[4], sa[4];
        pa[0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
        pa[1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
        pa[2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        pa[3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
        sa[0] = pack_bf16(dp[2 * kk][0], dp[2 * kk][1]);
        sa[1] = pack_bf16(dp[2 * kk][2], dp[2 * kk][3]);
        sa[2] = pack_bf16(dp[2 * kk + 1][0], dp[2 * kk + 1][1]);
        sa[3] = pack_bf16(dp[2 * kk + 1][2], dp[2 * kk + 1][3]);
#pragma unroll
        for (int np = 0; np < HD / 16; np++) {
          uint32_t b[4];
          ld_frag_t(b, fdot, qoff, kk * 16, np);
          mma_bf16(dv[2 * np], pa, b[0], b[1]);
          mma_bf16(dv[2 * np + 1], pa, b[2], b[3]);
          ld_frag_t(b, fqt, qoff, kk * 16, np);
          mma_bf16(dk[2 * np], sa, b[0], b[1]);
          mma_bf16(dk[2 * np + 1], sa, b[2], b[3]);
        }
      }
      __syncthreads(); /* dS^T complete */

      /* dQ (rows qr.., columns qc..) = dS K, added to dq */
      {
        float acc[C::DQC / 8][4];
#pragma unroll
        for (int nt = 0; nt < C::DQC / 8; nt++)
#pragma unroll
          for (int e = 0; e < 4; e++) acc[nt][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++) {
          uint32_t a[4];
          ld_frag_t(a, fds, 0, kk * 16, 0);
#pragma unroll
          for (int np = 0; np < C::DQC / 16; np++) {
            uint32_t b[4];
            ld_frag_t(b, fkt, 0, kk * 16, np);
            mma_bf16(acc[2 * np], a, b[0], b[1]);
            mma_bf16(acc[2 * np + 1], a, b[2], b[3]);
          }
        }
#pragma unroll
        for (int hh = 0; hh < 2; hh++) {
          const int64_t i = i0 + qr + g + hh * 8;
          if (i < tq) {
            float *row = p.dq + i * p.q_stride + (int64_t)h * HD + qc + 2 * t4;
#pragma unroll
            for (int nt = 0; nt < C::DQC / 8; nt++)
              atomic_add2(row + nt * 8, acc[nt][2 * hh] * p.scale, acc[nt][2 * hh + 1] * p.scale);
          }
        }
      }
    }

    /* dK (times scale) and dV of the warp's keys */
#pragma unroll
    for (int hh = 0; hh < 2; hh++) {
      const int64_t j = j0 + krow + g + hh * 8;
      if (j < tk) {
        float *dkr = p.dk + j * p.kv_stride + (int64_t)kvh * HD + 2 * t4;
        float *dvr = p.dv + j * p.kv_stride + (int64_t)kvh * HD + 2 * t4;
#pragma unroll
        for (int dn = 0; dn < HD / 8; dn++) {
          atomic_add2(dkr + dn * 8, dk[dn][2 * hh] * p.scale, dk[dn][2 * hh + 1] * p.scale);
          atomic_add2(dvr + dn * 8, dv[dn][2 * hh], dv[dn][2 * hh + 1]);
        }
      }
    }
  }
}

/* Backward, second layout (FA2's warp grid): BK = 128 keys, BQ = 64 queries, 8 warps. S^T and dP^T
 * are computed in 32-key x 32-query warp tiles (warps 4 x 2), P^T and dS^T are staged in shared
 * memory as bf16, dK and dV are held as 32-key x HD/2 warp tiles (4 x 2) and dQ is computed in
 * 32-query x HD/4 tiles (2 x 4). Squarer warp tiles reuse each fragment for more mma: 144
 * ldmatrix.x4 per 320 mma per warp and tile pair instead of the 16-key layout's 184 (shared-memory
 * bandwidth is what limits mma.sync here). */
template <int HD_, bool RED4_>
struct Bwd2Cfg {
  static constexpr int HD = HD_, NW = 8, THREADS = 256, BK = 128, BQ = 64;
  static constexpr bool RED4 = RED4_; /* dQ added with 16-byte atomics (lane pairs swap halves) */
  static constexpr int KV_BYTES = BK * HD * 2, QT_BYTES = BQ * HD * 2, PS_BYTES = BK * BQ * 2;
  static constexpr int SMEM = 2 * KV_BYTES + 4 * QT_BYTES + 2 * PS_BYTES + 4 * BQ * 4;
  static constexpr int DKC = HD / 2; /* dK/dV columns per warp */
  static constexpr int DQC = HD / 4; /* dQ columns per warp */
  static_assert(DQC % 16 == 0, "dQ split");
};

template <class C>
__global__ void __launch_bounds__(C::THREADS, 1) flash_bwd2_kernel(const BwdParams p) {
  constexpr int HD = C::HD, BK = C::BK, BQ = C::BQ, THREADS = C::THREADS, RB = HD * 2, PB = BQ * 2;
  constexpr int DKC = C::DKC, DQC = C::DQC;
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t sK = smem_u32(smem), sV = sK + C::KV_BYTES, sQ = sV + C::KV_BYTES;
  const uint32_t sdO = sQ + 2 * C::QT_BYTES, sP = sdO + 2 * C::QT_BYTES, sdS = sP + C::PS_BYTES;
  const uint32_t sL = sdS + C::PS_BYTES, sD = sL + 2 * BQ * 4;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t4 = lane & 3;
  const int h = blockIdx.x, kvh = h / p.group;
  const int64_t tq = p.tq, tk = p.tk, delta = p.delta;
  const float sl2 = p.scale_log2;
  const BwdHead<HD> rows(p, h, kvh);
  /* Warp tiles: S^T/dP^T keys wk*32.., queries wq*32..; dK/dV keys wk*32.., columns wq*DKC..;
   * dQ queries wr*32.., columns wc*DQC... */
  const int wk = warp & 3, wq = warp >> 2, wr = warp & 1, wc = warp >> 1;
  const Frag<RB> fk(sK + wk * 32 * RB, FRAG_A, 0, lane), fv(sV + wk * 32 * RB, FRAG_A, 0, lane);
  const Frag<RB> fq(sQ + wq * 32 * RB, FRAG_B, 0, lane), fdo(sdO + wq * 32 * RB, FRAG_B, 0, lane);
  const Frag<PB> fp(sP + wk * 32 * PB, FRAG_A, 0, lane), fds(sdS + wk * 32 * PB, FRAG_A, 0, lane);
  const Frag<RB> fqt(sQ, FRAG_BT, wq * DKC / 16, lane), fdot(sdO, FRAG_BT, wq * DKC / 16, lane);
  const Frag<PB> fdst(sdS, FRAG_AT, wr * 2, lane);
  const Frag<RB> fkt(sK, FRAG_BT, wc * DQC / 16, lane);
  const int nqt = (int)((tq + BQ - 1) / BQ);

  auto load_q_tile = [&](int qt, int buf) {
    const int64_t i0 = (int64_t)qt * BQ;
    load_tile<BQ, HD, THREADS>(sQ + buf * C::QT_BYTES, rows.q, i0, tq, p.q_stride);
    load_tile<BQ, HD, THREADS>(sdO + buf * C::QT_BYTES, rows.dout, i0, tq, p.q_stride);
    rows.template load_l_d<BQ>(sL, sD, buf, i0, tid);
  };

  for (int kt = blockIdx.y; kt < p.n_ktiles; kt += gridDim.y) {
    const int64_t j0 = (int64_t)kt * BK;
    int64_t i_first = j0 - delta; /* the first query that sees key j0 */
    if (i_first < 0) i_first = 0;
    __syncthreads(); /* the previous key tile's shared memory is no longer read */
    if (i_first >= tq) continue;
    const int qt0 = (int)(i_first / BQ);

    load_tile<BK, HD, THREADS>(sK, rows.k, j0, tk, p.kv_stride);
    load_tile<BK, HD, THREADS>(sV, rows.v, j0, tk, p.kv_stride);
    load_q_tile(qt0, 0);
    cp_async_commit();

    float dk[2][DKC / 8][4], dv[2][DKC / 8][4];
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
      for (int dn = 0; dn < DKC / 8; dn++)
#pragma unroll
        for (int e = 0; e < 4; e++) dk[mi][dn][e] = dv[mi][dn][e] = 0.0f;

    for (int qt = qt0; qt < nqt; qt++) {
      const int buf = (qt - qt0) & 1;
      cp_async_wait<0>();
      __syncthreads(); /* tile qt has landed; every warp is done with tile qt - 1 (both buffers free) */
      if (qt + 1 < nqt) load_q_tile(qt + 1, buf ^ 1);
      cp_async_commit();
      const uint32_t qoff = buf * C::QT_BYTES; /* the buffer's offset in the Q and dO tiles */
      const uint32_t Lb = sL + buf * BQ * 4, Db = sD + buf * BQ * 4;
      const int64_t i0 = (int64_t)qt * BQ;

      /* S^T = K Q^T and dP^T = V dO^T for keys wk*32.., queries wq*32.. */
      float s[2][4][4], dp[2][4][4];
#pragma unroll
      for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int nt = 0; nt < 4; nt++)
#pragma unroll
          for (int e = 0; e < 4; e++) s[mi][nt][e] = dp[mi][nt][e] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < HD / 16; kk++) {
        uint32_t a[2][4];
        ld_frag(a[0], fk, 0, 0, kk);
        ld_frag(a[1], fk, 0, 16, kk);
#pragma unroll
        for (int np = 0; np < 2; np++) {
          uint32_t b[4];
          ld_frag(b, fq, qoff, np * 16, kk);
#pragma unroll
          for (int mi = 0; mi < 2; mi++) {
            mma_bf16(s[mi][2 * np], a[mi], b[0], b[1]);
            mma_bf16(s[mi][2 * np + 1], a[mi], b[2], b[3]);
          }
        }
      }
#pragma unroll
      for (int kk = 0; kk < HD / 16; kk++) {
        uint32_t a[2][4];
        ld_frag(a[0], fv, 0, 0, kk);
        ld_frag(a[1], fv, 0, 16, kk);
#pragma unroll
        for (int np = 0; np < 2; np++) {
          uint32_t b[4];
          ld_frag(b, fdo, qoff, np * 16, kk);
#pragma unroll
          for (int mi = 0; mi < 2; mi++) {
            mma_bf16(dp[mi][2 * np], a[mi], b[0], b[1]);
            mma_bf16(dp[mi][2 * np + 1], a[mi], b[2], b[3]);
          }
        }
      }

      /* P^T = exp2(S^T scale log2e - L) (0 where masked), dS^T = P^T (dP^T - D); both to shared memory */
      const bool masked = j0 + BK - 1 - i0 > delta || j0 + BK > tk;
      const int lim = clamp_int(delta - (j0 - i0)); /* visible iff jj - ii <= lim (tile-local) */
      const int jmax = clamp_int(tk - j0);
#pragma unroll
      for (int nt = 0; nt < 4; nt++) {
#pragma unroll
        for (int c = 0; c < 2; c++) {
          const int ii = wq * 32 + nt * 8 + 2 * t4 + c;
          const float Li = ld_shared_f32(Lb + ii * 4), Di = ld_shared_f32(Db + ii * 4);
#pragma unroll
          for (int mi = 0; mi < 2; mi++) {
#pragma unroll
            for (int hh = 0; hh < 2; hh++) {
              const int jj = wk * 32 + mi * 16 + g + hh * 8, e = 2 * hh + c;
              float pv = ex2(fmaf(s[mi][nt][e], sl2, -Li));
              if (masked && (jj >= jmax || jj - ii > lim)) pv = 0.0f;
              s[mi][nt][e] = pv;
              dp[mi][nt][e] = pv * (dp[mi][nt][e] - Di);
            }
          }
        }
      }
#pragma unroll
      for (int mi = 0; mi < 2; mi++) {
#pragma unroll
        for (int nt = 0; nt < 4; nt++) {
#pragma unroll
          for (int hh = 0; hh < 2; hh++) {
            const uint32_t off = swz<PB>(wk * 32 + mi * 16 + g + hh * 8, wq * 4 + nt) + 4 * t4;
            st_shared_u32(sP + off, pack_bf16(s[mi][nt][2 * hh], s[mi][nt][2 * hh + 1]));
            st_shared_u32(sdS + off, pack_bf16(dp[mi][nt][2 * hh], dp[mi][nt][2 * hh + 1]));
          }
        }
      }
      __syncthreads(); /* P^T and dS^T complete */

      /* dV += P^T dO and dK += dS^T Q for keys wk*32.., columns wq*DKC.. */
#pragma unroll
      for (int kk = 0; kk < BQ / 16; kk++) {
        uint32_t pa[2][4], sa[2][4];
#pragma unroll
        for (int mi = 0; mi < 2; mi++) {
          ld_frag(pa[mi], fp, 0, mi * 16, kk);
          ld_frag(sa[mi], fds, 0, mi * 16, kk);
        }
#pragma unroll
        for (int np = 0; np < DKC / 16; np++) {
          uint32_t b[4];
          ld_frag_t(b, fdot, qoff, kk * 16, np);
#pragma unroll
          for (int mi = 0; mi < 2; mi++) {
            mma_bf16(dv[mi][2 * np], pa[mi], b[0], b[1]);
            mma_bf16(dv[mi][2 * np + 1], pa[mi], b[2], b[3]);
          }
          ld_frag_t(b, fqt, qoff, kk * 16, np);
#pragma unroll
          for (int mi = 0; mi < 2; mi++) {
            mma_bf16(dk[mi][2 * np], sa[mi], b[0], b[1]);
            mma_bf16(dk[mi][2 * np + 1], sa[mi], b[2], b[3]);
          }
        }
      }

      /* dQ (queries wr*32.., columns wc*DQC..) = dS K, added to dq */
      {
        float acc[2][DQC / 8][4];
#pragma unroll
        for (int mi = 0; mi < 2; mi++)
#pragma unroll
          for (int nt = 0; nt < DQC / 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[mi][nt][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++) {
          uint32_t a[2][4];
          ld_frag_t(a[0], fdst, 0, kk * 16, 0);
          ld_frag_t(a[1], fdst, 0, kk * 16, 1);
#pragma unroll
          for (int np = 0; np < DQC / 16; np++) {
            uint32_t b[4];
            ld_frag_t(b, fkt, 0, kk * 16, np);
#pragma unroll
            for (int mi = 0; mi < 2; mi++) {
              mma_bf16(acc[mi][2 * np], a[mi], b[0], b[1]);
              mma_bf16(acc[mi][2 * np + 1], a[mi], b[2], b[3]);
            }
          }
        }
        if (C::RED4) {
          /* Lanes t4 and t4 ^ 1 swap half their values so that each holds four consecutive columns
           * of one row: even t4 row g, columns 2 t4 .. 2 t4 + 3; odd t4 row g + 8, columns 2 (t4 - 1) .. */
          const bool odd = t4 & 1;
#pragma unroll
          for (int mi = 0; mi < 2; mi++) {
            const int64_t i = i0 + wr * 32 + mi * 16 + g + (odd ? 8 : 0);
            float *row = p.dq + i * p.q_stride + (int64_t)h * HD + wc * DQC + 2 * (t4 & ~1);
#pragma unroll
            for (int nt = 0; nt < DQC / 8; nt++) {
              const float *x = acc[mi][nt];
              const float r0 = __shfl_xor_sync(0xffffffffu, odd ? x[0] : x[2], 1);
              const float r1 = __shfl_xor_sync(0xffffffffu, odd ? x[1] : x[3], 1);
              const float4 v = odd ? make_float4(r0, r1, x[2], x[3]) : make_float4(x[0], x[1], r0, r1);
              if (i < tq)
                atomic_add4(row + nt * 8, make_float4(v.x * p.scale, v.y * p.scale, v.z * p.scale, v.w * p.scale));
            }
          }
        } else {
#pragma unroll
          for (int mi = 0; mi < 2; mi++) {
#pragma unroll
            for (int hh = 0; hh < 2; hh++) {
              const int64_t i = i0 + wr * 32 + mi * 16 + g + hh * 8;
              if (i < tq) {
                float *row = p.dq + i * p.q_stride + (int64_t)h * HD + wc * DQC + 2 * t4;
#pragma unroll
                for (int nt = 0; nt < DQC / 8; nt++)
                  atomic_add2(row + nt * 8, acc[mi][nt][2 * hh] * p.scale, acc[mi][nt][2 * hh + 1] * p.scale);
              }
            }
          }
        }
      }
    }

    /* dK (times scale) and dV of the warp's keys and columns */
#pragma unroll
    for (int mi = 0; mi < 2; mi++) {
#pragma unroll
      for (int hh = 0; hh < 2; hh++) {
        const int64_t j = j0 + wk * 32 + mi * 16 + g + hh * 8;
        if (j < tk) {
          float *dkr = p.dk + j * p.kv_stride + (int64_t)kvh * HD + wq * DKC + 2 * t4;
          float *dvr = p.dv + j * p.kv_stride + (int64_t)kvh * HD + wq * DKC + 2 * t4;
#pragma unroll
          for (int dn = 0; dn < DKC / 8; dn++) {
            atomic_add2(dkr + dn * 8, dk[mi][dn][2 * hh] * p.scale, dk[mi][dn][2 * hh + 1] * p.scale);
            atomic_add2(dvr + dn * 8, dv[mi][dn][2 * hh], dv[mi][dn][2 * hh + 1]);
          }
        }
      }
    }
  }
}
}  // namespace flash
