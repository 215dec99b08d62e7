/* Helpers shared by the Llama-op kernels: typed loads/stores (fp32 math over f32 or bf16 storage),
 * warp and block reductions, and the host-side argument checks every entry point repeats. */
#pragma once
#include <math.h>
#include <stdint.h>

#include "cuda_common.cuh"

/* ---- device: storage <-> fp32 ---- */
__device__ __forceinline__ float ld_f32(const float *p) { return *p; }
__device__ __forceinline__ float ld_f32(const __nv_bfloat16 *p) { return __bfloat162float(*p); }
__device__ __forceinline__ void st_f32(float *p, float v) { *p = v; }
__device__ __forceinline__ void st_f32(__nv_bfloat16 *p, float v) { *p = __float2bfloat16_rn(v); }

/* ---- device: reductions ---- */
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

/* Sum over the block, returned to every thread. `scratch` holds 32 floats; blockDim.x is a
 * multiple of 32. Contains __syncthreads, so every thread of the block must call it. */
__device__ __forceinline__ float block_sum(float v, float *scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads(); /* scratch may still be read by a previous call */
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.0f;
  return warp_sum(v);
}

/* ---- host: argument checks (the messages match the CPU twins: "fn: argument 'x' ...") ---- */
static inline uint64_t dtype_bytes(df_dtype d) { return d == DF_BF16 ? 2u : 4u; }

static inline df_status check_dtype(const char *fn, const char *name, df_dtype d) {
  if (d != DF_F32 && d != DF_BF16)
    return df_fail(DF_ERR_INVALID, "%s: argument '%s' must be DF_F32 (0) or DF_BF16 (1), got %d", fn,
                   name, (int)d);
  return DF_OK;
}

/* No tensor dimension may exceed this (the CPU twin's DF_MAX_DIM); byte counts stay below 2^62. */
#define DIM_MAX ((int64_t)1 << 40)

/* min <= value <= DIM_MAX, with the CPU twin's message. */
static inline df_status check_dim(const char *fn, const char *name, int64_t value, int64_t min) {
  if (value < min)
    return df_fail(DF_ERR_INVALID, "%s: argument '%s' must be >= %lld, got %lld", fn, name, (long long)min,
                   (long long)value);
  if (value > DIM_MAX)
    return df_fail(DF_ERR_INVALID, "%s: argument '%s' = %lld is too large", fn, name, (long long)value);
  return DF_OK;
}

/* *out = a * b * c elements (each >= 0), failing beyond 2^60 like the CPU twin's df_numel. */
static inline df_status check_numel(const char *fn, const char *name, int64_t *out, int64_t a, int64_t b, int64_t c) {
  int64_t ab = 0, abc = 0;
  if (__builtin_mul_overflow(a, b, &ab) || __builtin_mul_overflow(ab, c, &abc) || abc > ((int64_t)1 << 60))
    return df_fail(DF_ERR_INVALID, "%s: tensor '%s' has too many elements (%lld x %lld x %lld)", fn, name,
                   (long long)a, (long long)b, (long long)c);
  *out = abc;
  return DF_OK;
}

/* ptr covers count elements of elem_bytes each (count from check_numel: no overflow). */
static inline df_status check_elems(const char *fn, const char *name, const void *ptr, int64_t count,
                                    uint64_t elem_bytes) {
  return df_check_range(fn, name, ptr, (uint64_t)count * elem_bytes);
}

/* Dispatch on a validated activation dtype: T is float or __nv_bfloat16 inside `body`. */
#define DF_DISPATCH_DTYPE(dtype, ...)          \
  do {                                         \
    if ((dtype) == DF_BF16) {                  \
      typedef __nv_bfloat16 T;                 \
      __VA_ARGS__;                             \
    } else {                                   \
      typedef float T;                         \
      __VA_ARGS__;                             \
    }                                          \
  } while (0)

/* Blocks for a row-per-block kernel: every row gets a block, up to a grid-stride cap. */
static inline unsigned rows_grid(int64_t rows, unsigned cap = 65535u) {
  if (rows <= 0) return 1u;
  return rows < (int64_t)cap ? (unsigned)rows : cap;
}
