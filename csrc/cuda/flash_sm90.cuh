/* What the Hopper (sm_90a) attention kernels share (csrc/cuda/flash_fwd_sm90.cu, flash_bwd_sm90.cu):
 * wgmma descriptors, fences and wrappers, and tiles in wgmma's 128-byte-swizzle layout.
 *
 * A [rows][128] bf16 tile is stored as two column halves [2][rows][64]; each row of a half is 128
 * bytes whose 16-byte chunk c sits at c ^ (row & 7); tiles start at 1024-byte boundaries. (A
 * [rows][64] tile is one such half.) Descriptors (PTX ISA, "matrix descriptor"; CUTLASS's canonical
 * layouts were read to check the LBO/SBO roles): K-major operands (the reduced dimension contiguous
 * in a row): SBO = 1024 bytes between 8-row groups, LBO unused, a k16 step moves the start 32 bytes
 * within a half and to the next half after four steps. MN-major operands (read transposed: the
 * reduced dimension runs down the rows): LBO = the distance between column halves, SBO = 1024 bytes
 * between 8-row groups, a k16 step moves the start 16 rows (2048 bytes).
 *
 * Accumulator layout of m64nNk16 (f32): warp w4 of the warpgroup holds rows 16 w4 .. 16 w4 + 15;
 * d[4 n + e] is row g + 8 (e >> 1), column 8 n + 2 t + (e & 1), with lane = 4 g + t; the A fragment
 * from registers has mma.sync's m16n8k16 layout for the warp's 16 rows. Everything here exists only
 * when compiling for sm_90a, or for the host emulation (csrc/emu/sm90_emu.h, which replaces the
 * wgmma and fence wrappers and runs the rest as written). */
#pragma once
#include "flash_internal.cuh"

namespace flash {

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

/* A shared-memory matrix descriptor with the 128-byte swizzle (layout type 1, bits 62-63). */
__device__ __forceinline__ uint64_t desc_sw128(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)((lbo & 0x3FFFF) >> 4) << 16) |
         ((uint64_t)((sbo & 0x3FFFF) >> 4) << 32) | (1ull << 62);
}

/* Byte offset of 16-byte chunk c (0..15) of row r in a [rows][128] tile stored as two swizzled
 * column halves of ROWS rows. */
template <int ROWS>
__device__ __forceinline__ uint32_t sw128(int r, int c) {
  return (uint32_t)((c >> 3) * ROWS * 128 + r * 128 + (((c & 7) ^ (r & 7)) << 4));
}

/* cp.async rows [row0, row0 + ROWS) of a [rows_total, *] bf16 tensor (row stride `stride` elements,
 * `g` at the head's first column; COLS = 64 or 128 columns) into a swizzled tile, by a block of 256
 * threads; rows past the end are zero. Thread tid copies chunk tid % CPR of rows tid / CPR + RSTEP i
 * (CPR chunks per row, RSTEP = 256 / CPR rows a pass, a multiple of 8): one swizzle serves all its
 * chunks. */
template <int ROWS, int COLS>
__device__ __forceinline__ void load_tile_sw128(uint32_t dst, const bf16 *g, int64_t row0, int64_t rows_total,
                                                int64_t stride) {
  constexpr int CPR = COLS / 8, RSTEP = 256 / CPR;
  static_assert((COLS == 64 || COLS == 128) && ROWS % RSTEP == 0, "whole passes of 256 threads");
  const int r0 = (int)threadIdx.x / CPR, c = (int)threadIdx.x % CPR;
  const uint32_t d0 = dst + sw128<ROWS>(r0, c);
  const int64_t first = row0 + r0;
  const bf16 *src = g + first * stride + c * 8;
#pragma unroll
  for (int it = 0; it < ROWS / RSTEP; it++) {
    const bool valid = first + it * RSTEP < rows_total;
    cp_async16(d0 + it * RSTEP * 128, valid ? src + it * RSTEP * stride : g, valid);
  }
}

/* ---- wgmma and fence wrappers (the host emulation, csrc/emu/sm90_emu.h, has its own) ---- */
#ifndef FLASH_EMULATE

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
/* cp.async writes through the generic proxy; wgmma reads through the async proxy. */
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wg_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

/* Pins accumulator registers at this point of the program (no move of their reads or writes across
 * it), so nothing touches them between a wgmma's issue and its wait. */
template <int N>
__device__ __forceinline__ void pin(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; i++) asm volatile("" : "+f"(d[i])::"memory");
}
/* The same for register A fragments: a wgmma reads them until its wait (PTX ISA: touching them
 * before is undefined), so they are pinned before the fence and after the wait. */
template <int KT>
__device__ __forceinline__ void pin(uint32_t (&a)[KT][4]) {
#pragma unroll
  for (int kk = 0; kk < KT; kk++)
#pragma unroll
    for (int i = 0; i < 4; i++) asm volatile("" : "+r"(a[kk][i])::"memory");
}

/* The 64 fp32 accumulators of an m64n128 wgmma: operands %0..%63 and their constraints. */
#define WGMMA_D64_LIST \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define WGMMA_D64(d) \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
  "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
  "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
  "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
  "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
  "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
  "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])

/* d (+)= A B^T for a 64 x 128 x 16 step: A (64 x 16) and B (128 x 16) K-major in shared memory. */
__device__ __forceinline__ void wgmma_ss(float (&d)[64], uint64_t da, uint64_t db, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
      WGMMA_D64_LIST
      "}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : WGMMA_D64(d)
      : "l"(da), "l"(db), "r"(accumulate));
}

/* d += A B for a 64 x 128 x 16 step: A (64 x 16) in registers, B (16 x 128) MN-major in shared memory. */
__device__ __forceinline__ void wgmma_rs(float (&d)[64], const uint32_t (&a)[4], uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
      WGMMA_D64_LIST
      "}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : WGMMA_D64(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

/* The 32 fp32 accumulators of an m64n64 wgmma: operands %0..%31 and their constraints. */
#define WGMMA_D32_LIST \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define WGMMA_D32(d) \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
  "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
  "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])

/* d (+)= A B for a 64 x 64 x 16 step with both operands in shared memory; TA / TB = 1 reads A / B
 * MN-major (transposed), 0 K-major. */
template <int TA, int TB>
__device__ __forceinline__ void wgmma_ss_n64(float (&d)[32], uint64_t da, uint64_t db, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
      WGMMA_D32_LIST
      "}, %32, %33, p, 1, 1, %35, %36;\n}\n"
      : WGMMA_D32(d)
      : "l"(da), "l"(db), "r"(accumulate), "n"(TA), "n"(TB));
}

/* d += A B for a 64 x 64 x 16 step: A (64 x 16) in registers, B (16 x 64) MN-major in shared memory. */
__device__ __forceinline__ void wgmma_rs(float (&d)[32], const uint32_t (&a)[4], uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
      WGMMA_D32_LIST
      "}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
      : WGMMA_D32(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

#endif  // FLASH_EMULATE

/* P (fp32 accumulators of an n8 column pair per 16 columns) to register A fragments: KT fragments of
 * 16 columns each, as the next wgmma's A operand (same layout as mma.sync's). */
template <int KT, int N>
__device__ __forceinline__ void pack_a(uint32_t (&pa)[KT][4], const float (&s)[N]) {
  static_assert(N == KT * 8, "8 accumulators per 16 columns");
#pragma unroll
  for (int kk = 0; kk < KT; kk++) {
    pa[kk][0] = pack_bf16(s[8 * kk + 0], s[8 * kk + 1]);
    pa[kk][1] = pack_bf16(s[8 * kk + 2], s[8 * kk + 3]);
    pa[kk][2] = pack_bf16(s[8 * kk + 4], s[8 * kk + 5]);
    pa[kk][3] = pack_bf16(s[8 * kk + 6], s[8 * kk + 7]);
  }
}

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

}  // namespace flash
