/* The cache of cuDNN execution plans for attention: one per (device, direction, shape, delta),
 * built on first use (graph, heuristics, the first engine config that finalizes) and evicted least
 * recently used. A key cuDNN refuses is cached too (and said once on stderr) so later calls go
 * straight to the native kernels. Separate from the graphs (what to compute) and from the execution
 * (cudnn_attention.cu: binding memory and enqueueing). */
#pragma once
#include "cudnn_attention_graph.cuh"

/* A cached plan, or the record that cuDNN would not take the key. */
struct AttnPlan {
  AttnKey key;
  int live, unsupported;
  uint64_t last_use;
  Graph *graph;       /* keeps every descriptor alive */
  dnn_desc plan;      /* the execution plan (owned by graph) */
  int64_t workspace;  /* bytes cuDNN asks for */
};

/* Caller holds dnn_mutex. The cached plan for `key` (built, or found unsupported, on first use). */
DNN_INTERNAL AttnPlan *dnn_plan_for(const AttnKey &key, dnn_handle handle);
