/* df_gemm through cuBLASLt, opened with dlopen on the first GEMM (so this library loads, and reports
 * the absence of cuBLAS only when a GEMM is asked for).
 *
 * Row-major C[M,N] = alpha op(A) op(B) + beta C is column-major C^T[N,M] = op(B)^T op(A)^T: the
 * operands are swapped and each row-major matrix is read as its column-major transpose, so no data
 * moves. Compute type is fp32 (CUBLAS_COMPUTE_32F); for fp32 operands the heuristic is also told to
 * exclude TF32 / bf16 / fp16 down-conversion, so CUDA fp32 GEMMs track the CPU backend closely.
 *
 * State (all under one mutex): the library and its entry points; one cuBLASLt handle per device; a
 * 32 MiB workspace per (device, stream) (cudaMalloc'd, outside the df_malloc registry; streams beyond
 * the table run without workspace); and a cache of plans (matmul descriptor, layouts and the
 * heuristic's algorithm) keyed by shape, transposes, leading dimensions, types and pointer alignment,
 * so a repeated GEMM does not query the heuristic again. The mutex is held through the cuBLASLt call
 * itself, which only enqueues work, so a plan is never evicted while in use.
 *
 * The type combination cuBLASLt lacks (fp32 operands with a bf16 C), and any GEMM for which the
 * heuristic finds no algorithm (odd leading dimensions or misaligned pointers, say), run a plain tiled
 * CUDA-core kernel instead: slow, but correct. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mutex>

#include "cublaslt_api.h"
#include "kernel_utils.cuh"

#define LT_MAX_DEVICES 64
#define LT_MAX_WORKSPACES 32
#define LT_MAX_PLANS 256
#define LT_WORKSPACE_BYTES (32ull << 20)

/* ---------------- fallback kernel ---------------- */

#define FB_TILE 16

/* C = alpha op(A) op(B) + beta C over 16 x 16 tiles (grid-stride over tiles); C is not read when
 * beta == 0. */
template <typename TA, typename TC>
__global__ void gemm_fallback_kernel(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                                     const TA *a, int64_t lda, const TA *b, int64_t ldb, float beta, TC *c,
                                     int64_t ldc) {
  __shared__ float As[FB_TILE][FB_TILE + 1], Bs[FB_TILE][FB_TILE + 1];
  const int tx = threadIdx.x % FB_TILE, ty = threadIdx.x / FB_TILE;
  const int64_t tiles_n = (n + FB_TILE - 1) / FB_TILE, tiles = tiles_n * ((m + FB_TILE - 1) / FB_TILE);
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t row0 = (tile / tiles_n) * FB_TILE, col0 = (tile % tiles_n) * FB_TILE;
    const int64_t row = row0 + ty, col = col0 + tx;
    float acc = 0.0f;
    for (int64_t k0 = 0; k0 < k; k0 += FB_TILE) {
      const int64_t ak = k0 + tx, bk = k0 + ty;
      As[ty][tx] = (row < m && ak < k) ? ld_f32(trans_a ? a + ak * lda + row : a + row * lda + ak) : 0.0f;
      Bs[ty][tx] = (bk < k && col < n) ? ld_f32(trans_b ? b + col * ldb + bk : b + bk * ldb + col) : 0.0f;
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < FB_TILE; kk++) acc = fmaf(As[ty][kk], Bs[kk][tx], acc);
      __syncthreads();
    }
    if (row < m && col < n) {
      TC *dst = c + row * ldc + col;
      const float prior = beta != 0.0f ? beta * ld_f32(dst) : 0.0f;
      st_f32(dst, alpha * acc + prior);
    }
  }
}

static df_status gemm_fallback(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha, const void *a,
                               int64_t lda, const void *b, int64_t ldb, float beta, void *c, int64_t ldc,
                               df_dtype ab_dtype, df_dtype c_dtype, cudaStream_t s) {
  const uint64_t tiles = (uint64_t)((m + FB_TILE - 1) / FB_TILE) * (uint64_t)((n + FB_TILE - 1) / FB_TILE);
  const unsigned grid = tiles < 65535u ? (unsigned)tiles : 65535u, threads = FB_TILE * FB_TILE;
#define FB_LAUNCH(TA, TC)                                                                                   \
  gemm_fallback_kernel<TA, TC><<<grid, threads, 0, s>>>(trans_a, trans_b, m, n, k, alpha, (const TA *)a, lda, \
                                                        (const TA *)b, ldb, beta, (TC *)c, ldc)
  if (ab_dtype == DF_F32 && c_dtype == DF_F32) FB_LAUNCH(float, float);
  else if (ab_dtype == DF_F32) FB_LAUNCH(float, __nv_bfloat16);
  else if (c_dtype == DF_F32) FB_LAUNCH(__nv_bfloat16, float);
  else FB_LAUNCH(__nv_bfloat16, __nv_bfloat16);
#undef FB_LAUNCH
  DF_CUDA_LAUNCHED();
  return DF_OK;
}

/* ---------------- library loading ---------------- */

static std::mutex lt_mutex; /* guards everything below */
static int lt_loaded = 0;   /* 0: not tried, 1: loaded, -1: failed (lt_load_error says why) */
static char lt_load_error[2048];
static void *lt_library;
static lt_api lt;

/* Resolves one entry point; on failure writes why into `why` and returns 0. */
static int lt_resolve(void *lib, const char *name, void **slot, char *why, size_t why_size) {
  *slot = dlsym(lib, name);
  if (*slot) return 1;
  snprintf(why, why_size, "lacks the symbol %s", name);
  return 0;
}

/* Caller holds lt_mutex. */
static df_status lt_load(void) {
  if (lt_loaded > 0) return DF_OK;
  if (lt_loaded < 0) return df_fail(DF_ERR_LIBRARY, "df_gemm: cuBLASLt is not available: %s", lt_load_error);
  static const char *defaults[] = {"libcublasLt.so.13", "libcublasLt.so.12", "/usr/local/cuda/lib64/libcublasLt.so.13",
                                   "/usr/local/cuda/lib64/libcublasLt.so.12"};
  const char *env = getenv("DISTFLASH_CUBLASLT_PATH");
  const char *from_env[1] = {env};
  const char **paths = (env && *env) ? from_env : defaults;
  const int count = (env && *env) ? 1 : (int)(sizeof defaults / sizeof defaults[0]);
  char tried[1536] = "";
  size_t used = 0;
  for (int i = 0; i < count && !lt_library; i++) {
    void *lib = dlopen(paths[i], RTLD_NOW | RTLD_LOCAL);
    char missing[128] = "";
    if (lib) {
      const size_t ms = sizeof missing;
      int ok = 1;
      ok = ok && lt_resolve(lib, "cublasLtCreate", (void **)&lt.create, missing, ms);
      ok = ok && lt_resolve(lib, "cublasLtDestroy", (void **)&lt.destroy, missing, ms);
      ok = ok && lt_resolve(lib, "cublasLtGetStatusString", (void **)&lt.status_string, missing, ms);
      ok = ok && lt_resolve(lib, "cublasLtGetVersion", (void **)&lt.get_version, missing, ms);
      ok = ok && lt_resolve(lib, "cublasLtMatmulDescCreate", (void **)&lt.matmul_desc_create, missing, ms);
      ok = ok && lt_resolve(lib, "cublasLtMatmulDescDestroy", (void **)&lt.matmul_desc_destroy, missing, ms);
      ok = ok && lt_resolve(lib, "cublasLtMatmulDescSetAttribute", (void **)&lt.matmul_desc_set_attribute, missing, ms);
      ok = ok && lt_resolve(lib, "cublasLtMatrixLayoutCreate", (void **)&lt.layout_create, missing, ms);
      ok = ok && lt_resolve(lib, "cublasLtMatrixLayoutDestroy", (void **)&lt.layout_destroy, missing, ms);
      ok = ok && lt_resolve(lib, "cublasLtMatmulPreferenceCreate", (void **)&lt.pref_create, missing, ms);
      ok = ok && lt_resolve(lib, "cublasLtMatmulPreferenceDestroy", (void **)&lt.pref_destroy, missing, ms);
      ok = ok && lt_resolve(lib, "cublasLtMatmulPreferenceSetAttribute", (void **)&lt.pref_set_attribute, missing, ms);
      ok = ok && lt_resolve(lib, "cublasLtMatmulAlgoGetHeuristic", (void **)&lt.algo_get_heuristic, missing, ms);
      ok = ok && lt_resolve(lib, "cublasLtMatmul", (void **)&lt.matmul, missing, ms);
      if (ok) {
        lt_library = lib;
        break;
      }
      memset(&lt, 0, sizeof lt); /* nothing may point into a closed library */
      dlclose(lib);
    }
    const char *why = lib ? missing : dlerror();
    if (!why) why = "unknown error";
    /* dlerror() usually starts with the path already; name the path only when it does not */
    int wrote = strstr(why, paths[i]) ? snprintf(tried + used, sizeof tried - used, "%s%s", used ? "; " : "", why)
                                      : snprintf(tried + used, sizeof tried - used, "%s%s: %s", used ? "; " : "",
                                                 paths[i], why);
    if (wrote > 0) used = used + (size_t)wrote < sizeof tried ? used + (size_t)wrote : sizeof tried - 1;
  }
  if (!lt_library) {
    snprintf(lt_load_error, sizeof lt_load_error,
             "could not dlopen libcublasLt (tried %s); install cuBLAS (CUDA 12 or 13) or set "
             "DISTFLASH_CUBLASLT_PATH to the library file",
             tried);
    lt_loaded = -1;
    return df_fail(DF_ERR_LIBRARY, "df_gemm: cuBLASLt is not available: %s", lt_load_error);
  }
  lt_loaded = 1;
  return DF_OK;
}

/* A cuBLAS status as a df_status: allocation -> OOM, execution, architecture or failed CUDA
 * initialisation -> DEVICE,
 * not supported -> UNSUPPORTED, anything else (invalid value, not initialised, ...) -> INTERNAL. */
static df_status lt_fail(const char *what, lt_status st) {
  const char *text = lt.status_string ? lt.status_string(st) : NULL;
  const df_status code = st == LT_STATUS_ALLOC_FAILED                                        ? DF_ERR_OOM
                         : (st == LT_STATUS_EXECUTION_FAILED || st == LT_STATUS_ARCH_MISMATCH ||
                            st == LT_STATUS_NOT_INITIALIZED)
                               ? DF_ERR_DEVICE
                         : st == LT_STATUS_NOT_SUPPORTED                                     ? DF_ERR_UNSUPPORTED
                                                                                             : DF_ERR_INTERNAL;
  return df_fail(code, "df_gemm: %s failed: cuBLAS status %d (%s)", what, (int)st, text ? text : "?");
}

#define LT_CALL(what, call)                                \
  do {                                                     \
    lt_status lt_call_status = (call);                     \
    if (lt_call_status != LT_STATUS_SUCCESS) return lt_fail(what, lt_call_status); \
  } while (0)

/* ---------------- handles, workspaces, plans ---------------- */

static lt_handle lt_handles[LT_MAX_DEVICES];

struct lt_workspace {
  int device;
  cudaStream_t stream;
  void *ptr;
};
static lt_workspace lt_workspaces[LT_MAX_WORKSPACES];
static int lt_workspace_count;

struct gemm_key {
  int32_t device, trans_a, trans_b, ab_dtype, c_dtype;
  uint32_t align_a, align_b, align_c;
  int64_t m, n, k, lda, ldb, ldc;
  uint64_t workspace_bytes;
};

struct gemm_plan {
  gemm_key key;
  int live;
  uint64_t last_use;
  lt_matmul_desc desc;
  lt_layout la, lb, lc; /* cuBLASLt's A (our B), B (our A), C = D */
  lt_algo algo;
  int fallback; /* the heuristic found no algorithm: run gemm_fallback */
};
static gemm_plan lt_plans[LT_MAX_PLANS];
static uint64_t lt_clock;

static uint32_t pointer_alignment(const void *p) {
  uintptr_t v = (uintptr_t)p;
  uint32_t align = 256;
  while (align > 1 && (v % align)) align >>= 1;
  return align;
}

static void plan_release(gemm_plan *plan) {
  if (plan->desc) lt.matmul_desc_destroy(plan->desc);
  if (plan->la) lt.layout_destroy(plan->la);
  if (plan->lb) lt.layout_destroy(plan->lb);
  if (plan->lc) lt.layout_destroy(plan->lc);
  memset(plan, 0, sizeof *plan);
}

static df_status workspace_for(int device, cudaStream_t stream, void **ptr, uint64_t *bytes) {
  for (int i = 0; i < lt_workspace_count; i++) {
    if (lt_workspaces[i].device == device && lt_workspaces[i].stream == stream) {
      *ptr = lt_workspaces[i].ptr;
      *bytes = LT_WORKSPACE_BYTES;
      return DF_OK;
    }
  }
  *ptr = NULL;
  *bytes = 0;
  if (lt_workspace_count == LT_MAX_WORKSPACES) return DF_OK; /* too many streams: run without workspace */
  void *p = NULL;
  DF_CUDA(cudaMalloc(&p, LT_WORKSPACE_BYTES));
  lt_workspaces[lt_workspace_count++] = lt_workspace{device, stream, p};
  *ptr = p;
  *bytes = LT_WORKSPACE_BYTES;
  return DF_OK;
}

/* Build the descriptors of a new plan and ask the heuristic for its algorithm. */
static df_status plan_build(gemm_plan *plan, lt_handle handle) {
  const gemm_key &key = plan->key;
  const int32_t ab_type = key.ab_dtype == DF_BF16 ? LT_R_16BF : LT_R_32F;
  const int32_t c_type = key.c_dtype == DF_BF16 ? LT_R_16BF : LT_R_32F;
  const int32_t op_a = key.trans_b ? LT_OP_T : LT_OP_N; /* cuBLASLt's A is our B */
  const int32_t op_b = key.trans_a ? LT_OP_T : LT_OP_N; /* cuBLASLt's B is our A */
  LT_CALL("cublasLtMatmulDescCreate", lt.matmul_desc_create(&plan->desc, LT_COMPUTE_32F, LT_R_32F));
  LT_CALL("cublasLtMatmulDescSetAttribute(TRANSA)",
          lt.matmul_desc_set_attribute(plan->desc, LT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a));
  LT_CALL("cublasLtMatmulDescSetAttribute(TRANSB)",
          lt.matmul_desc_set_attribute(plan->desc, LT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b));
  /* Column-major views: our B (row-major [K,N], or [N,K] when trans_b) is [N,K] (or [K,N]). */
  LT_CALL("cublasLtMatrixLayoutCreate(A)",
          lt.layout_create(&plan->la, ab_type, (uint64_t)(key.trans_b ? key.k : key.n),
                           (uint64_t)(key.trans_b ? key.n : key.k), key.ldb));
  LT_CALL("cublasLtMatrixLayoutCreate(B)",
          lt.layout_create(&plan->lb, ab_type, (uint64_t)(key.trans_a ? key.m : key.k),
                           (uint64_t)(key.trans_a ? key.k : key.m), key.lda));
  LT_CALL("cublasLtMatrixLayoutCreate(C)", lt.layout_create(&plan->lc, c_type, (uint64_t)key.n, (uint64_t)key.m, key.ldc));

  lt_pref pref = NULL;
  LT_CALL("cublasLtMatmulPreferenceCreate", lt.pref_create(&pref));
  lt_status st = LT_STATUS_SUCCESS;
  const uint64_t ws = key.workspace_bytes;
  const uint32_t al_a = key.align_b, al_b = key.align_a, al_c = key.align_c; /* swapped operands */
  const char *step = "cublasLtMatmulPreferenceSetAttribute";
  if (st == LT_STATUS_SUCCESS) st = lt.pref_set_attribute(pref, LT_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
  if (st == LT_STATUS_SUCCESS) st = lt.pref_set_attribute(pref, LT_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof al_a);
  if (st == LT_STATUS_SUCCESS) st = lt.pref_set_attribute(pref, LT_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof al_b);
  if (st == LT_STATUS_SUCCESS) st = lt.pref_set_attribute(pref, LT_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof al_c);
  if (st == LT_STATUS_SUCCESS) st = lt.pref_set_attribute(pref, LT_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof al_c);
  int found = 0;
  lt_heuristic_result result;
  memset(&result, 0, sizeof result);
  if (st == LT_STATUS_SUCCESS && key.ab_dtype == DF_F32) {
    /* fp32 operands: exact fp32 products only (no TF32 / bf16 / fp16 down-conversion). */
    const uint64_t mask = ~(LT_IMPL_INPUT_TF32 | LT_IMPL_INPUT_16BF | LT_IMPL_INPUT_16F);
    st = lt.pref_set_attribute(pref, LT_PREF_IMPL_MASK, &mask, sizeof mask);
    if (st == LT_STATUS_SUCCESS) {
      step = "cublasLtMatmulAlgoGetHeuristic";
      st = lt.algo_get_heuristic(handle, plan->desc, plan->la, plan->lb, plan->lc, plan->lc, pref, 1, &result, &found);
      if (st == LT_STATUS_SUCCESS && found == 0) {
        /* No algorithm passed the mask: CUBLAS_COMPUTE_32F alone already forbids TF32. */
        const uint64_t all = ~0ull;
        st = lt.pref_set_attribute(pref, LT_PREF_IMPL_MASK, &all, sizeof all);
        found = -1;
      }
    }
  }
  if (st == LT_STATUS_SUCCESS && found <= 0) {
    step = "cublasLtMatmulAlgoGetHeuristic";
    found = 0;
    st = lt.algo_get_heuristic(handle, plan->desc, plan->la, plan->lb, plan->lc, plan->lc, pref, 1, &result, &found);
  }
  lt.pref_destroy(pref);
  if (st == LT_STATUS_NOT_SUPPORTED || (st == LT_STATUS_SUCCESS && (found <= 0 || result.state != LT_STATUS_SUCCESS))) {
    plan->fallback = 1; /* no algorithm for this configuration */
    return DF_OK;
  }
  if (st != LT_STATUS_SUCCESS) return lt_fail(step, st);
  plan->algo = result.algo;
  return DF_OK;
}

/* Caller holds lt_mutex. Returns the cached plan for `key`, building (and maybe evicting) one. */
static df_status plan_for(const gemm_key &key, lt_handle handle, gemm_plan **out) {
  gemm_plan *victim = NULL;
  for (int i = 0; i < LT_MAX_PLANS; i++) {
    gemm_plan *p = &lt_plans[i];
    if (p->live && memcmp(&p->key, &key, sizeof key) == 0) {
      p->last_use = ++lt_clock;
      *out = p;
      return DF_OK;
    }
    if (!victim || (!p->live && victim->live) || (p->live == victim->live && p->last_use < victim->last_use))
      victim = p;
  }
  if (victim->live) plan_release(victim);
  memset(victim, 0, sizeof *victim);
  victim->key = key;
  df_status st = plan_build(victim, handle);
  if (st != DF_OK) {
    plan_release(victim);
    return st;
  }
  victim->live = 1;
  victim->last_use = ++lt_clock;
  *out = victim;
  return DF_OK;
}

/* ---------------- the entry point ---------------- */

extern "C" {

/* Argument checks follow the CPU twin (csrc/cpu/gemm.c) in order and wording. */
df_status df_gemm(int32_t trans_a, int32_t trans_b, int64_t m, int64_t n, int64_t k, float alpha, const void *a,
                  int64_t lda, const void *b, int64_t ldb, float beta, void *c, int64_t ldc, df_dtype ab_dtype,
                  df_dtype c_dtype, void *stream) {
  static const char *fn = "df_gemm";
  if (trans_a != 0 && trans_a != 1)
    return df_fail(DF_ERR_INVALID, "df_gemm: argument 'trans_a' must be 0 or 1, got %d", trans_a);
  if (trans_b != 0 && trans_b != 1)
    return df_fail(DF_ERR_INVALID, "df_gemm: argument 'trans_b' must be 0 or 1, got %d", trans_b);
  DF_CHECK(check_dim(fn, "m", m, 1));
  DF_CHECK(check_dim(fn, "n", n, 1));
  DF_CHECK(check_dim(fn, "k", k, 1));
  DF_CHECK(check_dtype(fn, "ab_dtype", ab_dtype));
  DF_CHECK(check_dtype(fn, "c_dtype", c_dtype));
  const int ta = trans_a, tb = trans_b;
  /* Stored shapes: A is [m, k] or [k, m] (trans_a); B is [k, n] or [n, k] (trans_b); C is [m, n]. */
  const int64_t a_rows = ta ? k : m, a_cols = ta ? m : k;
  const int64_t b_rows = tb ? n : k, b_cols = tb ? k : n;
  if (lda < a_cols || lda > DIM_MAX)
    return df_fail(DF_ERR_INVALID,
                   "df_gemm: argument 'lda' (%lld) must be >= the row length of A (%lld; A is stored [%lld, %lld]%s)",
                   (long long)lda, (long long)a_cols, (long long)a_rows, (long long)a_cols, ta ? ", trans_a" : "");
  if (ldb < b_cols || ldb > DIM_MAX)
    return df_fail(DF_ERR_INVALID,
                   "df_gemm: argument 'ldb' (%lld) must be >= the row length of B (%lld; B is stored [%lld, %lld]%s)",
                   (long long)ldb, (long long)b_cols, (long long)b_rows, (long long)b_cols, tb ? ", trans_b" : "");
  if (ldc < n || ldc > DIM_MAX)
    return df_fail(DF_ERR_INVALID, "df_gemm: argument 'ldc' (%lld) must be >= the row length of C (n = %lld)",
                   (long long)ldc, (long long)n);
  /* Extents: (rows - 1) * ld + row length elements. */
  int64_t a_extent = 0, b_extent = 0, c_extent = 0;
  DF_CHECK(check_numel(fn, "a", &a_extent, a_rows - 1, lda, 1));
  DF_CHECK(check_numel(fn, "b", &b_extent, b_rows - 1, ldb, 1));
  DF_CHECK(check_numel(fn, "c", &c_extent, m - 1, ldc, 1));
  DF_CHECK(check_elems(fn, "a", a, a_extent + a_cols, dtype_bytes(ab_dtype)));
  DF_CHECK(check_elems(fn, "b", b, b_extent + b_cols, dtype_bytes(ab_dtype)));
  DF_CHECK(check_elems(fn, "c", c, c_extent + n, dtype_bytes(c_dtype)));
  cudaStream_t s = df_stream(stream);
  if (ab_dtype == DF_F32 && c_dtype == DF_BF16) /* no such cuBLASLt combination */
    return gemm_fallback(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, ab_dtype, c_dtype, s);
  if (m > INT32_MAX || n > INT32_MAX || k > INT32_MAX)
    return df_fail(DF_ERR_UNSUPPORTED, "df_gemm: dimensions beyond 2^31-1 are not supported (m=%lld n=%lld k=%lld)",
                   (long long)m, (long long)n, (long long)k);

  std::lock_guard<std::mutex> guard(lt_mutex);
  DF_CHECK(lt_load());
  int device = 0;
  DF_CUDA(cudaGetDevice(&device));
  if (device < 0 || device >= LT_MAX_DEVICES)
    return df_fail(DF_ERR_UNSUPPORTED, "df_gemm: device %d is beyond the %d supported", device, LT_MAX_DEVICES);
  if (!lt_handles[device]) {
    lt_handle handle = NULL;
    LT_CALL("cublasLtCreate", lt.create(&handle));
    lt_handles[device] = handle;
  }
  void *workspace = NULL;
  uint64_t workspace_bytes = 0;
  DF_CHECK(workspace_for(device, s, &workspace, &workspace_bytes));

  gemm_key key;
  memset(&key, 0, sizeof key); /* padding too: keys are compared with memcmp */
  key.device = device;
  key.trans_a = ta;
  key.trans_b = tb;
  key.ab_dtype = ab_dtype;
  key.c_dtype = c_dtype;
  key.align_a = pointer_alignment(a);
  key.align_b = pointer_alignment(b);
  key.align_c = pointer_alignment(c);
  key.m = m;
  key.n = n;
  key.k = k;
  key.lda = lda;
  key.ldb = ldb;
  key.ldc = ldc;
  key.workspace_bytes = workspace_bytes;
  gemm_plan *plan = NULL;
  DF_CHECK(plan_for(key, lt_handles[device], &plan));
  if (plan->fallback) return gemm_fallback(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, ab_dtype, c_dtype, s);
  LT_CALL("cublasLtMatmul", lt.matmul(lt_handles[device], plan->desc, &alpha, b, plan->la, a, plan->lb, &beta, c,
                                      plan->lc, c, plan->lc, &plan->algo, workspace, (size_t)workspace_bytes, s));
  return DF_OK;
}

}  // extern "C"
