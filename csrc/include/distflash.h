/*
 * distflash.h: the one C ABI of both native backends.
 *
 * libdistflash_cpu.so (plain C, built with cc) and libdistflash_cuda.so (built with nvcc) export
 * exactly these functions, so the TypeScript above them has one code path. Conventions:
 *   - Every function returns a df_status; DF_OK is 0. On failure, df_last_error() returns a
 *     message (thread-local) that names the function and the bad argument.
 *   - "Device" pointers come from df_malloc. On the CPU backend they are host memory. Every op
 *     checks that each pointer range it touches lies inside a live allocation, so a freed or
 *     foreign pointer is an error, not a crash.
 *   - Streams and events are opaque handles; on the CPU backend they exist but work is
 *     synchronous. A NULL stream means the default stream.
 *   - bf16 values are passed as uint16_t bit patterns.
 */
#ifndef DISTFLASH_H
#define DISTFLASH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DF_API __attribute__((visibility("default")))
#define DF_ABI_VERSION 1

typedef enum {
  DF_OK = 0,
  DF_ERR_INVALID = 1,     /* bad argument: size, pointer, shape */
  DF_ERR_OOM = 2,         /* allocation failed */
  DF_ERR_DEVICE = 3,      /* CUDA runtime or driver error */
  DF_ERR_UNSUPPORTED = 4, /* not available on this backend or build */
  DF_ERR_LIBRARY = 5,     /* a run-time library (cuBLASLt) could not be loaded */
  DF_ERR_INTERNAL = 6
} df_status;

typedef struct {
  char name[256];
  uint64_t total_bytes;
  uint64_t free_bytes;
  int32_t cc_major;
  int32_t cc_minor;
  int32_t multiprocessors;
  int32_t pci_bus_id;
} df_device_props;

/* ---- library and errors ---- */
DF_API const char *df_last_error(void);
DF_API const char *df_backend_name(void);  /* "cpu" or "cuda" */
DF_API const char *df_build_info(void);    /* compiler, flags, architectures, git commit */
DF_API int32_t df_abi_version(void);

/* ---- devices ---- */
DF_API df_status df_device_count(int32_t *count);
DF_API df_status df_device_props_get(int32_t device, df_device_props *props);
DF_API df_status df_set_device(int32_t device);
DF_API df_status df_driver_version(int32_t *version);  /* CUDA encoding 1000*major + 10*minor; 0 on CPU */
DF_API df_status df_runtime_version(int32_t *version);
DF_API df_status df_device_synchronize(void);
DF_API df_status df_mem_info(uint64_t *free_bytes, uint64_t *total_bytes);

/* ---- memory ---- */
DF_API df_status df_malloc(void **ptr, uint64_t bytes);
DF_API df_status df_free(void *ptr);
DF_API df_status df_malloc_host(void **ptr, uint64_t bytes); /* pinned on CUDA */
DF_API df_status df_free_host(void *ptr);
DF_API df_status df_memcpy_h2d(void *dst, const void *src, uint64_t bytes, void *stream);
DF_API df_status df_memcpy_d2h(void *dst, const void *src, uint64_t bytes, void *stream);
DF_API df_status df_memcpy_d2d(void *dst, const void *src, uint64_t bytes, void *stream);
DF_API df_status df_memset(void *ptr, int32_t value, uint64_t bytes, void *stream);
DF_API df_status df_live_allocations(uint64_t *count, uint64_t *bytes);

/* ---- streams and events ---- */
DF_API df_status df_stream_create(void **stream);
DF_API df_status df_stream_destroy(void *stream);
DF_API df_status df_stream_synchronize(void *stream);
DF_API df_status df_event_create(void **event);
DF_API df_status df_event_destroy(void *event);
DF_API df_status df_event_record(void *event, void *stream);
DF_API df_status df_stream_wait_event(void *stream, void *event);
DF_API df_status df_event_synchronize(void *event);
DF_API df_status df_event_elapsed_ms(float *ms, void *start, void *end);

/* ---- first ops ---- */
DF_API df_status df_cast_f32_to_bf16(uint16_t *out, const float *in, uint64_t n, void *stream);
DF_API df_status df_cast_bf16_to_f32(float *out, const uint16_t *in, uint64_t n, void *stream);
/* y = a * x + y, fp32 */
DF_API df_status df_axpy_f32(float *y, const float *x, float a, uint64_t n, void *stream);

#ifdef __cplusplus
}
#endif
#endif /* DISTFLASH_H */
