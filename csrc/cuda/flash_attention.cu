/* Flash attention on tensor cores: bf16 operands, fp32 accumulation, head dims 64 and 128.
 *
 * The structure is FlashAttention-2's (Dao, 2023), written for this ABI with mma.sync m16n8k16
 * (bf16 in, fp32 out), ldmatrix from XOR-swizzled shared memory and cp.async double buffering, so
 * one source serves sm_80 and sm_90a.
 *
 * Fragment conventions (PTX ISA, "mma.m16n8k16"): with lane = 4 g + t (g = lane >> 2, t = lane & 3),
 * an A fragment (16 x 16, row) is a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8,
 * 2t+8..); a B fragment (16 x 8, col) is b0 = (k 2t..2t+1, n g), b1 = (k 2t+8.., n g); C/D is
 * c0,c1 = (g, 2t..2t+1), c2,c3 = (g+8, 2t..2t+1). Two neighbouring n8 C tiles in fp32 are, after
 * conversion to bf16 pairs, exactly the A fragment of the next product (P of softmax(QK^T) feeds PV
 * without a trip through shared memory).
 *
 * Shared-memory tiles are row-major with rows of 128 or 256 bytes cut into 16-byte chunks; chunk c
 * of row r lives at chunk c ^ (r & 7) of that row, so the eight rows an ldmatrix phase reads (same
 * logical chunk) hit eight different bank groups, and cp.async writes whole chunks.
 *
 * Forward: a block owns BQ = NW * MW * 16 queries of one head (warp w owns MW slices of 16 rows) and
 * walks the key tiles its queries can see from the last (the ones the causal frontier crosses, the
 * only ones that are masked) to the first; K and V tiles are double-buffered with cp.async. Scores
 * stay in registers; the online softmax runs in base 2 (scores times scale*log2(e), ex2.approx).
 * The grid is (heads, query tiles) with the latest query tiles (the most keys) scheduled first.
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
 * dK/dV rows, P^T and dS^T fed from registers) stays as a variant. bench/NOTES.md has the numbers.
 *
 * Tuning knobs (environment, read per call; for benchmarks): DISTFLASH_FLASH=0 turns this path off;
 * DISTFLASH_FLASH_FWD and DISTFLASH_FLASH_BWD pick a tile variant (see the dispatch tables below);
 * DISTFLASH_FLASH_FWD=4 and 5 are the Hopper forward (wgmma, csrc/cuda/flash_fwd_sm90.cu; 5 with
 * intra-warpgroup overlap) and DISTFLASH_FLASH_BWD=4 the Hopper backward (flash_bwd_sm90.cu), not
 * yet the defaults: they have not run on a GPU. */
#include <stdlib.h>

#include <initializer_list>
#include <mutex>

#include "flash_attention.cuh"
#include "flash_internal.cuh"

namespace flash {

/* ---------------- swizzled tiles ---------------- */

/* Byte offset of 16-byte chunk `chunk` of row `row` in a tile whose rows are ROW_BYTES long. */
template <int ROW_BYTES>
__device__ __forceinline__ uint32_t swz(int row, int chunk) {
  static_assert(ROW_BYTES % 128 == 0, "rows of whole 128-byte lines");
  return (uint32_t)(row * ROW_BYTES + ((chunk ^ (row & 7)) << 4));
}

/* cp.async rows [row0, row0 + ROWS) of a [rows_total, *] bf16 tensor (row stride `stride` elements,
 * `g` already at the head's first column) into a swizzled ROWS x HD tile; rows past the end are zero.
 * Thread tid copies chunk tid % CPR of rows tid / CPR + k * RSTEP; RSTEP is a multiple of 8, so all
 * its chunks share one swizzle and one base address (the rest are immediates). */
template <int ROWS, int HD, int THREADS>
__device__ __forceinline__ void load_tile(uint32_t dst, const bf16 *g, int64_t row0, int64_t rows_total,
                                          int64_t stride) {
  constexpr int CPR = HD / 8, RSTEP = THREADS / CPR;
  static_assert(THREADS % CPR == 0 && RSTEP % 8 == 0 && ROWS % RSTEP == 0, "tile chunks split evenly");
  const int r0 = (int)threadIdx.x / CPR, c = (int)threadIdx.x % CPR;
  const uint32_t d0 = dst + swz<HD * 2>(r0, c);
  const int64_t first = row0 + r0;
  const bf16 *src = g + first * stride + c * 8;
#pragma unroll
  for (int it = 0; it < ROWS / RSTEP; it++) {
    const bool valid = first + it * RSTEP < rows_total;
    cp_async16(d0 + it * RSTEP * HD * 2, valid ? src + it * RSTEP * stride : g, valid);
  }
}

/* Per-lane addresses of one ldmatrix access pattern over a swizzled tile with rows of RB bytes. A lane
 * reads row R + rl (R a multiple of 8) and logical chunk 2 cp + b. Since rl = lane (mod 8), the
 * physical chunk is (2 cp + b) ^ (lane & 7), and for cp = cp0 + j + 4 i (j < 4) that is the physical
 * chunk of cp0 + j plus 8 i: four registers cover every (R, cp), the rest folds into immediates
 * (with full unrolling R and cp are compile-time constants). Patterns (lane -> rl, b):
 *   A   (rows m, columns k of a [m][k] tile; ldmatrix):         rl = lane & 15,            b = lane >> 4
 *   B   (n-tiles n, n+8 over k of a [n][k] tile; ldmatrix) and
 *   A^T (rows m, columns k of a [k][m] tile; ldmatrix.trans):  rl = lane & 7 | (lane >> 4) << 3, b = lane >> 3 & 1
 *   B^T (n-tiles n, n+8 over k of a [k][n] tile; .trans):      rl = lane & 7 | (lane >> 3 & 1) << 3, b = lane >> 4
 * For A and B, R is the first row (m or n) and cp the k step; for A^T and B^T, R is the k row and cp
 * the m or n step. */
enum FragKind { FRAG_A, FRAG_B, FRAG_AT = FRAG_B, FRAG_BT };

template <int RB>
struct Frag {
  uint32_t p[4];
  __device__ __forceinline__ Frag(uint32_t base, FragKind kind, int cp0, int lane) {
    int rl, b;
    if (kind == FRAG_A) {
      rl = lane & 15;
      b = lane >> 4;
    } else if (kind == FRAG_B) {
      rl = (lane & 7) | ((lane >> 4) << 3);
      b = (lane >> 3) & 1;
    } else {
      rl = (lane & 7) | (((lane >> 3) & 1) << 3);
      b = lane >> 4;
    }
#pragma unroll
    for (int j = 0; j < 4; j++) p[j] = base + (uint32_t)(rl * RB + ((((2 * (cp0 + j) + b) ^ (lane & 7))) << 4));
  }
  /* R: a multiple of 8; cp relative to cp0. */
  __device__ __forceinline__ uint32_t at(int R, int cp) const { return p[cp & 3] + R * RB + (cp & ~3) * 32; }
};

template <int RB>
__device__ __forceinline__ void ld_frag(uint32_t (&r)[4], const Frag<RB> &f, uint32_t off, int R, int cp) {
  ldsm_x4(f.at(R, cp) + off, r[0], r[1], r[2], r[3]);
}
template <int RB>
__device__ __forceinline__ void ld_frag_t(uint32_t (&r)[4], const Frag<RB> &f, uint32_t off, int R, int cp) {
  ldsm_x4_t(f.at(R, cp) + off, r[0], r[1], r[2], r[3]);
}


/* ---------------- forward ---------------- */


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

/* ---------------- backward ---------------- */

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
  const bf16 *qh = p.q + (int64_t)h * HD, *doh = p.dout + (int64_t)h * HD;
  const bf16 *kh = p.k + (int64_t)kvh * HD, *vh = p.v + (int64_t)kvh * HD;
  const float *Lh = p.L + (int64_t)h * p.tq_pad, *Dh = p.D + (int64_t)h * p.tq_pad;
  const int krow = warp * 16; /* the warp's first key row in the tile */
  const int qr = (warp % C::RG) * 16, qc = (warp / C::RG) * C::DQC; /* the warp's dQ block */
  const Frag<RB> fk(sK + krow * RB, FRAG_A, 0, lane), fv(sV + krow * RB, FRAG_A, 0, lane);
  const Frag<RB> fq(sQ, FRAG_B, 0, lane), fdo(sdO, FRAG_B, 0, lane);
  const Frag<RB> fqt(sQ, FRAG_BT, 0, lane), fdot(sdO, FRAG_BT, 0, lane), fkt(sK, FRAG_BT, qc / 16, lane);
  const Frag<SB> fds(sdS, FRAG_AT, qr / 16, lane);
  const int nqt = (int)((tq + BQ - 1) / BQ);

  auto load_q_tile = [&](int qt, int buf) {
    const int64_t i0 = (int64_t)qt * BQ;
    load_tile<BQ, HD, THREADS>(sQ + buf * C::QT_BYTES, qh, i0, tq, p.q_stride);
    load_tile<BQ, HD, THREADS>(sdO + buf * C::QT_BYTES, doh, i0, tq, p.q_stride);
    if (tid < BQ / 4) cp_async16(sL + buf * BQ * 4 + tid * 16, Lh + i0 + tid * 4, true);
    else if (tid < BQ / 2) cp_async16(sD + buf * BQ * 4 + (tid - BQ / 4) * 16, Dh + i0 + (tid - BQ / 4) * 4, true);
  };

  for (int kt = blockIdx.y; kt < p.n_ktiles; kt += gridDim.y) {
    const int64_t j0 = (int64_t)kt * BK;
    int64_t i_first = j0 - delta; /* the first query that sees key j0 */
    if (i_first < 0) i_first = 0;
    __syncthreads(); /* the previous key tile's shared memory is no longer read */
    if (i_first >= tq) continue;
    const int qt0 = (int)(i_first / BQ);

    load_tile<BK, HD, THREADS>(sK, kh, j0, tk, p.kv_stride);
    load_tile<BK, HD, THREADS>(sV, vh, j0, tk, p.kv_stride);
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
  const bf16 *qh = p.q + (int64_t)h * HD, *doh = p.dout + (int64_t)h * HD;
  const bf16 *kh = p.k + (int64_t)kvh * HD, *vh = p.v + (int64_t)kvh * HD;
  const float *Lh = p.L + (int64_t)h * p.tq_pad, *Dh = p.D + (int64_t)h * p.tq_pad;
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
    load_tile<BQ, HD, THREADS>(sQ + buf * C::QT_BYTES, qh, i0, tq, p.q_stride);
    load_tile<BQ, HD, THREADS>(sdO + buf * C::QT_BYTES, doh, i0, tq, p.q_stride);
    if (tid < BQ / 4) cp_async16(sL + buf * BQ * 4 + tid * 16, Lh + i0 + tid * 4, true);
    else if (tid < BQ / 2) cp_async16(sD + buf * BQ * 4 + (tid - BQ / 4) * 16, Dh + i0 + (tid - BQ / 4) * 4, true);
  };

  for (int kt = blockIdx.y; kt < p.n_ktiles; kt += gridDim.y) {
    const int64_t j0 = (int64_t)kt * BK;
    int64_t i_first = j0 - delta; /* the first query that sees key j0 */
    if (i_first < 0) i_first = 0;
    __syncthreads(); /* the previous key tile's shared memory is no longer read */
    if (i_first >= tq) continue;
    const int qt0 = (int)(i_first / BQ);

    load_tile<BK, HD, THREADS>(sK, kh, j0, tk, p.kv_stride);
    load_tile<BK, HD, THREADS>(sV, vh, j0, tk, p.kv_stride);
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

/* ---------------- host side ---------------- */

static int env_int(const char *name, int fallback) {
  const char *s = getenv(name);
  if (!s || !*s) return fallback;
  char *end = NULL;
  const long v = strtol(s, &end, 10);
  return (end && *end == 0) ? (int)v : fallback;
}

static bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

/* The calls these kernels take: bf16 (the caller checked), hd 64 or 128, a positive scale (the online
 * softmax keeps the maximum of raw scores), 16-byte aligned tensors (lse may be anywhere), not
 * switched off. */
static bool flash_applies(int hd, float scale, std::initializer_list<const void *> ptrs) {
  if (hd != 64 && hd != 128) return false;
  if (!(scale > 0.0f)) return false;
  for (const void *ptr : ptrs)
    if (!aligned16(ptr)) return false;
  return env_int("DISTFLASH_FLASH", 1) != 0;
}

static int64_t clamp_delta(int64_t q_pos0, int64_t k_pos0) {
  const int64_t d = q_pos0 - k_pos0, lim = (int64_t)1 << 50;
  return d < -lim ? -lim : d > lim ? lim : d;
}

static unsigned grid_y(int64_t tiles) { return (unsigned)(tiles < 65535 ? tiles : 65535); }

template <class C>
static df_status launch_fwd(const FwdParams &prm, int nh, cudaStream_t s) {
  auto kernel = flash_fwd_kernel<C>;
  DF_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM));
  FwdParams p = prm;
  p.n_qtiles = (int)((p.tq + C::BQ - 1) / C::BQ);
  kernel<<<dim3((unsigned)nh, grid_y(p.n_qtiles)), C::THREADS, C::SMEM, s>>>(p);
  DF_CUDA_LAUNCHED();
  return DF_OK;
}

template <class C>
static df_status launch_bwd(const BwdParams &prm, int nh, cudaStream_t s) {
  auto kernel = flash_bwd_kernel<C>;
  DF_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM));
  BwdParams p = prm;
  p.n_ktiles = (int)((p.tk + C::BK - 1) / C::BK);
  kernel<<<dim3((unsigned)nh, grid_y(p.n_ktiles)), C::THREADS, C::SMEM, s>>>(p);
  DF_CUDA_LAUNCHED();
  return DF_OK;
}

template <class C>
static df_status launch_bwd2(const BwdParams &prm, int nh, cudaStream_t s) {
  auto kernel = flash_bwd2_kernel<C>;
  DF_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM));
  BwdParams p = prm;
  p.n_ktiles = (int)((p.tk + C::BK - 1) / C::BK);
  kernel<<<dim3((unsigned)nh, grid_y(p.n_ktiles)), C::THREADS, C::SMEM, s>>>(p);
  DF_CUDA_LAUNCHED();
  return DF_OK;
}

/* Scratch for the backward's L and D rows: one growing cudaMalloc'd buffer per (device, stream),
 * outside the df_malloc registry, like cuBLASLt's workspace. Growing one waits for its stream
 * first (earlier kernels on it may still read the old buffer). Streams beyond the table fall back to
 * the general kernels. */
#define FLASH_MAX_SCRATCH 32
struct Scratch {
  int device;
  cudaStream_t stream;
  void *ptr;
  uint64_t bytes;
};
static Scratch scratch_table[FLASH_MAX_SCRATCH];
static int scratch_count;
static std::mutex scratch_mutex;

static df_status scratch_for(cudaStream_t stream, uint64_t bytes, void **out) {
  std::lock_guard<std::mutex> lock(scratch_mutex);
  *out = NULL;
  int device = 0;
  DF_CUDA(cudaGetDevice(&device));
  Scratch *slot = NULL;
  for (int i = 0; i < scratch_count; i++)
    if (scratch_table[i].device == device && scratch_table[i].stream == stream) slot = &scratch_table[i];
  if (!slot) {
    if (scratch_count == FLASH_MAX_SCRATCH) return DF_OK;
    slot = &scratch_table[scratch_count++];
    *slot = Scratch{device, stream, NULL, 0};
  }
  if (slot->bytes < bytes) {
    if (slot->ptr) {
      DF_CUDA(cudaStreamSynchronize(stream));
      DF_CUDA(cudaFree(slot->ptr));
      slot->ptr = NULL;
      slot->bytes = 0;
    }
    const uint64_t want = (bytes + (1ull << 20) - 1) & ~((1ull << 20) - 1);
    DF_CUDA(cudaMalloc(&slot->ptr, want));
    slot->bytes = want;
  }
  *out = slot->ptr;
  return DF_OK;
}

}  // namespace flash

using namespace flash;

df_status flash_attention_forward(bool *handled, bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v,
                                  int64_t tq, int64_t tk, int nh, int nkv, int hd, int64_t q_pos0, int64_t k_pos0,
                                  float scale, cudaStream_t s) {
  *handled = false;
  if (!flash_applies(hd, scale, {out, q, k, v})) return DF_OK;
  FwdParams p{};
  p.q = q;
  p.k = k;
  p.v = v;
  p.out = out;
  p.lse = lse;
  p.tq = tq;
  p.tk = tk;
  p.q_stride = (int64_t)nh * hd;
  p.kv_stride = (int64_t)nkv * hd;
  p.delta = clamp_delta(q_pos0, k_pos0);
  p.group = nh / nkv;
  p.scale_log2 = scale * FLASH_LOG2E;
  *handled = true;
  /* Variants (timings in bench/NOTES.md). */
  const int variant = env_int("DISTFLASH_FLASH_FWD", 0);
  if (hd == 128) {
    switch (variant) {
      case 4: /* the Hopper kernels (csrc/cuda/flash_fwd_sm90.cu) where they run, else the default */
      case 5:
        if (sm90_available()) return launch_fwd_sm90(p, nh, 128, variant == 5, s);
        return launch_fwd<FwdCfg<128, 4, 2, 64>>(p, nh, s);
      case 1: return launch_fwd<FwdCfg<128, 4, 2, 32>>(p, nh, s);
      case 2: return launch_fwd<FwdCfg<128, 8, 1, 128>>(p, nh, s);
      case 3: return launch_fwd<FwdCfg<128, 8, 2, 32>>(p, nh, s);
      default: return launch_fwd<FwdCfg<128, 4, 2, 64>>(p, nh, s);
    }
  }
  switch (variant) {
    case 4:
    case 5:
      if (sm90_available()) return launch_fwd_sm90(p, nh, 64, variant == 5, s);
      return launch_fwd<FwdCfg<64, 4, 2, 64>>(p, nh, s);
    case 1: return launch_fwd<FwdCfg<64, 4, 2, 128>>(p, nh, s);
    case 2: return launch_fwd<FwdCfg<64, 8, 1, 128>>(p, nh, s);
    default: return launch_fwd<FwdCfg<64, 4, 2, 64>>(p, nh, s);
  }
}

df_status flash_attention_backward(bool *handled, float *dq, float *dk, float *dv, const bf16 *dout, const bf16 *q,
                                   const bf16 *k, const bf16 *v, const bf16 *out, const float *lse, int64_t tq,
                                   int64_t tk, int nh, int nkv, int hd, int64_t q_pos0, int64_t k_pos0, float scale,
                                   cudaStream_t s) {
  *handled = false;
  if (!flash_applies(hd, scale, {dq, dk, dv, dout, q, k, v, out})) return DF_OK;
  const int64_t tq_pad = (tq + 127) / 128 * 128;
  void *scratch = NULL;
  DF_CHECK(scratch_for(s, 2ull * sizeof(float) * (uint64_t)tq_pad * (uint64_t)nh, &scratch));
  if (!scratch) return DF_OK; /* no scratch slot for this stream: the general kernels run */
  BwdParams p{};
  p.q = q;
  p.k = k;
  p.v = v;
  p.dout = dout;
  p.dq = dq;
  p.dk = dk;
  p.dv = dv;
  float *L = static_cast<float *>(scratch), *D = L + tq_pad * nh;
  p.L = L;
  p.D = D;
  p.tq = tq;
  p.tk = tk;
  p.q_stride = (int64_t)nh * hd;
  p.kv_stride = (int64_t)nkv * hd;
  p.tq_pad = tq_pad;
  p.delta = clamp_delta(q_pos0, k_pos0);
  p.group = nh / nkv;
  p.scale = scale;
  p.scale_log2 = scale * FLASH_LOG2E;
  *handled = true;

  const uint64_t prep_threads = (uint64_t)tq_pad * (uint64_t)nh * 32u;
  flash_bwd_prep_kernel<<<df_grid_for(prep_threads, 256), 256, 0, s>>>(L, D, dout, out, lse, tq, tq_pad, nh, hd);
  DF_CUDA_LAUNCHED();

  /* Variant 0 is the default (bench/NOTES.md: 16-byte dQ atomics measured no faster). */
  const int variant = env_int("DISTFLASH_FLASH_BWD", 0);
  if (hd == 128) {
    switch (variant) {
      case 4: /* the Hopper kernel (csrc/cuda/flash_bwd_sm90.cu) where it runs, else the default */
        if (sm90_available()) return launch_bwd_sm90(p, nh, 128, s);
        return launch_bwd2<Bwd2Cfg<128, false>>(p, nh, s);
      case 1: return launch_bwd2<Bwd2Cfg<128, true>>(p, nh, s);
      case 2: return launch_bwd<BwdCfg<128, 8, 64>>(p, nh, s);
      case 3: return launch_bwd<BwdCfg<128, 8, 32>>(p, nh, s);
      default: return launch_bwd2<Bwd2Cfg<128, false>>(p, nh, s);
    }
  }
  switch (variant) {
    case 4:
      if (sm90_available()) return launch_bwd_sm90(p, nh, 64, s);
      return launch_bwd2<Bwd2Cfg<64, false>>(p, nh, s);
    case 1: return launch_bwd2<Bwd2Cfg<64, true>>(p, nh, s);
    case 2: return launch_bwd<BwdCfg<64, 8, 64>>(p, nh, s);
    default: return launch_bwd2<Bwd2Cfg<64, false>>(p, nh, s);
  }
}
