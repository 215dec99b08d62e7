/* CPU backend: the device is the host; streams are synchronous; events carry timestamps. */
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "../common/common.h"

#ifndef DF_BUILD_INFO
#define DF_BUILD_INFO "cpu backend"
#endif

const char *df_backend_name(void) { return "cpu"; }
const char *df_build_info(void) { return DF_BUILD_INFO; }

df_status df_device_count(int32_t *count) {
  if (!count) return df_fail(DF_ERR_INVALID, "df_device_count: null output");
  *count = 1;
  return DF_OK;
}

static uint64_t host_memory(int available) {
  long pages = sysconf(available ? _SC_AVPHYS_PAGES : _SC_PHYS_PAGES);
  long page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;
}

df_status df_device_props_get(int32_t device, df_device_props *props) {
  if (!props) return df_fail(DF_ERR_INVALID, "df_device_props_get: null output");
  if (device != 0) return df_fail(DF_ERR_INVALID, "df_device_props_get: device %d does not exist (the cpu backend has device 0 only)", device);
  memset(props, 0, sizeof *props);
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  snprintf(props->name, sizeof props->name, "host CPU (%ld cores)", cores);
  props->total_bytes = host_memory(0);
  props->free_bytes = host_memory(1);
  props->multiprocessors = (int32_t)cores;
  props->pci_bus_id = -1;
  return DF_OK;
}

df_status df_set_device(int32_t device) {
  if (device != 0) return df_fail(DF_ERR_INVALID, "df_set_device: device %d does not exist (the cpu backend has device 0 only)", device);
  return DF_OK;
}

df_status df_driver_version(int32_t *version) {
  if (!version) return df_fail(DF_ERR_INVALID, "df_driver_version: null output");
  *version = 0;
  return DF_OK;
}

df_status df_runtime_version(int32_t *version) {
  if (!version) return df_fail(DF_ERR_INVALID, "df_runtime_version: null output");
  *version = 0;
  return DF_OK;
}

df_status df_device_synchronize(void) { return DF_OK; }

df_status df_mem_info(uint64_t *free_bytes, uint64_t *total_bytes) {
  if (!free_bytes || !total_bytes) return df_fail(DF_ERR_INVALID, "df_mem_info: null output");
  *free_bytes = host_memory(1);
  *total_bytes = host_memory(0);
  return DF_OK;
}

/* Allocations are 64-byte aligned so vectorised loops and later bf16/f32 views stay aligned. */
static df_status host_alloc(const char *fn, void **ptr, uint64_t bytes, int pinned) {
  if (!ptr) return df_fail(DF_ERR_INVALID, "%s: null output", fn);
  *ptr = NULL;
  if (bytes == 0) return df_fail(DF_ERR_INVALID, "%s: size must be positive, got 0 bytes", fn);
  if (bytes > ((uint64_t)1 << 46)) return df_fail(DF_ERR_INVALID, "%s: size %llu bytes is beyond any machine's memory", fn, (unsigned long long)bytes);
  void *p = NULL;
  uint64_t rounded = (bytes + 63) & ~(uint64_t)63;
  if (posix_memalign(&p, 64, rounded) != 0 || !p) return df_fail(DF_ERR_OOM, "%s: out of host memory allocating %llu bytes", fn, (unsigned long long)bytes);
  df_registry_add(p, bytes, pinned);
  *ptr = p;
  return DF_OK;
}

static df_status host_free(const char *fn, void *ptr, int pinned) {
  if (!ptr) return DF_OK;
  if (!df_registry_remove(ptr, pinned)) return df_fail(DF_ERR_INVALID, "%s: %p is not a live allocation from %s (double free or foreign pointer)", fn, ptr, pinned ? "df_malloc_host" : "df_malloc");
  free(ptr);
  return DF_OK;
}

df_status df_malloc(void **ptr, uint64_t bytes) { return host_alloc("df_malloc", ptr, bytes, 0); }
df_status df_free(void *ptr) { return host_free("df_free", ptr, 0); }
df_status df_malloc_host(void **ptr, uint64_t bytes) { return host_alloc("df_malloc_host", ptr, bytes, 1); }
df_status df_free_host(void *ptr) { return host_free("df_free_host", ptr, 1); }

/* Streams and events: small tagged structs so a wrong handle is caught. */
#define STREAM_TAG 0x5354524dU
#define EVENT_TAG 0x45564e54U
typedef struct { uint32_t tag; } cpu_stream;
typedef struct { uint32_t tag; double seconds; int recorded; } cpu_event;

static df_status check_stream(const char *fn, void *stream) {
  if (stream && ((cpu_stream *)stream)->tag != STREAM_TAG) return df_fail(DF_ERR_INVALID, "%s: %p is not a stream", fn, stream);
  return DF_OK;
}

df_status df_memcpy_h2d(void *dst, const void *src, uint64_t bytes, void *stream) {
  DF_CHECK(check_stream("df_memcpy_h2d", stream));
  DF_CHECK(df_check_range("df_memcpy_h2d", "dst", dst, bytes));
  if (bytes && !src) return df_fail(DF_ERR_INVALID, "df_memcpy_h2d: argument 'src' is a null pointer");
  memcpy(dst, src, bytes);
  return DF_OK;
}

df_status df_memcpy_d2h_async(void *dst, const void *src, uint64_t bytes, void *stream) {
  return df_memcpy_d2h(dst, src, bytes, stream); /* the CPU backend's copies are synchronous */
}

df_status df_memcpy_d2h(void *dst, const void *src, uint64_t bytes, void *stream) {
  DF_CHECK(check_stream("df_memcpy_d2h", stream));
  DF_CHECK(df_check_range("df_memcpy_d2h", "src", src, bytes));
  if (bytes && !dst) return df_fail(DF_ERR_INVALID, "df_memcpy_d2h: argument 'dst' is a null pointer");
  memcpy(dst, src, bytes);
  return DF_OK;
}

df_status df_memcpy_d2d(void *dst, const void *src, uint64_t bytes, void *stream) {
  DF_CHECK(check_stream("df_memcpy_d2d", stream));
  DF_CHECK(df_check_range("df_memcpy_d2d", "dst", dst, bytes));
  DF_CHECK(df_check_range("df_memcpy_d2d", "src", src, bytes));
  memmove(dst, src, bytes);
  return DF_OK;
}

df_status df_memcpy_2d(void *dst, uint64_t dst_pitch, const void *src, uint64_t src_pitch, uint64_t width,
                       uint64_t rows, void *stream) {
  DF_CHECK(check_stream("df_memcpy_2d", stream));
  if (rows == 0 || width == 0) return DF_OK;
  if (width > dst_pitch || width > src_pitch) return df_fail(DF_ERR_INVALID, "df_memcpy_2d: width exceeds a pitch");
  DF_CHECK(df_check_range("df_memcpy_2d", "dst", dst, dst_pitch * (rows - 1) + width));
  DF_CHECK(df_check_range("df_memcpy_2d", "src", src, src_pitch * (rows - 1) + width));
  for (uint64_t i = 0; i < rows; i++) {
    memmove((char *)dst + i * dst_pitch, (const char *)src + i * src_pitch, width);
  }
  return DF_OK;
}

df_status df_memset(void *ptr, int32_t value, uint64_t bytes, void *stream) {
  DF_CHECK(check_stream("df_memset", stream));
  DF_CHECK(df_check_range("df_memset", "ptr", ptr, bytes));
  memset(ptr, value, bytes);
  return DF_OK;
}

df_status df_host_register(void *host, uint64_t bytes) {
  (void)host;
  (void)bytes;
  return DF_OK; /* host memory is already where the CPU backend computes */
}

df_status df_host_unregister(void *host) {
  (void)host;
  return DF_OK;
}

df_status df_stream_create(void **stream) {
  if (!stream) return df_fail(DF_ERR_INVALID, "df_stream_create: null output");
  cpu_stream *s = (cpu_stream *)malloc(sizeof *s);
  if (!s) return df_fail(DF_ERR_OOM, "df_stream_create: out of memory");
  s->tag = STREAM_TAG;
  *stream = s;
  return DF_OK;
}

df_status df_stream_destroy(void *stream) {
  if (!stream) return DF_OK;
  DF_CHECK(check_stream("df_stream_destroy", stream));
  ((cpu_stream *)stream)->tag = 0;
  free(stream);
  return DF_OK;
}

df_status df_stream_synchronize(void *stream) { return check_stream("df_stream_synchronize", stream); }

static df_status check_event(const char *fn, void *event) {
  if (!event || ((cpu_event *)event)->tag != EVENT_TAG) return df_fail(DF_ERR_INVALID, "%s: %p is not an event", fn, event);
  return DF_OK;
}

df_status df_event_create(void **event) {
  if (!event) return df_fail(DF_ERR_INVALID, "df_event_create: null output");
  cpu_event *e = (cpu_event *)calloc(1, sizeof *e);
  if (!e) return df_fail(DF_ERR_OOM, "df_event_create: out of memory");
  e->tag = EVENT_TAG;
  *event = e;
  return DF_OK;
}

df_status df_event_destroy(void *event) {
  if (!event) return DF_OK;
  DF_CHECK(check_event("df_event_destroy", event));
  ((cpu_event *)event)->tag = 0;
  free(event);
  return DF_OK;
}

df_status df_event_record(void *event, void *stream) {
  DF_CHECK(check_event("df_event_record", event));
  DF_CHECK(check_stream("df_event_record", stream));
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  ((cpu_event *)event)->seconds = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
  ((cpu_event *)event)->recorded = 1;
  return DF_OK;
}

df_status df_stream_wait_event(void *stream, void *event) {
  DF_CHECK(check_stream("df_stream_wait_event", stream));
  return check_event("df_stream_wait_event", event);
}

df_status df_event_synchronize(void *event) { return check_event("df_event_synchronize", event); }

df_status df_event_elapsed_ms(float *ms, void *start, void *end) {
  if (!ms) return df_fail(DF_ERR_INVALID, "df_event_elapsed_ms: null output");
  DF_CHECK(check_event("df_event_elapsed_ms", start));
  DF_CHECK(check_event("df_event_elapsed_ms", end));
  cpu_event *a = (cpu_event *)start, *b = (cpu_event *)end;
  if (!a->recorded || !b->recorded) return df_fail(DF_ERR_INVALID, "df_event_elapsed_ms: both events must be recorded first");
  *ms = (float)(1e3 * (b->seconds - a->seconds));
  return DF_OK;
}
