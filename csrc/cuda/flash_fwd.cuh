/* The mma.sync flash-attention forward (sm_80 and sm_90a): FlashAttention-2's structure (Dao, 2023)
 * written for this ABI with mma.sync m16n8k16, ldmatrix from swizzled tiles (flash_tiles.cuh) and
 * cp.async double buffering. Included only by flash_attention.cu, which launches it.
 *
 * Forward: a block owns BQ = NW * MW * 16 queries of one head (warp w owns MW slices of 16 rows) and
 * walks the key tiles its queries can see from the last (the ones the causal frontier crosses, the
 * only ones that are masked) to the first; K and V tiles are double-buffered with cp.async. Scores
 * stay in registers; the online softmax runs in base 2 (scores times scale*log2(e), ex2.approx).
 * The grid is (heads, query tiles) with the latest query tiles (the most keys) scheduled first. */
#pragma once
#include "flash_tiles.cuh"

namespace flash {

template <int HD_, int NW_, int MW_, int BK_>
struct FwdCfg {
  static constexpr int HD = HD_, NW = NW_, MW = MW_, BK = BK_;
  static constexpr int THREADS = NW * 32, BQ = NW * MW * 16;
  static constexpr int Q_BYTES = BQ * HD * 2, KV_BYTES = BK * HD * 2;
  static constexpr int SMEM = Q_BYTES + 4 * KV_BYTES;
  static constexpr bool Q_REGS = MW * HD <= 128; /* keep the warp's Q fragments in registers */
  static constexpr int MIN_BLOCKS = THREADS <= 128 ? 2 : 1;
};

template <class C>
__global__ void __launch_bounds__(C::THREADS, C::MIN_BLOCKS) flash_fwd_kernel(const FwdParams p) {
  constexpr int HD = C::HD, MW = C::MW, BK = C::BK, BQ = C::BQ, THREADS = C::THREADS;
  constexpr int RB = HD * 2; /* row bytes of Q, K, V tiles */
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t sQ = smem_u32(smem), sK = sQ + C::Q_BYTES, sV = sK + 2 * C::KV_BYTES;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t4 = lane & 3;
  const int h = blockIdx.x, kvh = h / p.group;
  const int64_t tq = p.tq, tk = p.tk, delta = p.delta;
  const float sl2 = p.scale_log2;
  const bf16 *qh = p.q + (int64_t)h * HD, *kh = p.k + (int64_t)kvh * HD, *vh = p.v + (int64_t)kvh * HD;
  const int wrow = warp * MW * 16; /* the warp's first row in the tile */
  const Frag<RB> fq(sQ + wrow * RB, FRAG_A, 0, lane), fk(sK, FRAG_B, 0, lane), fv(sV, FRAG_BT, 0, lane);

  for (int yt = blockIdx.y; yt < p.n_qtiles; yt += gridDim.y) {
    const int64_t i0 = (int64_t)(p.n_qtiles - 1 - yt) * BQ; /* latest query tiles first */
    const int64_t j_end = fwd_keys_seen<BQ>(p, i0);
    __syncthreads(); /* the previous tile's shared memory is no longer read */
    if (j_end <= 0) {
      fwd_store_empty<BQ, HD, THREADS>(p, h, i0);
      continue;
    }
    const int n_kt = (int)((j_end + BK - 1) / BK);

    load_tile<BQ, HD, THREADS>(sQ, qh, i0, tq, p.q_stride);
    load_tile<BK, HD, THREADS>(sK, kh, (int64_t)(n_kt - 1) * BK, tk, p.kv_stride);
    load_tile<BK, HD, THREADS>(sV, vh, (int64_t)(n_kt - 1) * BK, tk, p.kv_stride);
    cp_async_commit();

    float o[MW][HD / 8][4];
    float m[MW][2], l[MW][2];
#pragma unroll
    for (int mi = 0; mi < MW; mi++) {
#pragma unroll
      for (int hh = 0; hh < 2; hh++) {
        m[mi][hh] = -INFINITY;
        l[mi][hh] = 0.0f;
      }
#pragma unroll
      for (int dn = 0; dn < HD / 8; dn++)
#pragma unroll
        for (int e = 0; e < 4; e++) o[mi][dn][e] = 0.0f;
    }
    uint32_t qf[C::Q_REGS ? MW : 1][C::Q_REGS ? HD / 16 : 1][4];

    for (int t = 0; t < n_kt; t++) {
      const int kt = n_kt - 1 - t, buf = t & 1;
      if (t + 1 < n_kt) {
        load_tile<BK, HD, THREADS>(sK + (buf ^ 1) * C::KV_BYTES, kh, (int64_t)(kt - 1) * BK, tk, p.kv_stride);
        load_tile<BK, HD, THREADS>(sV + (buf ^ 1) * C::KV_BYTES, vh, (int64_t)(kt - 1) * BK, tk, p.kv_stride);
      }
      cp_async_commit();
      cp_async_wait<1>();
      __syncthreads();
      const uint32_t koff = buf * C::KV_BYTES; /* the buffer's offset in the K and V tiles */

      if (C::Q_REGS && t == 0) {
#pragma unroll
        for (int mi = 0; mi < MW; mi++)
#pragma unroll
          for (int kk = 0; kk < HD / 16; kk++)
            ld_frag(qf[C::Q_REGS ? mi : 0][C::Q_REGS ? kk : 0], fq, 0, mi * 16, kk);
      }

      /* S = Q K^T */
      float s[MW][BK / 8][4];
#pragma unroll
      for (int mi = 0; mi < MW; mi++)
#pragma unroll
        for (int nt = 0; nt < BK / 8; nt++)
#pragma unroll
          for (int e = 0; e < 4; e++) s[mi][nt][e] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < HD / 16; kk++) {
        uint32_t a[MW][4];
#pragma unroll
        for (int mi = 0; mi < MW; mi++) {
          if (C::Q_REGS) {
#pragma unroll
            for (int e = 0; e < 4; e++) a[mi][e] = qf[C::Q_REGS ? mi : 0][C::Q_REGS ? kk : 0][e];
          } else {
            ld_frag(a[mi], fq, 0, mi * 16, kk);
          }
        }
#pragma unroll
        for (int np = 0; np < BK / 16; np++) {
          uint32_t b[4];
          ld_frag(b, fk, koff, np * 16, kk);
#pragma unroll
          for (int mi = 0; mi < MW; mi++) {
            mma_bf16(s[mi][2 * np], a[mi], b[0], b[1]);
            mma_bf16(s[mi][2 * np + 1], a[mi], b[2], b[3]);
          }
        }
      }

      /* Mask the tiles that the causal frontier or the end of the keys crosses. */
      const int64_t j0 = (int64_t)kt * BK;
      if (j0 + BK - 1 - i0 > delta || j0 + BK > tk) {
        const int lim = clamp_int(delta - (j0 - i0)); /* visible iff jj - ii <= lim (tile-local) */
        const int jmax = clamp_int(tk - j0);
#pragma unroll
        for (int mi = 0; mi < MW; mi++)
#pragma unroll
          for (int nt = 0; nt < BK / 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
              const int ii = wrow + mi * 16 + g + ((e >> 1) << 3), jj = nt * 8 + 2 * t4 + (e & 1);
              if (jj >= jmax || jj - ii > lim) s[mi][nt][e] = -INFINITY;
            }
      }

      /* Online softmax, base 2. */
      float alpha[MW][2];
      bool changed = false;
#pragma unroll
      for (int mi = 0; mi < MW; mi++) {
#pragma unroll
        for (int hh = 0; hh < 2; hh++) {
          float mx = m[mi][hh];
#pragma unroll
          for (int nt = 0; nt < BK / 8; nt++) mx = fmaxf(mx, fmaxf(s[mi][nt][2 * hh], s[mi][nt][2 * hh + 1]));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
          const float ms = mx == -INFINITY ? 0.0f : mx * sl2; /* nothing seen yet: every p is 0 */
          alpha[mi][hh] = ex2(m[mi][hh] * sl2 - ms);
          changed |= mx != m[mi][hh];
          m[mi][hh] = mx;
          float rs = 0.0f;
#pragma unroll
          for (int nt = 0; nt < BK / 8; nt++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
              const float pv = ex2(fmaf(s[mi][nt][2 * hh + e], sl2, -ms));
              s[mi][nt][2 * hh + e] = pv;
              rs += pv;
            }
          }
          l[mi][hh] = l[mi][hh] * alpha[mi][hh] + rs;
        }
      }
      /* Rescale O only when some row of the warp has a new maximum (alpha = 1 exactly otherwise). */
      if (__any_sync(0xffffffffu, changed)) {
#pragma unroll
        for (int mi = 0; mi < MW; mi++)
#pragma unroll
          for (int dn = 0; dn < HD / 8; dn++)
#pragma unroll
            for (int e = 0; e < 4; e++) o[mi][dn][e] *= alpha[mi][e >> 1];
      }

      /* O += P V */
#pragma unroll
      for (int kk = 0; kk < BK / 16; kk++) {
        uint32_t pa[MW][4];
#pragma unroll
        for (int mi = 0; mi < MW; mi++) {
          pa[mi][0] = pack_bf16(s[mi][2 * kk][0], s[mi][2 * kk][1]);
          pa[mi][1] = pack_bf16(s[mi][2 * kk][2], s[mi][2 * kk][3]);
          pa[mi][2] = pack_bf16(s[mi][2 * kk + 1][0], s[mi][2 * kk + 1][1]);
          pa[mi][3] = pack_bf16(s[mi][2 * kk + 1][2], s[mi][2 * kk + 1][3]);
        }
#pragma unroll
        for (int np = 0; np < HD / 16; np++) {
          uint32_t b[4];
          ld_frag_t(b, fv, koff, kk * 16, np);
#pragma unroll
          for (int mi = 0; mi < MW; mi++) {
            mma_bf16(o[mi][2 * np], pa[mi], b[0], b[1]);
            mma_bf16(o[mi][2 * np + 1], pa[mi], b[2], b[3]);
          }
        }
      }
      __syncthreads(); /* this buffer is refilled next iteration */
    }

    /* Epilogue: normalise, stage the warp's rows in its own rows of the Q tile, store 16 bytes a lane. */
#pragma unroll
    for (int mi = 0; mi < MW; mi++) {
#pragma unroll
      for (int hh = 0; hh < 2; hh++) {
        float lsum = l[mi][hh];
        lsum += __shfl_xor_sync(0xffffffffu, lsum, 1);
        lsum += __shfl_xor_sync(0xffffffffu, lsum, 2);
        const float inv = lsum > 0.0f ? 1.0f / lsum : 0.0f;
        const int rr = wrow + mi * 16 + g + hh * 8;
#pragma unroll
        for (int dn = 0; dn < HD / 8; dn++)
          st_shared_u32(sQ + swz<RB>(rr, dn) + 4 * t4, pack_bf16(o[mi][dn][2 * hh] * inv, o[mi][dn][2 * hh + 1] * inv));
        const int64_t i = i0 + rr;
        if (t4 == 0 && i < tq)
          p.lse[(int64_t)h * tq + i] = lsum > 0.0f ? (m[mi][hh] * sl2 + __log2f(lsum)) * FLASH_LN2 : -INFINITY;
      }
    }
    __syncwarp();
#pragma unroll
    for (int it = 0; it < MW * 16 * (HD / 8) / 32; it++) {
      const int idx = lane + it * 32;
      const int rr = wrow + idx / (HD / 8), c = idx % (HD / 8);
      const int64_t i = i0 + rr;
      if (i < tq)
        *reinterpret_cast<uint4 *>(p.out + i * p.q_stride + (int64_t)h * HD + c * 8) = ld_shared_u128(sQ + swz<RB>(rr, c));
    }
  }
}
}  // namespace flash
