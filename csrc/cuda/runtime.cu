/* CUDA backend: devices, memory, streams and events over the CUDA runtime (linked statically). */
#include <stdio.h>
#include <string.h>

#include "cuda_common.cuh"

#ifndef DF_BUILD_INFO
#define DF_BUILD_INFO "cuda backend"
#endif

extern "C" {

const char *df_backend_name(void) { return "cuda"; }
const char *df_build_info(void) { return DF_BUILD_INFO; }

df_status df_device_count(int32_t *count) {
  if (!count) return df_fail(DF_ERR_INVALID, "df_device_count: null output");
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    /* No driver or no GPU is a normal answer (zero devices); the reason stays readable. */
    cudaGetLastError();
    *count = 0;
    df_fail(DF_OK, "no CUDA device: %s", cudaGetErrorString(err));
    return DF_OK;
  }
  *count = n;
  return DF_OK;
}

df_status df_device_props_get(int32_t device, df_device_props *props) {
  if (!props) return df_fail(DF_ERR_INVALID, "df_device_props_get: null output");
  int n = 0;
  DF_CUDA(cudaGetDeviceCount(&n));
  if (device < 0 || device >= n) return df_fail(DF_ERR_INVALID, "df_device_props_get: device %d does not exist (%d devices)", device, n);
  cudaDeviceProp p;
  DF_CUDA(cudaGetDeviceProperties(&p, device));
  memset(props, 0, sizeof *props);
  snprintf(props->name, sizeof props->name, "%s", p.name);
  props->total_bytes = p.totalGlobalMem;
  props->cc_major = p.major;
  props->cc_minor = p.minor;
  props->multiprocessors = p.multiProcessorCount;
  props->pci_bus_id = p.pciBusID;
  int current = -1;
  DF_CUDA(cudaGetDevice(&current));
  if (current == device) { /* free memory needs a context; only read it on the current device */
    size_t free_b = 0, total_b = 0;
    DF_CUDA(cudaMemGetInfo(&free_b, &total_b));
    props->free_bytes = free_b;
  }
  return DF_OK;
}

df_status df_set_device(int32_t device) {
  DF_CUDA(cudaSetDevice(device));
  return DF_OK;
}

df_status df_driver_version(int32_t *version) {
  if (!version) return df_fail(DF_ERR_INVALID, "df_driver_version: null output");
  int v = 0;
  DF_CUDA(cudaDriverGetVersion(&v));
  *version = v;
  return DF_OK;
}

df_status df_runtime_version(int32_t *version) {
  if (!version) return df_fail(DF_ERR_INVALID, "df_runtime_version: null output");
  int v = 0;
  DF_CUDA(cudaRuntimeGetVersion(&v));
  *version = v;
  return DF_OK;
}

df_status df_device_synchronize(void) {
  DF_CUDA(cudaDeviceSynchronize());
  return DF_OK;
}

df_status df_mem_info(uint64_t *free_bytes, uint64_t *total_bytes) {
  if (!free_bytes || !total_bytes) return df_fail(DF_ERR_INVALID, "df_mem_info: null output");
  size_t f = 0, t = 0;
  DF_CUDA(cudaMemGetInfo(&f, &t));
  *free_bytes = f;
  *total_bytes = t;
  return DF_OK;
}

df_status df_malloc(void **ptr, uint64_t bytes) {
  if (!ptr) return df_fail(DF_ERR_INVALID, "df_malloc: null output");
  *ptr = NULL;
  if (bytes == 0) return df_fail(DF_ERR_INVALID, "df_malloc: size must be positive, got 0 bytes");
  void *p = NULL;
  cudaError_t err = cudaMalloc(&p, bytes);
  if (err != cudaSuccess) {
    cudaGetLastError();
    size_t f = 0, t = 0;
    cudaMemGetInfo(&f, &t);
    return df_fail(err == cudaErrorMemoryAllocation ? DF_ERR_OOM : DF_ERR_DEVICE,
                   "df_malloc: cudaMalloc of %llu bytes failed: %s (free %llu of %llu bytes)",
                   (unsigned long long)bytes, cudaGetErrorString(err), (unsigned long long)f,
                   (unsigned long long)t);
  }
  df_registry_add(p, bytes, 0);
  *ptr = p;
  return DF_OK;
}

df_status df_free(void *ptr) {
  if (!ptr) return DF_OK;
  if (!df_registry_remove(ptr, 0)) return df_fail(DF_ERR_INVALID, "df_free: %p is not a live allocation from df_malloc (double free or foreign pointer)", ptr);
  DF_CUDA(cudaFree(ptr));
  return DF_OK;
}

df_status df_malloc_host(void **ptr, uint64_t bytes) {
  if (!ptr) return df_fail(DF_ERR_INVALID, "df_malloc_host: null output");
  *ptr = NULL;
  if (bytes == 0) return df_fail(DF_ERR_INVALID, "df_malloc_host: size must be positive, got 0 bytes");
  void *p = NULL;
  DF_CUDA(cudaMallocHost(&p, bytes));
  df_registry_add(p, bytes, 1);
  *ptr = p;
  return DF_OK;
}

df_status df_free_host(void *ptr) {
  if (!ptr) return DF_OK;
  if (!df_registry_remove(ptr, 1)) return df_fail(DF_ERR_INVALID, "df_free_host: %p is not a live allocation from df_malloc_host", ptr);
  DF_CUDA(cudaFreeHost(ptr));
  return DF_OK;
}

df_status df_memcpy_d2h_async(void *dst, const void *src, uint64_t bytes, void *stream) {
  DF_CHECK(df_check_range("df_memcpy_d2h_async", "src", src, bytes));
  if (bytes && !dst) return df_fail(DF_ERR_INVALID, "df_memcpy_d2h_async: argument 'dst' is a null pointer");
  DF_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, df_stream(stream)));
  return DF_OK;
}

df_status df_memcpy_h2d(void *dst, const void *src, uint64_t bytes, void *stream) {
  DF_CHECK(df_check_range("df_memcpy_h2d", "dst", dst, bytes));
  if (bytes && !src) return df_fail(DF_ERR_INVALID, "df_memcpy_h2d: argument 'src' is a null pointer");
  DF_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, df_stream(stream)));
  return DF_OK;
}

/* Synchronous with respect to the host: the destination usually belongs to a JavaScript buffer. */
df_status df_memcpy_d2h(void *dst, const void *src, uint64_t bytes, void *stream) {
  DF_CHECK(df_check_range("df_memcpy_d2h", "src", src, bytes));
  if (bytes && !dst) return df_fail(DF_ERR_INVALID, "df_memcpy_d2h: argument 'dst' is a null pointer");
  DF_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, df_stream(stream)));
  DF_CUDA(cudaStreamSynchronize(df_stream(stream)));
  return DF_OK;
}

df_status df_memcpy_d2d(void *dst, const void *src, uint64_t bytes, void *stream) {
  DF_CHECK(df_check_range("df_memcpy_d2d", "dst", dst, bytes));
  DF_CHECK(df_check_range("df_memcpy_d2d", "src", src, bytes));
  DF_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, df_stream(stream)));
  return DF_OK;
}

df_status df_memcpy_2d(void *dst, uint64_t dst_pitch, const void *src, uint64_t src_pitch, uint64_t width,
                       uint64_t rows, void *stream) {
  if (rows == 0 || width == 0) return DF_OK;
  if (width > dst_pitch || width > src_pitch) return df_fail(DF_ERR_INVALID, "df_memcpy_2d: width exceeds a pitch");
  DF_CHECK(df_check_range("df_memcpy_2d", "dst", dst, dst_pitch * (rows - 1) + width));
  DF_CHECK(df_check_range("df_memcpy_2d", "src", src, src_pitch * (rows - 1) + width));
  DF_CUDA(cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, width, rows, cudaMemcpyDeviceToDevice,
                            df_stream(stream)));
  return DF_OK;
}

df_status df_memset(void *ptr, int32_t value, uint64_t bytes, void *stream) {
  DF_CHECK(df_check_range("df_memset", "ptr", ptr, bytes));
  DF_CUDA(cudaMemsetAsync(ptr, value, bytes, df_stream(stream)));
  return DF_OK;
}

df_status df_host_register(void *host, uint64_t bytes) {
  if (!host || bytes == 0) return df_fail(DF_ERR_INVALID, "df_host_register: null pointer or zero bytes");
  DF_CUDA(cudaHostRegister(host, bytes, cudaHostRegisterDefault));
  return DF_OK;
}

df_status df_host_unregister(void *host) {
  if (!host) return df_fail(DF_ERR_INVALID, "df_host_unregister: null pointer");
  DF_CUDA(cudaHostUnregister(host));
  return DF_OK;
}

df_status df_stream_create(void **stream) {
  if (!stream) return df_fail(DF_ERR_INVALID, "df_stream_create: null output");
  cudaStream_t s;
  DF_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  *stream = (void *)s;
  return DF_OK;
}

df_status df_stream_destroy(void *stream) {
  if (stream) DF_CUDA(cudaStreamDestroy(df_stream(stream)));
  return DF_OK;
}

df_status df_stream_synchronize(void *stream) {
  DF_CUDA(cudaStreamSynchronize(df_stream(stream)));
  return DF_OK;
}

df_status df_event_create(void **event) {
  if (!event) return df_fail(DF_ERR_INVALID, "df_event_create: null output");
  cudaEvent_t e;
  DF_CUDA(cudaEventCreate(&e));
  *event = (void *)e;
  return DF_OK;
}

df_status df_event_destroy(void *event) {
  if (event) DF_CUDA(cudaEventDestroy((cudaEvent_t)event));
  return DF_OK;
}

df_status df_event_record(void *event, void *stream) {
  if (!event) return df_fail(DF_ERR_INVALID, "df_event_record: null event");
  DF_CUDA(cudaEventRecord((cudaEvent_t)event, df_stream(stream)));
  return DF_OK;
}

df_status df_stream_wait_event(void *stream, void *event) {
  if (!event) return df_fail(DF_ERR_INVALID, "df_stream_wait_event: null event");
  DF_CUDA(cudaStreamWaitEvent(df_stream(stream), (cudaEvent_t)event, 0));
  return DF_OK;
}

df_status df_event_synchronize(void *event) {
  if (!event) return df_fail(DF_ERR_INVALID, "df_event_synchronize: null event");
  DF_CUDA(cudaEventSynchronize((cudaEvent_t)event));
  return DF_OK;
}

df_status df_event_elapsed_ms(float *ms, void *start, void *end) {
  if (!ms || !start || !end) return df_fail(DF_ERR_INVALID, "df_event_elapsed_ms: null argument");
  DF_CUDA(cudaEventElapsedTime(ms, (cudaEvent_t)start, (cudaEvent_t)end));
  return DF_OK;
}

}  // extern "C"
