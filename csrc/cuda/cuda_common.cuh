/* Helpers shared by the CUDA sources: error translation and launch geometry. */
#pragma once
#include <cuda_runtime.h>
#include <cuda_bf16.h>

#include "../common/common.h"

/* Turn a CUDA runtime error into a df_status carrying the call site. */
#define DF_CUDA(call)                                                                           \
  do {                                                                                          \
    cudaError_t df_cuda_err = (call);                                                           \
    if (df_cuda_err != cudaSuccess)                                                             \
      return df_fail(df_cuda_err == cudaErrorMemoryAllocation ? DF_ERR_OOM : DF_ERR_DEVICE,     \
                     "%s: %s failed: %s (%s:%d)", __func__, #call,                              \
                     cudaGetErrorString(df_cuda_err), __FILE__, __LINE__);                      \
  } while (0)

/* After a kernel launch: report configuration errors at once (asynchronous faults surface at the
 * next synchronising call, which checks its own status). */
#define DF_CUDA_LAUNCHED() DF_CUDA(cudaGetLastError())

static inline cudaStream_t df_stream(void *stream) { return (cudaStream_t)stream; }

/* Enough blocks to fill the GPU for grid-stride loops, never more than the work needs. */
static inline unsigned df_grid_for(uint64_t n, unsigned threads) {
  uint64_t blocks = (n + threads - 1) / threads;
  const uint64_t cap = 132ull * 32ull;
  if (blocks > cap) blocks = cap;
  return blocks ? (unsigned)blocks : 1u;
}
