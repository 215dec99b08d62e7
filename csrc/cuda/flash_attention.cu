/* Flash attention on tensor cores, bf16 operands, fp32 accumulation, head dims 64 and 128: the
 * launches and the dispatch. The kernels live by family:
 *   flash_tiles.cuh   swizzled shared-memory tiles and ldmatrix fragments (mma.sync kernels)
 *   flash_fwd.cuh     the mma.sync forward (sm_80 and sm_90a)
 *   flash_bwd.cuh     the mma.sync backward kernels and the prep kernel (L and D rows)
 *   flash_fwd_sm90.cu, flash_bwd_sm90.cu   the Hopper (wgmma) kernels, the defaults on sm_90a
 *                     (faster than mma.sync on one H100, 2026-12-07)
 *   flash_internal.cuh  PTX wrappers, parameter structs and the per-head rows all of them share
 *
 * Which kernel runs is decided here, in one place: the production choice (forward_default,
 * backward_default) unless a benchmark asks for a variant (forward_variant, backward_variant).
 * Tuning knobs (environment, read per call; for benchmarks): DISTFLASH_FLASH=0 turns this path off;
 * DISTFLASH_FLASH_FWD and DISTFLASH_FLASH_BWD pick a tile variant (timings in bench/NOTES.md);
 * DISTFLASH_FLASH_FWD=4 and 5 are the Hopper forward (5, with intra-warpgroup overlap, is the
 * default on sm_90a) and DISTFLASH_FLASH_BWD=4 the Hopper backward (the default on sm_90a);
 * DISTFLASH_FLASH_FWD=6 and DISTFLASH_FLASH_BWD=5 the mma.sync kernels (the sm_80 defaults). */
#include <stdlib.h>

#include <initializer_list>

#include "flash_attention.cuh"
#include "stream_scratch.cuh"
#include "flash_bwd.cuh"
#include "flash_fwd.cuh"

namespace flash {

static int env_int(const char *name, int fallback) {
  const char *s = getenv(name);
  if (!s || !*s) return fallback;
  char *end = NULL;
  const long v = strtol(s, &end, 10);
  return (end && *end == 0) ? (int)v : fallback;
}

static bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

/* The calls these kernels take: bf16 (the caller checked), hd 64 or 128, a positive scale (the online
 * softmax keeps the maximum of raw scores), 16-byte aligned tensors (lse may be anywhere), not
 * switched off; a sliding window only where the Hopper kernels run (the mma.sync kernels mask
 * causally only). */
static bool flash_applies(int hd, float scale, int64_t window, std::initializer_list<const void *> ptrs) {
  if (hd != 64 && hd != 128) return false;
  if (window > 0 && !sm90_available()) return false;
  if (!(scale > 0.0f)) return false;
  for (const void *ptr : ptrs)
    if (!aligned16(ptr)) return false;
  return env_int("DISTFLASH_FLASH", 1) != 0;
}

static int64_t clamp_delta(int64_t q_pos0, int64_t k_pos0) {
  const int64_t d = q_pos0 - k_pos0, lim = (int64_t)1 << 50;
  return d < -lim ? -lim : d > lim ? lim : d;
}

/* A window longer than any distance a clamped delta and a block leave (2^51) cuts nothing: none,
 * which also keeps the kernels' window arithmetic inside int64. */
static int64_t clamp_window(int64_t window) { return window > ((int64_t)1 << 51) ? 0 : window; }

static unsigned grid_y(int64_t tiles) { return (unsigned)(tiles < 65535 ? tiles : 65535); }

template <class C>
static df_status launch_fwd(const FwdParams &prm, int nh, cudaStream_t s) {
  auto kernel = flash_fwd_kernel<C>;
  DF_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM));
  FwdParams p = prm;
  p.n_qtiles = (int)((p.tq + C::BQ - 1) / C::BQ);
  kernel<<<dim3((unsigned)nh, grid_y(p.n_qtiles)), C::THREADS, C::SMEM, s>>>(p);
  DF_CUDA_LAUNCHED();
  return DF_OK;
}

template <class C>
static df_status launch_bwd(const BwdParams &prm, int nh, cudaStream_t s) {
  auto kernel = flash_bwd_kernel<C>;
  DF_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM));
  BwdParams p = prm;
  p.n_ktiles = (int)((p.tk + C::BK - 1) / C::BK);
  kernel<<<dim3((unsigned)nh, grid_y(p.n_ktiles)), C::THREADS, C::SMEM, s>>>(p);
  DF_CUDA_LAUNCHED();
  return DF_OK;
}

template <class C>
static df_status launch_bwd2(const BwdParams &prm, int nh, cudaStream_t s) {
  auto kernel = flash_bwd2_kernel<C>;
  DF_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM));
  BwdParams p = prm;
  p.n_ktiles = (int)((p.tk + C::BK - 1) / C::BK);
  kernel<<<dim3((unsigned)nh, grid_y(p.n_ktiles)), C::THREADS, C::SMEM, s>>>(p);
  DF_CUDA_LAUNCHED();
  return DF_OK;
}

/* Scratch for the backward's L and D rows (stream_scratch.cuh); streams beyond its table fall back to
 * the general kernels. */
static StreamScratch flash_scratch;

/* ---------------- which kernel runs ---------------- */

/* The mma.sync kernels: the production choice where the Hopper kernels cannot run (sm_80, or a
 * build without sm_90a), and variant 6 (forward) / 5 (backward) everywhere, for comparison. */
static df_status forward_mma(const FwdParams &p, int nh, int hd, cudaStream_t s) {
  if (hd == 128) return launch_fwd<FwdCfg<128, 4, 2, 64>>(p, nh, s);
  return launch_fwd<FwdCfg<64, 4, 2, 64>>(p, nh, s);
}

static df_status backward_mma(const BwdParams &p, int nh, int hd, cudaStream_t s) {
  if (hd == 128) return launch_bwd2<Bwd2Cfg<128, false>>(p, nh, s);
  return launch_bwd2<Bwd2Cfg<64, false>>(p, nh, s);
}

/* The production kernels: the Hopper (wgmma) ones where they run. One H100 on 2026-12-07 (bench/
 * NOTES.md, ../gpu-runs log 08): forward v5 432-445 TF/s against 357-370 (hd 128) and 318-331
 * against 309-321 (hd 64); backward v4 356-366 against 263-291 (hd 128) and 235-242 against
 * 230-237 (hd 64); every attention test passed with them. */
static df_status forward_default(const FwdParams &p, int nh, int hd, cudaStream_t s) {
  if (sm90_available()) return launch_fwd_sm90(p, nh, hd, /*overlap=*/true, s);
  return forward_mma(p, nh, hd, s);
}

static df_status backward_default(const BwdParams &p, int nh, int hd, cudaStream_t s) {
  if (sm90_available()) return launch_bwd_sm90(p, nh, hd, s);
  return backward_mma(p, nh, hd, s);
}

/* Benchmark-only tile variants (DISTFLASH_FLASH_FWD = 1..6); an unknown number, or the Hopper kernel
 * where it cannot run, gives the production kernel. */
static df_status forward_variant(int variant, const FwdParams &p, int nh, int hd, cudaStream_t s) {
  if (variant == 6) return forward_mma(p, nh, hd, s);
  if (variant == 4 || variant == 5) {
    if (sm90_available()) return launch_fwd_sm90(p, nh, hd, variant == 5, s);
    return forward_default(p, nh, hd, s);
  }
  if (hd == 128) {
    switch (variant) {
      case 1: return launch_fwd<FwdCfg<128, 4, 2, 32>>(p, nh, s);
      case 2: return launch_fwd<FwdCfg<128, 8, 1, 128>>(p, nh, s);
      case 3: return launch_fwd<FwdCfg<128, 8, 2, 32>>(p, nh, s);
      default: return forward_default(p, nh, hd, s);
    }
  }
  switch (variant) {
    case 1: return launch_fwd<FwdCfg<64, 4, 2, 128>>(p, nh, s);
    case 2: return launch_fwd<FwdCfg<64, 8, 1, 128>>(p, nh, s);
    default: return forward_default(p, nh, hd, s);
  }
}

/* Benchmark-only backward variants (DISTFLASH_FLASH_BWD = 1..5; bench/NOTES.md: 16-byte dQ atomics
 * measured no faster, the 16-key warp layout slower). */
static df_status backward_variant(int variant, const BwdParams &p, int nh, int hd, cudaStream_t s) {
  if (variant == 5) return backward_mma(p, nh, hd, s);
  if (variant == 4) {
    if (sm90_available()) return launch_bwd_sm90(p, nh, hd, s);
    return backward_default(p, nh, hd, s);
  }
  if (hd == 128) {
    switch (variant) {
      case 1: return launch_bwd2<Bwd2Cfg<128, true>>(p, nh, s);
      case 2: return launch_bwd<BwdCfg<128, 8, 64>>(p, nh, s);
      case 3: return launch_bwd<BwdCfg<128, 8, 32>>(p, nh, s);
      default: return backward_default(p, nh, hd, s);
    }
  }
  switch (variant) {
    case 1: return launch_bwd2<Bwd2Cfg<64, true>>(p, nh, s);
    case 2: return launch_bwd<BwdCfg<64, 8, 64>>(p, nh, s);
    default: return backward_default(p, nh, hd, s);
  }
}

}  // namespace flash

using namespace flash;


df_status flash_attention_forward(bool *handled, bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v,
                                  int64_t tq, int64_t tk, int nh, int nkv, int hd, int64_t q_pos0, int64_t k_pos0,
                                  int64_t window, float scale, cudaStream_t s) {
  *handled = false;
  window = clamp_window(window);
  if (!flash_applies(hd, scale, window, {out, q, k, v})) return DF_OK;
  FwdParams p{};
  p.q = q;
  p.k = k;
  p.v = v;
  p.out = out;
  p.lse = lse;
  p.tq = tq;
  p.tk = tk;
  p.q_stride = (int64_t)nh * hd;
  p.kv_stride = (int64_t)nkv * hd;
  p.delta = clamp_delta(q_pos0, k_pos0);
  p.window = window;
  p.group = nh / nkv;
  p.scale_log2 = scale * FLASH_LOG2E;
  *handled = true;
  /* Only the production (Hopper) kernels take a window: no benchmark variant then. */
  const int variant = window > 0 ? 0 : env_int("DISTFLASH_FLASH_FWD", 0);
  return variant == 0 ? forward_default(p, nh, hd, s) : forward_variant(variant, p, nh, hd, s);
}

df_status flash_attention_backward(bool *handled, float *dq, float *dk, float *dv, const bf16 *dout, const bf16 *q,
                                   const bf16 *k, const bf16 *v, const bf16 *out, const float *lse, int64_t tq,
                                   int64_t tk, int nh, int nkv, int hd, int64_t q_pos0, int64_t k_pos0, int64_t window,
                                   float scale, cudaStream_t s) {
  *handled = false;
  window = clamp_window(window);
  if (!flash_applies(hd, scale, window, {dq, dk, dv, dout, q, k, v, out})) return DF_OK;
  const int64_t tq_pad = (tq + 127) / 128 * 128;
  void *scratch = NULL;
  int device = 0;
  DF_CUDA(cudaGetDevice(&device));
  DF_CHECK(flash_scratch.get(device, s, 2ull * sizeof(float) * (uint64_t)tq_pad * (uint64_t)nh, &scratch));
  if (!scratch) return DF_OK; /* no scratch slot for this stream: the general kernels run */
  BwdParams p{};
  p.q = q;
  p.k = k;
  p.v = v;
  p.dout = dout;
  p.dq = dq;
  p.dk = dk;
  p.dv = dv;
  float *L = static_cast<float *>(scratch), *D = L + tq_pad * nh;
  p.L = L;
  p.D = D;
  p.tq = tq;
  p.tk = tk;
  p.q_stride = (int64_t)nh * hd;
  p.kv_stride = (int64_t)nkv * hd;
  p.tq_pad = tq_pad;
  p.delta = clamp_delta(q_pos0, k_pos0);
  p.window = window;
  p.group = nh / nkv;
  p.scale = scale;
  p.scale_log2 = scale * FLASH_LOG2E;
  *handled = true;

  const uint64_t prep_threads = (uint64_t)tq_pad * (uint64_t)nh * 32u;
  flash_bwd_prep_kernel<<<df_grid_for(prep_threads, 256), 256, 0, s>>>(L, D, dout, out, lse, tq, tq_pad, nh, hd);
  DF_CUDA_LAUNCHED();

  const int variant = window > 0 ? 0 : env_int("DISTFLASH_FLASH_BWD", 0);
  return variant == 0 ? backward_default(p, nh, hd, s) : backward_variant(variant, p, nh, hd, s);
}
