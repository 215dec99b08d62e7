/* A growing device buffer per (device, stream): the scratch of the flash backward (its L and D
 * rows) and of cuDNN's fused attention (workspace, bf16 gradients). Outside the df_malloc registry,
 * like cuBLASLt's workspace; the memory plan's library allowance covers it (src/train/plan.ts,
 * libraryKinds). Each user keeps its own table, so their sizes stay theirs. */
#pragma once
#include <mutex>

#include "cuda_common.cuh"

class StreamScratch {
 public:
  /* *out = a buffer of at least `bytes` for (device, stream), grown to whole MiB when too small;
   * NULL when the table already holds MAX streams (the caller then takes a path without scratch).
   * Growing waits for the stream first: earlier work on it may still use the old buffer. */
  df_status get(int device, cudaStream_t stream, uint64_t bytes, void **out) {
    std::lock_guard<std::mutex> lock(mutex_);
    *out = NULL;
    Slot *slot = NULL;
    for (int i = 0; i < count_; i++)
      if (slots_[i].device == device && slots_[i].stream == stream) slot = &slots_[i];
    if (!slot) {
      if (count_ == MAX) return DF_OK;
      slot = &slots_[count_++];
      *slot = Slot{device, stream, NULL, 0};
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

 private:
  static constexpr int MAX = 32;
  struct Slot {
    int device;
    cudaStream_t stream;
    void *ptr;
    uint64_t bytes;
  };
  Slot slots_[MAX] = {};
  int count_ = 0;
  std::mutex mutex_;
};
