/* Building and caching cuDNN attention plans; see cudnn_attention_plan.cuh. */
#include <stdio.h>
#include <string.h>

#include "cudnn_attention_plan.cuh"

#define DNN_MAX_PLANS 128

static AttnPlan dnn_plans[DNN_MAX_PLANS];
static uint64_t dnn_clock;

/* Caller holds dnn_mutex. Builds the operation graph, asks the heuristic for engine configs and keeps
 * the first that finalizes as an execution plan. On failure plan->unsupported is set and `why` says. */
static void plan_build(AttnPlan *plan, dnn_handle handle, char *why, size_t why_size) {
  Graph *g = new Graph();
  plan->graph = g;
  dnn_build_attention_graph(*g, plan->key);
  dnn_desc graph = g->create(DNN_OPERATIONGRAPH_DESCRIPTOR, "operation graph");
  g->set(graph, DNN_ATTR_OPERATIONGRAPH_HANDLE, DNN_TYPE_HANDLE, 1, &handle, "operation graph handle");
  if (!g->failed())
    g->set(graph, DNN_ATTR_OPERATIONGRAPH_OPS, DNN_TYPE_BACKEND_DESCRIPTOR, (int64_t)g->ops.size(), g->ops.data(),
           "operation graph ops");
  g->finalize(graph, "operation graph finalize (cuDNN does not recognise this attention pattern)");
  dnn_desc heur = g->create(DNN_ENGINEHEUR_DESCRIPTOR, "heuristics");
  g->set_desc(heur, DNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph, "heuristics graph");
  const int32_t mode = DNN_HEUR_MODE_A;
  g->set(heur, DNN_ATTR_ENGINEHEUR_MODE, DNN_TYPE_HEUR_MODE, 1, &mode, "heuristics mode");
  g->finalize(heur, "heuristics finalize");
  enum { MAX_CFGS = 8 };
  dnn_desc cfgs[MAX_CFGS] = {};
  for (int i = 0; i < MAX_CFGS; i++) cfgs[i] = g->create(DNN_ENGINECFG_DESCRIPTOR, "engine config");
  int64_t count = 0;
  if (!g->failed())
    g->check(dnn.backend_get(heur, DNN_ATTR_ENGINEHEUR_RESULTS, DNN_TYPE_BACKEND_DESCRIPTOR, MAX_CFGS, &count, cfgs),
             "heuristics results");
  char last_refusal[512] = "no engine config offered";
  for (int64_t i = 0; i < count && !g->failed() && !plan->plan; i++) {
    dnn_desc ep = g->create(DNN_EXECUTION_PLAN_DESCRIPTOR, "execution plan");
    g->set(ep, DNN_ATTR_EXECUTION_PLAN_HANDLE, DNN_TYPE_HANDLE, 1, &handle, "execution plan handle");
    g->set_desc(ep, DNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, cfgs[i], "execution plan config");
    if (g->failed()) break;
    const dnn_status st = dnn.backend_finalize(ep); /* an engine may refuse: try the next one */
    if (st != DNN_STATUS_SUCCESS) {
      dnn_describe(last_refusal, sizeof last_refusal, "execution plan finalize", st);
      continue;
    }
    int64_t bytes = 0, got = 0;
    if (g->check(dnn.backend_get(ep, DNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, DNN_TYPE_INT64, 1, &got, &bytes),
                 "execution plan workspace size")) {
      plan->plan = ep;
      plan->workspace = bytes;
    }
  }
  if (!plan->plan) {
    snprintf(why, why_size, "%s", g->failed() ? g->error : last_refusal);
    plan->unsupported = 1;
    delete g; /* nothing of it is kept */
    plan->graph = NULL;
  }
}

AttnPlan *dnn_plan_for(const AttnKey &key, dnn_handle handle) {
  AttnPlan *victim = NULL;
  for (int i = 0; i < DNN_MAX_PLANS; i++) {
    AttnPlan *p = &dnn_plans[i];
    if (p->live && memcmp(&p->key, &key, sizeof key) == 0) {
      p->last_use = ++dnn_clock;
      return p;
    }
    if (!victim || (!p->live && victim->live) || (p->live == victim->live && p->last_use < victim->last_use))
      victim = p;
  }
  /* An evicted plan may still be in flight on a stream: wait for the device before destroying it. */
  if (victim->live && victim->graph) {
    cudaDeviceSynchronize();
    delete victim->graph;
  }
  memset(victim, 0, sizeof *victim);
  victim->key = key;
  char why[768] = "";
  plan_build(victim, handle, why, sizeof why);
  if (victim->unsupported)
    fprintf(stderr,
            "distflash: cuDNN attention does not take %s tq=%lld tk=%lld nh=%lld nkv=%lld hd=%lld delta=%lld%s (%s); "
            "the native kernels run it\n",
            key.backward ? "backward" : "forward", (long long)key.tq, (long long)key.tk, (long long)key.nh,
            (long long)key.nkv, (long long)key.hd, (long long)key.delta, key.masked ? "" : " (unmasked)", why);
  victim->live = 1;
  victim->last_use = ++dnn_clock;
  return victim;
}
