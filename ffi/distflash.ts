/**
 * The symbol table of libdistflash_{cpu,cuda}.so: one entry per function of
 * csrc/include/distflash.h, with the C signature beside it.
 *
 * Device addresses travel as `usize` (bigint on the TypeScript side) rather than pointer objects:
 * sub-tensor views are then plain arithmetic, and x86-64 passes both in the same registers. Host buffers that the
 * C side reads or writes (copies, output slots) travel as `buffer` (a TypedArray).
 * Every function returns a df_status (i32); `unwrap` in ffi/unwrap.ts turns it into an exception.
 */

const status = "i32" as const;
const dptr = "usize" as const; // device address (void*, float*, uint16_t* ...)
const stream = "usize" as const; // void* stream handle, 0 = default stream

// df_status df_adamw(float *param, const float *grad, float *m, float *v, int64_t n, float lr,
//   float beta1, float beta2, float eps, float weight_decay, float bc1, float bc2,
//   float grad_scale, void *copy, df_dtype copy_dtype, void *stream)
const ADAMW_PARAMETERS = [
  dptr,
  dptr,
  dptr,
  dptr,
  "i64",
  "f32",
  "f32",
  "f32",
  "f32",
  "f32",
  "f32",
  "f32",
  "f32",
  dptr,
  "i32",
  stream,
] as const;

export const DISTFLASH_SYMBOLS = {
  // const char *df_last_error(void)
  df_last_error: { parameters: [], result: "pointer" },
  // const char *df_backend_name(void)
  df_backend_name: { parameters: [], result: "pointer" },
  // const char *df_build_info(void)
  df_build_info: { parameters: [], result: "pointer" },
  // int32_t df_abi_version(void)
  df_abi_version: { parameters: [], result: "i32" },

  // df_status df_device_count(int32_t *count)
  df_device_count: { parameters: ["buffer"], result: status },
  // df_status df_device_props_get(int32_t device, df_device_props *props)
  df_device_props_get: { parameters: ["i32", "buffer"], result: status },
  // df_status df_set_device(int32_t device)
  df_set_device: { parameters: ["i32"], result: status },
  // df_status df_driver_version(int32_t *version)
  df_driver_version: { parameters: ["buffer"], result: status },
  // df_status df_runtime_version(int32_t *version)
  df_runtime_version: { parameters: ["buffer"], result: status },
  // df_status df_device_synchronize(void)
  df_device_synchronize: { parameters: [], result: status },
  // df_status df_mem_info(uint64_t *free_bytes, uint64_t *total_bytes)
  df_mem_info: { parameters: ["buffer", "buffer"], result: status },

  // df_status df_malloc(void **ptr, uint64_t bytes)
  df_malloc: { parameters: ["buffer", "u64"], result: status },
  // df_status df_free(void *ptr)
  df_free: { parameters: [dptr], result: status },
  // df_status df_malloc_host(void **ptr, uint64_t bytes)
  df_malloc_host: { parameters: ["buffer", "u64"], result: status },
  // df_status df_free_host(void *ptr)
  df_free_host: { parameters: [dptr], result: status },
  // df_status df_memcpy_h2d(void *dst, const void *src, uint64_t bytes, void *stream)
  df_memcpy_h2d: { parameters: [dptr, "buffer", "u64", stream], result: status },
  // df_status df_memcpy_d2h(void *dst, const void *src, uint64_t bytes, void *stream)
  df_memcpy_d2h: { parameters: ["buffer", dptr, "u64", stream], result: status },
  // df_status df_memcpy_d2h_async(void *dst, const void *src, uint64_t bytes, void *stream)
  df_memcpy_d2h_async: { parameters: ["buffer", dptr, "u64", stream], result: status },
  // df_status df_memcpy_d2d(void *dst, const void *src, uint64_t bytes, void *stream)
  df_memcpy_d2d: { parameters: [dptr, dptr, "u64", stream], result: status },
  // df_status df_memset(void *ptr, int32_t value, uint64_t bytes, void *stream)
  df_memset: { parameters: [dptr, "i32", "u64", stream], result: status },
  // df_status df_memcpy_2d(void *dst, uint64_t dst_pitch, const void *src, uint64_t src_pitch,
  //                        uint64_t width, uint64_t rows, void *stream)
  df_memcpy_2d: { parameters: [dptr, "u64", dptr, "u64", "u64", "u64", stream], result: status },
  // df_status df_host_register(void *host, uint64_t bytes)
  df_host_register: { parameters: [dptr, "u64"], result: status },
  // df_status df_host_unregister(void *host)
  df_host_unregister: { parameters: [dptr], result: status },
  // df_status df_live_allocations(uint64_t *count, uint64_t *bytes)
  df_live_allocations: { parameters: ["buffer", "buffer"], result: status },

  // df_status df_stream_create(void **stream)
  df_stream_create: { parameters: ["buffer"], result: status },
  // df_status df_stream_destroy(void *stream)
  df_stream_destroy: { parameters: [stream], result: status },
  // df_status df_stream_synchronize(void *stream)
  df_stream_synchronize: { parameters: [stream], result: status },
  // df_status df_event_create(void **event)
  df_event_create: { parameters: ["buffer"], result: status },
  // df_status df_event_destroy(void *event)
  df_event_destroy: { parameters: ["usize"], result: status },
  // df_status df_event_record(void *event, void *stream)
  df_event_record: { parameters: ["usize", stream], result: status },
  // df_status df_stream_wait_event(void *stream, void *event)
  df_stream_wait_event: { parameters: [stream, "usize"], result: status },
  // df_status df_event_synchronize(void *event)
  df_event_synchronize: { parameters: ["usize"], result: status },
  // df_status df_event_elapsed_ms(float *ms, void *start, void *end)
  df_event_elapsed_ms: { parameters: ["buffer", "usize", "usize"], result: status },

  // df_status df_cast_f32_to_bf16(uint16_t *out, const float *in, uint64_t n, void *stream)
  df_cast_f32_to_bf16: { parameters: [dptr, dptr, "u64", stream], result: status },
  // df_status df_cast_bf16_to_f32(float *out, const uint16_t *in, uint64_t n, void *stream)
  df_cast_bf16_to_f32: { parameters: [dptr, dptr, "u64", stream], result: status },
  // df_status df_axpy_f32(float *y, const float *x, float a, uint64_t n, void *stream)
  df_axpy_f32: { parameters: [dptr, dptr, "f32", "u64", stream], result: status },
  // df_status df_fill_normal_f32(float *out, uint64_t n, uint64_t seed, uint64_t index0,
  //                              float mean, float std, void *stream)
  df_fill_normal_f32: {
    parameters: [dptr, "u64", "u64", "u64", "f32", "f32", stream],
    result: status,
  },

  // ---- Llama ops (see csrc/include/distflash.h for semantics) ----
  // df_status df_gemm(int32_t trans_a, int32_t trans_b, int64_t m, int64_t n, int64_t k,
  //   float alpha, const void *a, int64_t lda, const void *b, int64_t ldb, float beta, void *c,
  //   int64_t ldc, df_dtype ab_dtype, df_dtype c_dtype, void *stream)
  df_gemm: {
    parameters: [
      "i32",
      "i32",
      "i64",
      "i64",
      "i64",
      "f32",
      dptr,
      "i64",
      dptr,
      "i64",
      "f32",
      dptr,
      "i64",
      "i32",
      "i32",
      stream,
    ],
    result: status,
  },
  // df_status df_embedding_forward(void *out, const void *table, const int32_t *ids, int64_t t,
  //   int64_t v, int64_t h, df_dtype dtype, void *stream)
  df_embedding_forward: {
    parameters: [dptr, dptr, dptr, "i64", "i64", "i64", "i32", stream],
    result: status,
  },
  // df_status df_embedding_backward(float *dtable, const void *dout, const int32_t *ids,
  //   int64_t t, int64_t v, int64_t h, df_dtype dtype, void *stream)
  df_embedding_backward: {
    parameters: [dptr, dptr, dptr, "i64", "i64", "i64", "i32", stream],
    result: status,
  },
  // df_status df_rmsnorm_forward(void *out, float *rstd, const void *x, const void *w, int64_t t,
  //   int64_t h, float eps, df_dtype dtype, void *stream)
  df_rmsnorm_forward: {
    parameters: [dptr, dptr, dptr, dptr, "i64", "i64", "f32", "i32", stream],
    result: status,
  },
  // df_status df_rmsnorm_backward(void *dx, float *dw, const void *dout, const void *x,
  //   const void *w, const float *rstd, int64_t t, int64_t h, df_dtype dtype, void *stream)
  df_rmsnorm_backward: {
    parameters: [dptr, dptr, dptr, dptr, dptr, dptr, "i64", "i64", "i32", stream],
    result: status,
  },
  // df_status df_rope(void *x, const int32_t *pos, const float *inv_freq, int64_t t,
  //   int64_t heads, int64_t hd, int32_t inverse, df_dtype dtype, void *stream)
  df_rope: {
    parameters: [dptr, dptr, dptr, "i64", "i64", "i64", "i32", "i32", stream],
    result: status,
  },
  // df_status df_attention_forward(void *out, float *lse, const void *q, const void *k,
  //   const void *v, int64_t tq, int64_t tk, int64_t nh, int64_t nkv, int64_t hd,
  //   int64_t q_pos0, int64_t k_pos0, float scale, df_dtype dtype, void *stream)
  df_attention_forward: {
    parameters: [
      dptr,
      dptr,
      dptr,
      dptr,
      dptr,
      "i64",
      "i64",
      "i64",
      "i64",
      "i64",
      "i64",
      "i64",
      "f32",
      "i32",
      stream,
    ],
    result: status,
  },
  // df_status df_attention_backward(float *dq, float *dk, float *dv, const void *dout,
  //   const void *q, const void *k, const void *v, const void *out, const float *lse, int64_t tq,
  //   int64_t tk, int64_t nh, int64_t nkv, int64_t hd, int64_t q_pos0, int64_t k_pos0,
  //   float scale, df_dtype dtype, void *stream)
  df_attention_backward: {
    parameters: [
      dptr,
      dptr,
      dptr,
      dptr,
      dptr,
      dptr,
      dptr,
      dptr,
      dptr,
      "i64",
      "i64",
      "i64",
      "i64",
      "i64",
      "i64",
      "i64",
      "f32",
      "i32",
      stream,
    ],
    result: status,
  },
  // df_status df_attention_forward_docs(void *out, float *lse, const void *q, const void *k,
  //   const void *v, int64_t tq, int64_t tk, int64_t nh, int64_t nkv, int64_t hd,
  //   int64_t q_pos0, int64_t k_pos0, float scale, df_dtype dtype, const int64_t *doc_starts,
  //   int64_t n_docs, int64_t window, void *stream)
  df_attention_forward_docs: {
    parameters: [
      dptr,
      dptr,
      dptr,
      dptr,
      dptr,
      "i64",
      "i64",
      "i64",
      "i64",
      "i64",
      "i64",
      "i64",
      "f32",
      "i32",
      dptr,
      "i64",
      "i64",
      stream,
    ],
    result: status,
  },
  // df_status df_attention_backward_docs(float *dq, float *dk, float *dv, const void *dout,
  //   const void *q, const void *k, const void *v, const void *out, const float *lse, int64_t tq,
  //   int64_t tk, int64_t nh, int64_t nkv, int64_t hd, int64_t q_pos0, int64_t k_pos0,
  //   float scale, df_dtype dtype, const int64_t *doc_starts, int64_t n_docs, int64_t window,
  //   void *stream)
  df_attention_backward_docs: {
    parameters: [
      dptr,
      dptr,
      dptr,
      dptr,
      dptr,
      dptr,
      dptr,
      dptr,
      dptr,
      "i64",
      "i64",
      "i64",
      "i64",
      "i64",
      "i64",
      "i64",
      "f32",
      "i32",
      dptr,
      "i64",
      "i64",
      stream,
    ],
    result: status,
  },
  // df_status df_attention_kernel_set(int32_t kernel)
  df_attention_kernel_set: { parameters: ["i32"], result: status },
  // int32_t df_attention_kernel_get(void)
  df_attention_kernel_get: { parameters: [], result: "i32" },
  // df_status df_cudnn_probe(int64_t *version, char *path, uint64_t path_bytes)
  df_cudnn_probe: { parameters: ["buffer", "buffer", "u64"], result: status },
  // df_status df_attention_merge(float *out, float *lse, const void *part_out,
  //   const float *part_lse, int64_t tq, int64_t nh, int64_t hd, df_dtype dtype, void *stream)
  df_attention_merge: {
    parameters: [dptr, dptr, dptr, dptr, "i64", "i64", "i64", "i32", stream],
    result: status,
  },
  // df_status df_swiglu_forward(void *out, const void *gate, const void *up, int64_t n,
  //   df_dtype dtype, void *stream)
  df_swiglu_forward: { parameters: [dptr, dptr, dptr, "i64", "i32", stream], result: status },
  // df_status df_swiglu_backward(void *dgate, void *dup, const void *dout, const void *gate,
  //   const void *up, int64_t n, df_dtype dtype, void *stream)
  df_swiglu_backward: {
    parameters: [dptr, dptr, dptr, dptr, dptr, "i64", "i32", stream],
    result: status,
  },
  // df_status df_add(void *out, const void *a, const void *b, int64_t n, df_dtype dtype,
  //   void *stream)
  df_add: { parameters: [dptr, dptr, dptr, "i64", "i32", stream], result: status },
  // df_status df_convert(void *out, df_dtype out_dtype, const void *in, df_dtype in_dtype,
  //   int64_t n, void *stream)
  df_convert: { parameters: [dptr, "i32", dptr, "i32", "i64", stream], result: status },
  // df_status df_ce_chunk_forward(float *m, float *s, float *target, const float *logits,
  //   const int32_t *labels, int64_t t, int64_t vc, int64_t v0, void *stream)
  df_ce_chunk_forward: {
    parameters: [dptr, dptr, dptr, dptr, dptr, "i64", "i64", "i64", stream],
    result: status,
  },
  // df_status df_ce_finalize(float *loss, float *lse, const float *m, const float *s,
  //   const float *target, const int32_t *labels, int64_t t, void *stream)
  df_ce_finalize: {
    parameters: [dptr, dptr, dptr, dptr, dptr, dptr, "i64", stream],
    result: status,
  },
  // df_status df_ce_chunk_backward(float *logits, const float *lse, const int32_t *labels,
  //   int64_t t, int64_t vc, int64_t v0, float scale, void *stream)
  df_ce_chunk_backward: {
    parameters: [dptr, dptr, dptr, "i64", "i64", "i64", "f32", stream],
    result: status,
  },
  // df_status df_sum_squares(float *sum, const float *x, int64_t n, void *stream)
  df_sum_squares: { parameters: [dptr, dptr, "i64", stream], result: status },
  // df_status df_sum(float *sum, const float *x, int64_t n, void *stream)
  df_sum: { parameters: [dptr, dptr, "i64", stream], result: status },
  // df_adamw: the signature is above ADAMW_PARAMETERS
  df_adamw: {
    parameters: ADAMW_PARAMETERS,
    result: status,
  },
  // The same df_adamw, run on a thread of Deno's pool (returns a Promise of the status): the
  // offloaded optimizer's host update overlaps the next step's GPU work.
  df_adamw_async: {
    name: "df_adamw",
    parameters: ADAMW_PARAMETERS,
    result: status,
    nonblocking: true,
  },
} as const satisfies Deno.ForeignLibraryInterface;

/**
 * The native library's symbols as Deno's FFI types them.
 *
 * @internal Raw FFI bindings, not re-exported from mod.ts.
 */
export type DistflashSymbols = Deno.DynamicLibrary<typeof DISTFLASH_SYMBOLS>["symbols"];

/** Byte layout of df_device_props (csrc/include/distflash.h). */
export const DEVICE_PROPS_LAYOUT = {
  size: 256 + 8 + 8 + 4 * 4,
  name: 0,
  totalBytes: 256,
  freeBytes: 264,
  ccMajor: 272,
  ccMinor: 276,
  multiprocessors: 280,
  pciBusId: 284,
} as const;
