/* The attention operation graphs cuDNN's fused-attention engines recognise (see the pattern in
 * cudnn_attention_graph.cu), and the key that decides which graph a call needs. Separate from the
 * plan cache and the execution (cudnn_attention_plan.cu, cudnn_attention.cu): this is the part
 * that must match cuDNN's patterns exactly, and it only describes tensors, it touches no memory. */
#pragma once
#include <stdint.h>

#include "cudnn_graph.cuh"

/* The ids of the real tensors and by-value scalars a graph names (bound at execution). */
enum Uid : int64_t {
  U_Q = 1, U_K, U_V, U_O, U_STATS, U_SCALE, U_NEG_INF, U_DELTA, U_DOUT, U_DQ, U_DK, U_DV, U_DSUM, U_DQ_ACC, U_ONE
};

/* The shape of one call, and everything the graph depends on (the plan cache key). */
struct AttnKey {
  int32_t device, backward, masked, pad;
  int64_t tq, tk, nh, nkv, hd, delta; /* delta is 0 when unmasked */
};

/* Adds the forward or backward (key.backward) attention graph's operations to g. */
DNN_INTERNAL void dnn_build_attention_graph(Graph &g, const AttnKey &key);
