/* CPU GEMM: C = alpha op(A) op(B) + beta C, row-major, fp32 accumulation.
 *
 * Goto-style blocking. op(A) is packed into fp32 panels of MR rows and op(B) into panels of NR
 * columns, K block (KC deep) after K block, converting bf16 while packing, so the micro-kernel
 * reads both operands contiguously. Both are packed once per call (in slabs of at most SLAB_FLOATS
 * when they are huge), by all threads. The output is then cut into MC x NT tiles that OpenMP threads
 * take; a tile accumulates every K block in a private fp32 buffer and is written to C once (alpha,
 * beta and the bf16 rounding applied there). Each element of C is summed by one thread in a fixed
 * K order, so results do not depend on the thread count.
 *
 * The micro-kernel is written with GCC/Clang vector extensions: an AVX2+FMA version of 6 x 16
 * (12 accumulators of 8 floats), picked at run time when the CPU has them (the library is built
 * without -march), and a portable 4-wide version otherwise. DISTFLASH_CPU_GEMM=generic forces the
 * portable one.
 */
#include <stdlib.h>
#include <string.h>

#include "cpu_util.h"

enum {
  MR = 6,   /* rows of a micro-tile */
  NR = 16,  /* columns of a micro-tile */
  KC = 256, /* K block: one B panel (KC x NR fp32, 16 KiB) stays in L1 */
  MC = 72,  /* tile rows: an A block (MC x KC, 72 KiB) stays in L2 */
  NT = 128  /* tile columns */
};

/* Packed slabs are bounded so the scratch memory stays modest for huge operands. */
#define SLAB_FLOATS ((int64_t)8 << 20)

typedef void (*micro_kernel_fn)(int64_t kc, const float *restrict ap, const float *restrict bp,
                                float *restrict ct, int64_t ldct, int accumulate);

typedef float v4f __attribute__((vector_size(16)));

/* Portable micro-kernel: the 16 columns in two halves of 8, 12 four-wide accumulators each. */
static void micro_kernel_generic(int64_t kc, const float *restrict ap, const float *restrict bp,
                                 float *restrict ct, int64_t ldct, int accumulate) {
  for (int half = 0; half < 2; half++) {
    const float *bh = bp + 8 * half;
    v4f c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0};
    v4f c30 = {0}, c31 = {0}, c40 = {0}, c41 = {0}, c50 = {0}, c51 = {0};
    for (int64_t p = 0; p < kc; p++) {
      const float *a = ap + p * MR;
      v4f b0, b1;
      memcpy(&b0, bh + p * NR, sizeof b0);
      memcpy(&b1, bh + p * NR + 4, sizeof b1);
      c00 += a[0] * b0;
      c01 += a[0] * b1;
      c10 += a[1] * b0;
      c11 += a[1] * b1;
      c20 += a[2] * b0;
      c21 += a[2] * b1;
      c30 += a[3] * b0;
      c31 += a[3] * b1;
      c40 += a[4] * b0;
      c41 += a[4] * b1;
      c50 += a[5] * b0;
      c51 += a[5] * b1;
    }
    v4f acc[MR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
    for (int i = 0; i < MR; i++) {
      float *row = ct + i * ldct + 8 * half;
      for (int h = 0; h < 2; h++) {
        v4f old = {0};
        if (accumulate) memcpy(&old, row + 4 * h, sizeof old);
        v4f sum = old + acc[i][h];
        memcpy(row + 4 * h, &sum, sizeof sum);
      }
    }
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
#define DF_GEMM_HAVE_AVX2 1
typedef float v8f __attribute__((vector_size(32)));

__attribute__((target("avx2,fma"))) static void micro_kernel_avx2(int64_t kc,
                                                                  const float *restrict ap,
                                                                  const float *restrict bp,
                                                                  float *restrict ct, int64_t ldct,
                                                                  int accumulate) {
  v8f c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0};
  v8f c30 = {0}, c31 = {0}, c40 = {0}, c41 = {0}, c50 = {0}, c51 = {0};
  for (int64_t p = 0; p < kc; p++) {
    const float *a = ap + p * MR;
    v8f b0, b1;
    memcpy(&b0, bp + p * NR, sizeof b0);
    memcpy(&b1, bp + p * NR + 8, sizeof b1);
    c00 += a[0] * b0;
    c01 += a[0] * b1;
    c10 += a[1] * b0;
    c11 += a[1] * b1;
    c20 += a[2] * b0;
    c21 += a[2] * b1;
    c30 += a[3] * b0;
    c31 += a[3] * b1;
    c40 += a[4] * b0;
    c41 += a[4] * b1;
    c50 += a[5] * b0;
    c51 += a[5] * b1;
  }
  v8f acc[MR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  for (int i = 0; i < MR; i++) {
    float *row = ct + i * ldct;
    for (int h = 0; h < 2; h++) {
      v8f old = {0};
      if (accumulate) memcpy(&old, row + 8 * h, sizeof old);
      v8f sum = old + acc[i][h];
      memcpy(row + 8 * h, &sum, sizeof sum);
    }
  }
}
#endif

static micro_kernel_fn pick_micro_kernel(void) {
  const char *force = getenv("DISTFLASH_CPU_GEMM");
  if (force && strcmp(force, "generic") == 0) return micro_kernel_generic;
#ifdef DF_GEMM_HAVE_AVX2
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return micro_kernel_avx2;
#endif
  return micro_kernel_generic;
}

typedef struct {
  int trans_a, trans_b;
  int64_t m, n, k;
  float alpha, beta;
  const void *a, *b;
  void *c;
  int64_t lda, ldb, ldc;
  df_dtype ab_dtype, c_dtype;
} gemm_args;

static inline int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

/* 64-byte aligned scratch (aligned_alloc wants a size that is a multiple of the alignment). */
static float *alloc_floats(int64_t count) {
  return (float *)aligned_alloc(64, (size_t)round_up(count * (int64_t)sizeof(float), 64));
}

/* Packs rows [i0, i0 + MR) (zero past m) of op(A), K columns [p0, p0 + kc), as ap[p * MR + ii]. */
static void pack_a_panel(const gemm_args *g, float *restrict ap, int64_t i0, int64_t p0,
                         int64_t kc) {
  int64_t rows = g->m - i0 < MR ? g->m - i0 : MR;
  if (rows < MR) memset(ap, 0, (size_t)(kc * MR) * sizeof(float));
  if (!g->trans_a) { /* A[i][p] = a[i * lda + p]: read MR rows side by side */
    if (g->ab_dtype == DF_BF16) {
      const uint16_t *src = (const uint16_t *)g->a + i0 * g->lda + p0;
      for (int64_t p = 0; p < kc; p++) {
        for (int64_t ii = 0; ii < rows; ii++) {
          ap[p * MR + ii] = df_bf16_bits_to_f32(src[ii * g->lda + p]);
        }
      }
    } else {
      const float *src = (const float *)g->a + i0 * g->lda + p0;
      for (int64_t p = 0; p < kc; p++) {
        for (int64_t ii = 0; ii < rows; ii++) ap[p * MR + ii] = src[ii * g->lda + p];
      }
    }
  } else { /* A[i][p] = a[p * lda + i] */
    for (int64_t p = 0; p < kc; p++) {
      int64_t base = (p0 + p) * g->lda + i0;
      for (int64_t ii = 0; ii < rows; ii++) ap[p * MR + ii] = df_load(g->a, g->ab_dtype, base + ii);
    }
  }
}

/* Packs columns [j0, j0 + NR) (zero past n) of op(B), K rows [p0, p0 + kc), as bp[p * NR + jj]. */
static void pack_b_panel(const gemm_args *g, float *restrict bp, int64_t j0, int64_t p0,
                         int64_t kc) {
  int64_t cols = g->n - j0 < NR ? g->n - j0 : NR;
  if (cols < NR) memset(bp, 0, (size_t)(kc * NR) * sizeof(float));
  if (!g->trans_b) { /* B[p][j] = b[p * ldb + j] */
    for (int64_t p = 0; p < kc; p++) {
      int64_t base = (p0 + p) * g->ldb + j0;
      for (int64_t jj = 0; jj < cols; jj++) bp[p * NR + jj] = df_load(g->b, g->ab_dtype, base + jj);
    }
  } else { /* B[p][j] = b[j * ldb + p] */
    for (int64_t jj = 0; jj < cols; jj++) {
      int64_t base = (j0 + jj) * g->ldb + p0;
      if (g->ab_dtype == DF_BF16) {
        const uint16_t *src = (const uint16_t *)g->b + base;
        for (int64_t p = 0; p < kc; p++) bp[p * NR + jj] = df_bf16_bits_to_f32(src[p]);
      } else {
        const float *src = (const float *)g->b + base;
        for (int64_t p = 0; p < kc; p++) bp[p * NR + jj] = src[p];
      }
    }
  }
}

/* C[i0 + r][j0 + c] = alpha * ct[r][c] + beta * C (beta == 0: C is not read, so garbage or NaN in
 * it does not leak through). */
static void write_tile(const gemm_args *g, const float *ct, int64_t i0, int64_t rows, int64_t j0,
                       int64_t cols) {
  for (int64_t r = 0; r < rows; r++) {
    const float *src = ct + r * NT;
    int64_t base = (i0 + r) * g->ldc + j0;
    if (g->c_dtype == DF_F32) {
      float *dst = (float *)g->c + base;
      if (g->beta == 0.0f) {
        for (int64_t c = 0; c < cols; c++) dst[c] = g->alpha * src[c];
      } else {
        for (int64_t c = 0; c < cols; c++) dst[c] = g->alpha * src[c] + g->beta * dst[c];
      }
    } else {
      uint16_t *dst = (uint16_t *)g->c + base;
      for (int64_t c = 0; c < cols; c++) {
        float value = g->alpha * src[c];
        if (g->beta != 0.0f) value += g->beta * df_bf16_bits_to_f32(dst[c]);
        dst[c] = df_f32_to_bf16_bits(value);
      }
    }
  }
}

/* One slab pair: rows [ms, ms + mlen) x columns [ns, ns + nlen) of C over all of K. Returns 0 on
 * success, 1 when scratch memory could not be allocated. */
static int gemm_slab(const gemm_args *g, micro_kernel_fn kernel, float *ap, float *bp, int64_t ms,
                     int64_t mlen, int64_t ns, int64_t nlen) {
  const int64_t mpanels = round_up(mlen, MR) / MR, npanels = round_up(nlen, NR) / NR;
  const int64_t kblocks = round_up(g->k, KC) / KC;
  const int64_t mtiles = round_up(mlen, MC) / MC, ntiles = round_up(nlen, NT) / NT;
  const double flops = 2.0 * (double)mlen * (double)nlen * (double)g->k;
  int failed = 0;
  /* Packed A block for (K block kb, panel ip) starts at p0 * mpanels * MR + ip * kc * MR, where
   * p0 = kb * KC and kc is that block's depth; likewise for B. */
#pragma omp parallel if (flops > 2e6) reduction(| : failed)
  {
#pragma omp for collapse(2) schedule(static)
    for (int64_t kb = 0; kb < kblocks; kb++) {
      for (int64_t ip = 0; ip < mpanels; ip++) {
        int64_t p0 = kb * KC, kc = g->k - p0 < KC ? g->k - p0 : KC;
        pack_a_panel(g, ap + p0 * mpanels * MR + ip * kc * MR, ms + ip * MR, p0, kc);
      }
    }
#pragma omp for collapse(2) schedule(static)
    for (int64_t kb = 0; kb < kblocks; kb++) {
      for (int64_t jp = 0; jp < npanels; jp++) {
        int64_t p0 = kb * KC, kc = g->k - p0 < KC ? g->k - p0 : KC;
        pack_b_panel(g, bp + p0 * npanels * NR + jp * kc * NR, ns + jp * NR, p0, kc);
      }
    }
    float *ct = alloc_floats((int64_t)MC * NT);
    if (!ct) failed = 1;
    /* A thread without scratch still takes part in the loop (worksharing requires it) but skips
     * its tiles; the call then reports DF_ERR_OOM. */
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int64_t it = 0; it < mtiles; it++) {
      for (int64_t jt = 0; jt < ntiles; jt++) {
        if (!ct) continue;
        int64_t r0 = it * MC, c0 = jt * NT;
        int64_t rows = mlen - r0 < MC ? mlen - r0 : MC, cols = nlen - c0 < NT ? nlen - c0 : NT;
        for (int64_t kb = 0; kb < kblocks; kb++) {
          int64_t p0 = kb * KC, kc = g->k - p0 < KC ? g->k - p0 : KC;
          const float *ablock = ap + p0 * mpanels * MR, *bblock = bp + p0 * npanels * NR;
          for (int64_t jr = 0; jr < cols; jr += NR) {
            const float *bpanel = bblock + ((c0 + jr) / NR) * kc * NR;
            for (int64_t ir = 0; ir < rows; ir += MR) {
              kernel(kc, ablock + ((r0 + ir) / MR) * kc * MR, bpanel, ct + ir * NT + jr, NT,
                     kb > 0);
            }
          }
        }
        write_tile(g, ct, ms + r0, rows, ns + c0, cols);
      }
    }
    free(ct);
  }
  return failed;
}

df_status df_gemm(int32_t trans_a, int32_t trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                  const void *a, int64_t lda, const void *b, int64_t ldb, float beta, void *c,
                  int64_t ldc, df_dtype ab_dtype, df_dtype c_dtype, void *stream) {
  (void)stream;
  const char *fn = "df_gemm";
  if (trans_a != 0 && trans_a != 1) {
    return df_fail(DF_ERR_INVALID, "df_gemm: argument 'trans_a' must be 0 or 1, got %d", trans_a);
  }
  if (trans_b != 0 && trans_b != 1) {
    return df_fail(DF_ERR_INVALID, "df_gemm: argument 'trans_b' must be 0 or 1, got %d", trans_b);
  }
  DF_CHECK(df_check_dim(fn, "m", m, 1));
  DF_CHECK(df_check_dim(fn, "n", n, 1));
  DF_CHECK(df_check_dim(fn, "k", k, 1));
  DF_CHECK(df_check_dtype(fn, "ab_dtype", (int)ab_dtype));
  DF_CHECK(df_check_dtype(fn, "c_dtype", (int)c_dtype));
  /* Stored shapes: A is [m, k] or [k, m] (trans_a); B is [k, n] or [n, k] (trans_b). */
  int64_t a_rows = trans_a ? k : m, a_cols = trans_a ? m : k;
  int64_t b_rows = trans_b ? n : k, b_cols = trans_b ? k : n;
  if (lda < a_cols || lda > DF_MAX_DIM) {
    return df_fail(DF_ERR_INVALID,
                   "df_gemm: argument 'lda' (%lld) must be >= the row length of A (%lld; A is "
                   "stored [%lld, %lld]%s)",
                   (long long)lda, (long long)a_cols, (long long)a_rows, (long long)a_cols,
                   trans_a ? ", trans_a" : "");
  }
  if (ldb < b_cols || ldb > DF_MAX_DIM) {
    return df_fail(DF_ERR_INVALID,
                   "df_gemm: argument 'ldb' (%lld) must be >= the row length of B (%lld; B is "
                   "stored [%lld, %lld]%s)",
                   (long long)ldb, (long long)b_cols, (long long)b_rows, (long long)b_cols,
                   trans_b ? ", trans_b" : "");
  }
  if (ldc < n || ldc > DF_MAX_DIM) {
    return df_fail(DF_ERR_INVALID,
                   "df_gemm: argument 'ldc' (%lld) must be >= the row length of C (n = %lld)",
                   (long long)ldc, (long long)n);
  }
  /* Extents: (rows - 1) * ld + row length elements. */
  int64_t a_extent = 0, b_extent = 0, c_extent = 0;
  DF_CHECK(df_numel(fn, "a", &a_extent, a_rows - 1, lda, 1));
  DF_CHECK(df_numel(fn, "b", &b_extent, b_rows - 1, ldb, 1));
  DF_CHECK(df_numel(fn, "c", &c_extent, m - 1, ldc, 1));
  DF_CHECK(df_check_elems(fn, "a", a, a_extent + a_cols, df_dtype_size(ab_dtype)));
  DF_CHECK(df_check_elems(fn, "b", b, b_extent + b_cols, df_dtype_size(ab_dtype)));
  DF_CHECK(df_check_elems(fn, "c", c, c_extent + n, df_dtype_size(c_dtype)));

  gemm_args g = {trans_a, trans_b, m, n, k, alpha, beta, a, b, c, lda, ldb, ldc, ab_dtype, c_dtype};
  micro_kernel_fn kernel = pick_micro_kernel();
  /* Slab sizes: whole operands when they fit SLAB_FLOATS once packed, else cut in tile multiples. */
  int64_t mslab = SLAB_FLOATS / k / MC * MC, nslab = SLAB_FLOATS / k / NT * NT;
  if (mslab < MC) mslab = MC;
  if (nslab < NT) nslab = NT;
  if (mslab > round_up(m, MR)) mslab = round_up(m, MR);
  if (nslab > round_up(n, NR)) nslab = round_up(n, NR);
  float *ap = alloc_floats(round_up(mslab, MR) * k), *bp = alloc_floats(round_up(nslab, NR) * k);
  int failed = !ap || !bp;
  for (int64_t ms = 0; ms < m && !failed; ms += mslab) {
    for (int64_t ns = 0; ns < n && !failed; ns += nslab) {
      failed = gemm_slab(&g, kernel, ap, bp, ms, m - ms < mslab ? m - ms : mslab, ns,
                         n - ns < nslab ? n - ns : nslab);
    }
  }
  free(ap);
  free(bp);
  if (failed) {
    return df_fail(DF_ERR_OOM, "df_gemm: out of host memory for packing buffers (m=%lld n=%lld k=%lld)",
                   (long long)m, (long long)n, (long long)k);
  }
  return DF_OK;
}
