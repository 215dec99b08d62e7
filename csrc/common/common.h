/* Shared by both backends: the last-error message, the allocation registry and argument checks. */
#ifndef DF_COMMON_H
#define DF_COMMON_H

#include "../include/distflash.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Record a printf-style message as the thread's last error and return the status. */
df_status df_fail(df_status status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The allocation registry: every df_malloc'd block, so ops can reject freed or foreign pointers. */
void df_registry_add(void *ptr, uint64_t bytes, int pinned_host);
/* Removes ptr if it starts a live block of the given kind; returns 0 if it does not. */
int df_registry_remove(void *ptr, int pinned_host);
/* 1 if [ptr, ptr+bytes) lies inside one live block (of either kind). */
int df_registry_contains(const void *ptr, uint64_t bytes);
void df_registry_totals(uint64_t *count, uint64_t *bytes);

/* Check that a device range is live; on failure records "fn: argument 'name' ..." */
df_status df_check_range(const char *fn, const char *name, const void *ptr, uint64_t bytes);

#define DF_CHECK(expr)                 \
  do {                                 \
    df_status df_check_status = (expr); \
    if (df_check_status != DF_OK) return df_check_status; \
  } while (0)

#define DF_REQUIRE(cond, fn, ...)                                  \
  do {                                                            \
    if (!(cond)) return df_fail(DF_ERR_INVALID, fn ": " __VA_ARGS__); \
  } while (0)

static inline uint16_t df_f32_to_bf16_bits(float f) {
  union { float f; uint32_t u; } v;
  v.f = f;
  if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40u); /* quiet NaN */
  uint32_t rounding = 0x7fffu + ((v.u >> 16) & 1u); /* round to nearest, ties to even */
  return (uint16_t)((v.u + rounding) >> 16);
}

static inline float df_bf16_bits_to_f32(uint16_t b) {
  union { float f; uint32_t u; } v;
  v.u = ((uint32_t)b) << 16;
  return v.f;
}

#ifdef __CUDACC__
#define DF_HOST_DEVICE __host__ __device__
#else
#define DF_HOST_DEVICE
#endif

/* splitmix64 finaliser: element i of a random tensor is a pure function of (seed, i), so any rank
 * can draw any slice of a parameter and both backends draw the same uniforms. */
static inline DF_HOST_DEVICE uint64_t df_mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

#ifdef __cplusplus
}
#endif
#endif
