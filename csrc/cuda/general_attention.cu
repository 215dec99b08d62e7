/* The general attention kernels of one (query block, key block) pair, forward and backward: the
 * path for fp32, for head dims other than 64 and 128, and for every document-masked call
 * (general_attention.cuh has the contract; csrc/cuda/attention.cu decides what runs here).
 *
 * Forward (flash-attention style, fp32 on CUDA cores): a thread block owns BQ queries of one head and
 * walks the key tiles that its queries can see (tiles past the causal frontier, in global positions
 * q_pos0 / k_pos0, are never loaded). Q, K, V tiles are staged in shared memory as fp32; the scores of
 * a tile go through an online softmax (running max and sum per query row, in registers), and P V is
 * accumulated in registers. 128 threads form a 16 x 8 grid: thread (ty, tx) owns query rows
 * ty*RQ .. ty*RQ+RQ-1, score columns tx + 8*b and output columns tx + 8*c; a row's statistics are
 * reduced over the 8 lanes that share it with shuffles.
 *
 * Backward: a thread block owns BK keys of one kv head and loops over the query heads of its group
 * and over the query tiles that can see its keys. Per tile it recomputes P = exp(scale q.k - lse) from
 * the final lse, D_i = dout_i . out_i (recomputed per tile: no scratch buffer needed), dP = dout v,
 * dS = P (dP - D), accumulates dK, dV in registers and adds dQ to global memory with fp32 atomics.
 * dK and dV are added with atomics too, so concurrent backward calls into one gradient are safe.
 *
 * Head dims: the kernels are templated on a padded head dim HDP in {32, 64, 128, 256}; hd = 64 and
 * hd = 128 run exactly, any other even hd <= 256 runs in the next larger instantiation with the extra
 * columns zero-filled (they add nothing to dot products and are never written).
 *
 * Documents (the _docs entries): a query at global position p sees a key at s iff
 * doc_start(p) <= s <= p. Each thread looks up the document bound of the rows it owns once (binary
 * search in doc_starts, device memory): the forward keeps doc_start per query row and starts at the
 * first key tile its first query can see; the backward keeps doc_end per key row (p sees s iff
 * s <= p < doc_end(s)) and stops at the last query tile that can see its keys. The kernels are
 * templated on DOCS: the causal instantiation carries no document code, so the causal path is the
 * code that ran on GPUs before documents existed (its PTX compared, parameter lists aside).
 * A sliding window W > 0 (Mistral; transformers' sliding_window_overlay: p - s < W) rides on the
 * DOCS instantiation: the forward's per-row bound becomes max(doc_start(p), p - W + 1) and the
 * backward's per-key end min(doc_end(s), s + W), so the tiles skipped follow the window too. A bf16
 * windowed pair without documents goes to the bf16 backends first: the Hopper kernels take it (at
 * tensor-core rate); these general kernels run the rest. Neither windowed path has run on a GPU yet
 * (the Hopper one passed the host emulation, tests/flash_sm90_emu.test.ts; the CPU backend is the
 * reference of both).
 * The document path passed its CUDA tests on an H100 (2026-12-07); the CPU backend
 * (csrc/cpu/attention.c) is its reference.
 */
#include <math.h>

#include "general_attention.cuh"

#define ATT_THREADS 128
#define LOG2E_F 1.4426950408889634f
#define LN2_F 0.6931471805599453f

/* ---------------- documents ---------------- */

/* Number of document starts <= p (binary search; starts ascend strictly). */
__device__ __forceinline__ int64_t starts_up_to(const int64_t *starts, int64_t n, int64_t p) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (starts[mid] <= p) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/* First position of the document holding p (0 without documents). */
__device__ __forceinline__ int64_t doc_start_of(const int64_t *starts, int64_t n, int64_t p) {
  const int64_t c = starts_up_to(starts, n, p);
  return c > 0 ? starts[c - 1] : 0;
}

/* First position after the document holding p (INT64_MAX for the last one, or without documents). */
__device__ __forceinline__ int64_t doc_end_of(const int64_t *starts, int64_t n, int64_t p) {
  const int64_t c = starts_up_to(starts, n, p);
  return c < n ? starts[c] : INT64_MAX;
}

/* First key position query p sees under the window (window 0: none): max(doc_start, p - window + 1). */
__device__ __forceinline__ int64_t window_first_key(int64_t doc_start, int64_t window, int64_t p) {
  return window > 0 && p - window + 1 > doc_start ? p - window + 1 : doc_start;
}

/* First query position past those that see key s under the window: min(doc_end, s + window). */
__device__ __forceinline__ int64_t window_query_end(int64_t doc_end, int64_t window, int64_t s) {
  return window > 0 && window <= INT64_MAX - s && s + window < doc_end ? s + window : doc_end;
}

/* ---------------- forward ---------------- */

template <int HDP, int BQ, int BK>
struct FwdShape {
  static constexpr int RQ = BQ / 16;   /* query rows per thread */
  static constexpr int CK = BK / 8;    /* score columns per thread */
  static constexpr int CO = HDP / 8;   /* output columns per thread */
  static constexpr int LDQ = HDP + 1;  /* padded row stride of Q and K tiles (conflict-free columns) */
  static constexpr int LDV = HDP;
  static constexpr int LDP = BK + 1;
  static constexpr int SMEM_FLOATS = BQ * LDQ + BK * LDQ + BK * LDV + BQ * LDP;
  static_assert(BQ % 16 == 0 && BK % 8 == 0 && HDP % 8 == 0, "tile shape");
};

/* Stage rows [row0, row0 + ROWS) of a [rows, heads, hd] tensor (head `head`) into shared memory as fp32,
 * times `mul`; rows >= rows_total and columns >= hd are zero. */
template <typename T, int ROWS, int HDP, int LD>
__device__ __forceinline__ void stage_tile(float *dst, const T *src, int64_t row0, int64_t rows_total,
                                           int64_t row_stride, int64_t head_offset, int hd, float mul) {
  for (int idx = threadIdx.x; idx < ROWS * HDP; idx += blockDim.x) {
    const int r = idx / HDP, d = idx % HDP;
    const int64_t row = row0 + r;
    float val = 0.0f;
    if (row < rows_total && d < hd) val = ld_f32(src + row * row_stride + head_offset + d) * mul;
    dst[r * LD + d] = val;
  }
}

template <typename T, int HDP, int BQ, int BK, bool DOCS>
__global__ void __launch_bounds__(ATT_THREADS)
    attention_forward_kernel(T *out, float *lse, const T *q, const T *k, const T *v, int64_t tq, int64_t tk, int nh,
                             int nkv, int hd, int64_t q_pos0, int64_t k_pos0, float scale_log2,
                             const int64_t *doc_starts, int64_t n_docs, int64_t window) {
  using S = FwdShape<HDP, BQ, BK>;
  constexpr int RQ = S::RQ, CK = S::CK, CO = S::CO, LDQ = S::LDQ, LDV = S::LDV, LDP = S::LDP;
  extern __shared__ float smem[];
  float *Qs = smem;
  float *Ks = Qs + BQ * LDQ;
  float *Vs = Ks + BK * LDQ;
  float *Ps = Vs + BK * LDV;

  const int tid = threadIdx.x, tx = tid & 7, ty = tid >> 3;
  const int h = blockIdx.y, g = h / (nh / nkv);
  const int64_t i0 = (int64_t)blockIdx.x * BQ;
  const int64_t q_stride = (int64_t)nh * hd, kv_stride = (int64_t)nkv * hd;

  /* Q pre-scaled by scale * log2(e): scores come out in base-2 units for exp2f. */
  stage_tile<T, BQ, HDP, LDQ>(Qs, q, i0, tq, q_stride, (int64_t)h * hd, hd, scale_log2);

  float acc[RQ][CO];
  float m_run[RQ], l_run[RQ];
  int64_t row_doc_start[DOCS ? RQ : 1]; /* keys before it: an earlier document or out of the window */
#pragma unroll
  for (int a = 0; a < RQ; a++) {
    if constexpr (DOCS) {
      const int64_t p = q_pos0 + i0 + ty * RQ + a;
      row_doc_start[a] = window_first_key(doc_start_of(doc_starts, n_docs, p), window, p);
    }
    m_run[a] = -INFINITY;
    l_run[a] = 0.0f;
#pragma unroll
    for (int c = 0; c < CO; c++) acc[a][c] = 0.0f;
  }

  /* Keys visible to the last query of the tile: k_pos0 + j <= q_pos0 + i_last; and to the first one:
   * k_pos0 + j >= window_first_key(q_pos0 + i0) (it never decreases with the position). */
  const int64_t i_last = (i0 + BQ < tq ? i0 + BQ : tq) - 1;
  int64_t j_end = q_pos0 + i_last - k_pos0 + 1;
  if (j_end > tk) j_end = tk;
  int64_t j_begin = 0;
  if constexpr (DOCS) {
    j_begin = window_first_key(doc_start_of(doc_starts, n_docs, q_pos0 + i0), window, q_pos0 + i0) - k_pos0;
    if (j_begin < 0) j_begin = 0;
  }

  for (int64_t j0 = j_begin; j0 < j_end; j0 += BK) {
    __syncthreads(); /* the previous tile's K, V, P are no longer read; Q is visible */
    stage_tile<T, BK, HDP, LDQ>(Ks, k, j0, tk, kv_stride, (int64_t)g * hd, hd, 1.0f);
    stage_tile<T, BK, HDP, LDV>(Vs, v, j0, tk, kv_stride, (int64_t)g * hd, hd, 1.0f);
    __syncthreads();

    float s[RQ][CK];
#pragma unroll
    for (int a = 0; a < RQ; a++)
#pragma unroll
      for (int b = 0; b < CK; b++) s[a][b] = 0.0f;
#pragma unroll 4
    for (int d = 0; d < HDP; d++) {
      float qa[RQ], kb[CK];
#pragma unroll
      for (int a = 0; a < RQ; a++) qa[a] = Qs[(ty * RQ + a) * LDQ + d];
#pragma unroll
      for (int b = 0; b < CK; b++) kb[b] = Ks[(tx + 8 * b) * LDQ + d];
#pragma unroll
      for (int a = 0; a < RQ; a++)
#pragma unroll
        for (int b = 0; b < CK; b++) s[a][b] = fmaf(qa[a], kb[b], s[a][b]);
    }

#pragma unroll
    for (int a = 0; a < RQ; a++) {
      const int64_t i = i0 + ty * RQ + a;
      const int64_t qpos = q_pos0 + i;
      float tmax = -INFINITY;
#pragma unroll
      for (int b = 0; b < CK; b++) {
        const int64_t j = j0 + tx + 8 * b;
        bool visible = i < tq && j < tk && k_pos0 + j <= qpos;
        if constexpr (DOCS) visible = visible && k_pos0 + j >= row_doc_start[a];
        if (!visible) s[a][b] = -INFINITY;
        tmax = fmaxf(tmax, s[a][b]);
      }
      tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));
      tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 2));
      tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 4));
      const float m_new = fmaxf(m_run[a], tmax);
      const float m_use = m_new == -INFINITY ? 0.0f : m_new; /* nothing seen yet: every p is 0 */
      const float alpha = exp2f(m_run[a] - m_use);
      float rsum = 0.0f;
#pragma unroll
      for (int b = 0; b < CK; b++) {
        const float p = exp2f(s[a][b] - m_use);
        rsum += p;
        Ps[(ty * RQ + a) * LDP + tx + 8 * b] = p;
      }
      rsum += __shfl_xor_sync(0xffffffffu, rsum, 1);
      rsum += __shfl_xor_sync(0xffffffffu, rsum, 2);
      rsum += __shfl_xor_sync(0xffffffffu, rsum, 4);
      l_run[a] = l_run[a] * alpha + rsum;
      m_run[a] = m_new;
#pragma unroll
      for (int c = 0; c < CO; c++) acc[a][c] *= alpha;
    }
    __syncthreads();

#pragma unroll 2
    for (int j = 0; j < BK; j++) {
      float pa[RQ], vc[CO];
#pragma unroll
      for (int a = 0; a < RQ; a++) pa[a] = Ps[(ty * RQ + a) * LDP + j];
#pragma unroll
      for (int c = 0; c < CO; c++) vc[c] = Vs[j * LDV + tx + 8 * c];
#pragma unroll
      for (int a = 0; a < RQ; a++)
#pragma unroll
        for (int c = 0; c < CO; c++) acc[a][c] = fmaf(pa[a], vc[c], acc[a][c]);
    }
  }

#pragma unroll
  for (int a = 0; a < RQ; a++) {
    const int64_t i = i0 + ty * RQ + a;
    if (i >= tq) continue;
    const float l = l_run[a];
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    T *o = out + i * q_stride + (int64_t)h * hd;
#pragma unroll
    for (int c = 0; c < CO; c++) {
      const int d = tx + 8 * c;
      if (d < hd) st_f32(o + d, acc[a][c] * inv);
    }
    if (tx == 0) lse[(int64_t)h * tq + i] = l > 0.0f ? m_run[a] * LN2_F + logf(l) : -INFINITY;
  }
}

/* ---------------- backward ---------------- */

template <int HDP, int BK, int BQ>
struct BwdShape {
  static constexpr int RK = BK / 16;  /* key rows per thread (scores, dK, dV) */
  static constexpr int CB = BQ / 8;   /* query columns per thread (scores) */
  static constexpr int RQ = BQ / 16;  /* query rows per thread (dQ) */
  static constexpr int CO = HDP / 8;  /* head-dim columns per thread */
  static constexpr int LD = HDP + 1;
  static constexpr int LDS = BQ + 1;
  static constexpr int SMEM_FLOATS = 2 * BK * LD + 2 * BQ * LD + 2 * BK * LDS + 2 * BQ;
  static_assert(BK % 16 == 0 && BQ % 16 == 0 && HDP % 8 == 0, "tile shape");
};

template <typename T, int HDP, int BK, int BQ, bool DOCS>
__global__ void __launch_bounds__(ATT_THREADS)
    attention_backward_kernel(float *dq, float *dk, float *dv, const T *dout, const T *q, const T *k, const T *v,
                              const T *out, const float *lse, int64_t tq, int64_t tk, int nh, int nkv, int hd,
                              int64_t q_pos0, int64_t k_pos0, float scale, const int64_t *doc_starts,
                              int64_t n_docs, int64_t window) {
  using S = BwdShape<HDP, BK, BQ>;
  constexpr int RK = S::RK, CB = S::CB, RQ = S::RQ, CO = S::CO, LD = S::LD, LDS = S::LDS;
  extern __shared__ float smem[];
  float *Ks = smem;
  float *Vs = Ks + BK * LD;
  float *Qs = Vs + BK * LD;
  float *dOs = Qs + BQ * LD;
  float *Ps = dOs + BQ * LD;
  float *dSs = Ps + BK * LDS;
  float *Ls = dSs + BK * LDS;
  float *Ds = Ls + BQ;

  const int tid = threadIdx.x, tx = tid & 7, ty = tid >> 3, lane = tid & 31, warp = tid >> 5;
  const int g = blockIdx.y, group = nh / nkv;
  const int64_t j0 = (int64_t)blockIdx.x * BK;
  const int64_t q_stride = (int64_t)nh * hd, kv_stride = (int64_t)nkv * hd;

  /* First query that sees key j0: q_pos0 + i >= k_pos0 + j0. */
  int64_t i_first = k_pos0 + j0 - q_pos0;
  if (i_first < 0) i_first = 0;
  if (i_first >= tq) return; /* no query of this block pair sees these keys */
  const int64_t i_begin = (i_first / BQ) * BQ;
  /* Queries past the document (or the window) of the tile's last key see none of its keys:
   * q_pos0 + i < window_query_end(k_pos0 + j_last) (it never decreases with the position). */
  int64_t i_end = tq;
  int64_t key_doc_end[DOCS ? RK : 1]; /* queries from this position on: later document or window */
  if constexpr (DOCS) {
    const int64_t j_last = (j0 + BK < tk ? j0 + BK : tk) - 1, s_last = k_pos0 + j_last;
    const int64_t last_end = window_query_end(doc_end_of(doc_starts, n_docs, s_last), window, s_last);
    if (last_end - q_pos0 < tq) i_end = last_end - q_pos0;
#pragma unroll
    for (int a = 0; a < RK; a++) {
      const int64_t s_a = k_pos0 + j0 + ty * RK + a;
      key_doc_end[a] = window_query_end(doc_end_of(doc_starts, n_docs, s_a), window, s_a);
    }
  }

  stage_tile<T, BK, HDP, LD>(Ks, k, j0, tk, kv_stride, (int64_t)g * hd, hd, 1.0f);
  stage_tile<T, BK, HDP, LD>(Vs, v, j0, tk, kv_stride, (int64_t)g * hd, hd, 1.0f);

  float dk_acc[RK][CO], dv_acc[RK][CO];
#pragma unroll
  for (int a = 0; a < RK; a++)
#pragma unroll
    for (int c = 0; c < CO; c++) dk_acc[a][c] = dv_acc[a][c] = 0.0f;

  for (int h = g * group; h < (g + 1) * group; h++) {
    const int64_t head_off = (int64_t)h * hd;
    for (int64_t i0 = i_begin; i0 < i_end; i0 += BQ) {
      __syncthreads(); /* the previous tile's Q, dO, P, dS, L, D are no longer read */
      stage_tile<T, BQ, HDP, LD>(Qs, q, i0, tq, q_stride, head_off, hd, 1.0f);
      stage_tile<T, BQ, HDP, LD>(dOs, dout, i0, tq, q_stride, head_off, hd, 1.0f);
      __syncthreads();
      /* L_i and D_i = dout_i . out_i, one warp per query row. */
      for (int r = warp; r < BQ; r += ATT_THREADS / 32) {
        const int64_t i = i0 + r;
        float dsum = 0.0f;
        if (i < tq) {
          const T *orow = out + i * q_stride + head_off;
          for (int d = lane; d < hd; d += 32) dsum += dOs[r * LD + d] * ld_f32(orow + d);
        }
        dsum = warp_sum(dsum);
        if (lane == 0) {
          Ds[r] = dsum;
          Ls[r] = i < tq ? lse[(int64_t)h * tq + i] : -INFINITY;
        }
      }
      __syncthreads();

      /* Scores and dP for keys ty*RK+a, queries tx+8b. */
      float sc[RK][CB], dp[RK][CB];
#pragma unroll
      for (int a = 0; a < RK; a++)
#pragma unroll
        for (int b = 0; b < CB; b++) sc[a][b] = dp[a][b] = 0.0f;
#pragma unroll 4
      for (int d = 0; d < HDP; d++) {
        float ka[RK], va[RK], qb[CB], ob[CB];
#pragma unroll
        for (int a = 0; a < RK; a++) {
          ka[a] = Ks[(ty * RK + a) * LD + d];
          va[a] = Vs[(ty * RK + a) * LD + d];
        }
#pragma unroll
        for (int b = 0; b < CB; b++) {
          qb[b] = Qs[(tx + 8 * b) * LD + d];
          ob[b] = dOs[(tx + 8 * b) * LD + d];
        }
#pragma unroll
        for (int a = 0; a < RK; a++)
#pragma unroll
          for (int b = 0; b < CB; b++) {
            sc[a][b] = fmaf(ka[a], qb[b], sc[a][b]);
            dp[a][b] = fmaf(va[a], ob[b], dp[a][b]);
          }
      }
#pragma unroll
      for (int a = 0; a < RK; a++) {
        const int64_t j = j0 + ty * RK + a;
#pragma unroll
        for (int b = 0; b < CB; b++) {
          const int r = tx + 8 * b;
          const int64_t i = i0 + r;
          const float L = Ls[r];
          bool visible = i < tq && j < tk && k_pos0 + j <= q_pos0 + i && L > -INFINITY;
          if constexpr (DOCS) visible = visible && q_pos0 + i < key_doc_end[a];
          const float p = visible ? expf(sc[a][b] * scale - L) : 0.0f;
          Ps[(ty * RK + a) * LDS + r] = p;
          dSs[(ty * RK + a) * LDS + r] = p * (dp[a][b] - Ds[r]);
        }
      }
      __syncthreads();

      /* dV += P dO, dK += dS Q (scale applied at the end). */
#pragma unroll 2
      for (int r = 0; r < BQ; r++) {
        float pa[RK], sa[RK], oc[CO], qc[CO];
#pragma unroll
        for (int a = 0; a < RK; a++) {
          pa[a] = Ps[(ty * RK + a) * LDS + r];
          sa[a] = dSs[(ty * RK + a) * LDS + r];
        }
#pragma unroll
        for (int c = 0; c < CO; c++) {
          oc[c] = dOs[r * LD + tx + 8 * c];
          qc[c] = Qs[r * LD + tx + 8 * c];
        }
#pragma unroll
        for (int a = 0; a < RK; a++)
#pragma unroll
          for (int c = 0; c < CO; c++) {
            dv_acc[a][c] = fmaf(pa[a], oc[c], dv_acc[a][c]);
            dk_acc[a][c] = fmaf(sa[a], qc[c], dk_acc[a][c]);
          }
      }

      /* dQ[i] += scale * sum_j dS[j][i] K[j], queries ty*RQ+a, one row at a time. */
#pragma unroll 1
      for (int a = 0; a < RQ; a++) {
        const int r = ty * RQ + a;
        const int64_t i = i0 + r;
        float qacc[CO];
#pragma unroll
        for (int c = 0; c < CO; c++) qacc[c] = 0.0f;
#pragma unroll 4
        for (int jj = 0; jj < BK; jj++) {
          const float sv = dSs[jj * LDS + r];
#pragma unroll
          for (int c = 0; c < CO; c++) qacc[c] = fmaf(sv, Ks[jj * LD + tx + 8 * c], qacc[c]);
        }
        if (i < tq) {
          float *dqrow = dq + i * q_stride + head_off;
#pragma unroll
          for (int c = 0; c < CO; c++) {
            const int d = tx + 8 * c;
            if (d < hd) atomicAdd(dqrow + d, qacc[c] * scale);
          }
        }
      }
    }
  }

#pragma unroll
  for (int a = 0; a < RK; a++) {
    const int64_t j = j0 + ty * RK + a;
    if (j >= tk) continue;
    float *dkrow = dk + j * kv_stride + (int64_t)g * hd;
    float *dvrow = dv + j * kv_stride + (int64_t)g * hd;
#pragma unroll
    for (int c = 0; c < CO; c++) {
      const int d = tx + 8 * c;
      if (d < hd) {
        atomicAdd(dkrow + d, dk_acc[a][c] * scale);
        atomicAdd(dvrow + d, dv_acc[a][c]);
      }
    }
  }
}

/* ---------------- host side ---------------- */

static int padded_head_dim(int64_t hd) { return hd <= 32 ? 32 : hd <= 64 ? 64 : hd <= 128 ? 128 : 256; }

template <typename KernelFn>
static df_status prepare_smem(KernelFn kernel, size_t bytes) {
  if (bytes > 48u * 1024u) DF_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
  return DF_OK;
}

template <typename T, int HDP, int BQ, int BK, bool DOCS>
static df_status launch_forward(T *out, float *lse, const T *q, const T *k, const T *v, int64_t tq, int64_t tk,
                                int nh, int nkv, int hd, int64_t q_pos0, int64_t k_pos0, float scale,
                                const int64_t *doc_starts, int64_t n_docs, int64_t window, cudaStream_t s) {
  const size_t smem = sizeof(float) * FwdShape<HDP, BQ, BK>::SMEM_FLOATS;
  auto kernel = attention_forward_kernel<T, HDP, BQ, BK, DOCS>;
  DF_CHECK(prepare_smem(kernel, smem));
  const dim3 grid((unsigned)((tq + BQ - 1) / BQ), (unsigned)nh);
  kernel<<<grid, ATT_THREADS, smem, s>>>(out, lse, q, k, v, tq, tk, nh, nkv, hd, q_pos0, k_pos0, scale * LOG2E_F,
                                         doc_starts, n_docs, window);
  DF_CUDA_LAUNCHED();
  return DF_OK;
}

/* The kernel for the padded head dim; DOCS selects the document-masked instantiation (the causal one
 * carries no document code at all). */
template <typename T, bool DOCS>
static df_status dispatch_forward(T *out, float *lse, const T *q, const T *k, const T *v, int64_t tq, int64_t tk,
                                  int nh, int nkv, int hd, int64_t q_pos0, int64_t k_pos0, float scale,
                                  const int64_t *doc_starts, int64_t n_docs, int64_t window, cudaStream_t s) {
  switch (padded_head_dim(hd)) {
    case 32:
      return launch_forward<T, 32, 64, 64, DOCS>(out, lse, q, k, v, tq, tk, nh, nkv, hd, q_pos0, k_pos0, scale, doc_starts,
                                           n_docs, window, s);
    case 64:
      return launch_forward<T, 64, 64, 64, DOCS>(out, lse, q, k, v, tq, tk, nh, nkv, hd, q_pos0, k_pos0, scale, doc_starts,
                                           n_docs, window, s);
    case 128:
      return launch_forward<T, 128, 64, 32, DOCS>(out, lse, q, k, v, tq, tk, nh, nkv, hd, q_pos0, k_pos0, scale, doc_starts,
                                            n_docs, window, s);
    default:
      return launch_forward<T, 256, 32, 32, DOCS>(out, lse, q, k, v, tq, tk, nh, nkv, hd, q_pos0, k_pos0, scale, doc_starts,
                                            n_docs, window, s);
  }
}

template <typename T, int HDP, int BK, int BQ, bool DOCS>
static df_status launch_backward(float *dq, float *dk, float *dv, const T *dout, const T *q, const T *k, const T *v,
                                 const T *out, const float *lse, int64_t tq, int64_t tk, int nh, int nkv, int hd,
                                 int64_t q_pos0, int64_t k_pos0, float scale, const int64_t *doc_starts,
                                 int64_t n_docs, int64_t window, cudaStream_t s) {
  const size_t smem = sizeof(float) * BwdShape<HDP, BK, BQ>::SMEM_FLOATS;
  auto kernel = attention_backward_kernel<T, HDP, BK, BQ, DOCS>;
  DF_CHECK(prepare_smem(kernel, smem));
  const dim3 grid((unsigned)((tk + BK - 1) / BK), (unsigned)nkv);
  kernel<<<grid, ATT_THREADS, smem, s>>>(dq, dk, dv, dout, q, k, v, out, lse, tq, tk, nh, nkv, hd, q_pos0, k_pos0,
                                         scale, doc_starts, n_docs, window);
  DF_CUDA_LAUNCHED();
  return DF_OK;
}

template <typename T, bool DOCS>
static df_status dispatch_backward(float *dq, float *dk, float *dv, const T *dout, const T *q, const T *k, const T *v,
                                   const T *out, const float *lse, int64_t tq, int64_t tk, int nh, int nkv, int hd,
                                   int64_t q_pos0, int64_t k_pos0, float scale, const int64_t *doc_starts,
                                   int64_t n_docs, int64_t window, cudaStream_t s) {
  switch (padded_head_dim(hd)) {
    case 32:
      return launch_backward<T, 32, 32, 64, DOCS>(dq, dk, dv, dout, q, k, v, out, lse, tq, tk, nh, nkv, hd, q_pos0, k_pos0,
                                            scale, doc_starts, n_docs, window, s);
    case 64:
      return launch_backward<T, 64, 32, 64, DOCS>(dq, dk, dv, dout, q, k, v, out, lse, tq, tk, nh, nkv, hd, q_pos0, k_pos0,
                                            scale, doc_starts, n_docs, window, s);
    case 128:
      return launch_backward<T, 128, 32, 32, DOCS>(dq, dk, dv, dout, q, k, v, out, lse, tq, tk, nh, nkv, hd, q_pos0, k_pos0,
                                             scale, doc_starts, n_docs, window, s);
    default:
      return launch_backward<T, 256, 16, 32, DOCS>(dq, dk, dv, dout, q, k, v, out, lse, tq, tk, nh, nkv, hd, q_pos0, k_pos0,
                                             scale, doc_starts, n_docs, window, s);
  }
}

df_status general_attention_forward(df_dtype dtype, void *out, float *lse, const void *q, const void *k,
                                    const void *v, int64_t tq, int64_t tk, int nh, int nkv, int hd, int64_t q_pos0,
                                    int64_t k_pos0, float scale, const int64_t *doc_starts, int64_t n_docs,
                                    int64_t window, cudaStream_t s) {
  if (n_docs > 0 || window > 0) {
    DF_DISPATCH_DTYPE(dtype, return dispatch_forward<T, true>((T *)out, lse, (const T *)q, (const T *)k, (const T *)v,
                                                              tq, tk, nh, nkv, hd, q_pos0, k_pos0, scale, doc_starts,
                                                              n_docs, window, s));
  }
  DF_DISPATCH_DTYPE(dtype, return dispatch_forward<T, false>((T *)out, lse, (const T *)q, (const T *)k, (const T *)v, tq,
                                                              tk, nh, nkv, hd, q_pos0, k_pos0, scale, NULL, 0, 0, s));
  return DF_OK;
}

df_status general_attention_backward(df_dtype dtype, float *dq, float *dk, float *dv, const void *dout,
                                     const void *q, const void *k, const void *v, const void *out, const float *lse,
                                     int64_t tq, int64_t tk, int nh, int nkv, int hd, int64_t q_pos0, int64_t k_pos0,
                                     float scale, const int64_t *doc_starts, int64_t n_docs, int64_t window,
                                     cudaStream_t s) {
  if (n_docs > 0 || window > 0) {
    DF_DISPATCH_DTYPE(dtype, return dispatch_backward<T, true>(dq, dk, dv, (const T *)dout, (const T *)q, (const T *)k,
                                                               (const T *)v, (const T *)out, lse, tq, tk, nh, nkv, hd,
                                                               q_pos0, k_pos0, scale, doc_starts, n_docs, window, s));
  }
  DF_DISPATCH_DTYPE(dtype, return dispatch_backward<T, false>(dq, dk, dv, (const T *)dout, (const T *)q, (const T *)k,
                                                               (const T *)v, (const T *)out, lse, tq, tk, nh, nkv, hd,
                                                               q_pos0, k_pos0, scale, NULL, 0, 0, s));
  return DF_OK;
}
