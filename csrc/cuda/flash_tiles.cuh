/* Swizzled shared-memory tiles and ldmatrix fragments for the mma.sync flash-attention kernels
 * (flash_fwd.cuh, flash_bwd.cuh). Included only through those headers by flash_attention.cu.
 *
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
 * logical chunk) hit eight different bank groups, and cp.async writes whole chunks. */
#pragma once
#include "flash_internal.cuh"

namespace flash {


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

}  // namespace flash
