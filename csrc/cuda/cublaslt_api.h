/* The few cuBLASLt declarations distflash uses, written out by hand so that the library is opened with
 * dlopen at run time (no link-time dependency, no cuBLAS headers needed to build). Values and
 * signatures follow cublasLt.h / cublas_api.h / library_types.h of CUDA 12 and 13, where they are
 * stable ABI. Enumerations are passed as 32-bit ints, as the C ABI does for these enums. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime.h>

typedef int32_t lt_status;                            /* cublasStatus_t */
typedef struct lt_context_opaque *lt_handle;          /* cublasLtHandle_t */
typedef struct lt_matmul_desc_opaque *lt_matmul_desc; /* cublasLtMatmulDesc_t */
typedef struct lt_layout_opaque *lt_layout;           /* cublasLtMatrixLayout_t */
typedef struct lt_pref_opaque *lt_pref;               /* cublasLtMatmulPreference_t */

typedef struct { /* cublasLtMatmulAlgo_t: semi-opaque, copied by value */
  uint64_t data[8];
} lt_algo;

typedef struct { /* cublasLtMatmulHeuristicResult_t */
  lt_algo algo;
  size_t workspace_size;
  lt_status state;
  float waves_count;
  int reserved[4];
} lt_heuristic_result;

/* cublasStatus_t */
enum {
  LT_STATUS_SUCCESS = 0,
  LT_STATUS_NOT_INITIALIZED = 1,
  LT_STATUS_ALLOC_FAILED = 3,
  LT_STATUS_ARCH_MISMATCH = 8,
  LT_STATUS_EXECUTION_FAILED = 13,
  LT_STATUS_NOT_SUPPORTED = 15,
};

/* cudaDataType_t (library_types.h) */
enum { LT_R_32F = 0, LT_R_16BF = 14 };

/* cublasComputeType_t */
enum { LT_COMPUTE_32F = 68 };

/* cublasOperation_t */
enum { LT_OP_N = 0, LT_OP_T = 1 };

/* cublasLtMatmulDescAttributes_t */
enum { LT_MATMUL_DESC_TRANSA = 3, LT_MATMUL_DESC_TRANSB = 4 };

/* cublasLtMatmulPreferenceAttributes_t */
enum {
  LT_PREF_MAX_WORKSPACE_BYTES = 1, /* uint64_t */
  LT_PREF_MIN_ALIGNMENT_A_BYTES = 5, /* uint32_t */
  LT_PREF_MIN_ALIGNMENT_B_BYTES = 6,
  LT_PREF_MIN_ALIGNMENT_C_BYTES = 7,
  LT_PREF_MIN_ALIGNMENT_D_BYTES = 8,
  LT_PREF_IMPL_MASK = 12, /* uint64_t, cublasLtNumericalImplFlags_t */
};

/* cublasLtNumericalImplFlags_t: input types an algorithm may down-convert to */
#define LT_IMPL_INPUT_16F (0x01ull << 16)
#define LT_IMPL_INPUT_16BF (0x02ull << 16)
#define LT_IMPL_INPUT_TF32 (0x04ull << 16)

typedef lt_status (*lt_create_fn)(lt_handle *handle);
typedef lt_status (*lt_destroy_fn)(lt_handle handle);
typedef const char *(*lt_status_string_fn)(lt_status status);
typedef size_t (*lt_get_version_fn)(void);
typedef lt_status (*lt_matmul_desc_create_fn)(lt_matmul_desc *desc, int32_t compute_type, int32_t scale_type);
typedef lt_status (*lt_matmul_desc_destroy_fn)(lt_matmul_desc desc);
typedef lt_status (*lt_matmul_desc_set_attribute_fn)(lt_matmul_desc desc, int32_t attr, const void *buf, size_t size);
typedef lt_status (*lt_layout_create_fn)(lt_layout *layout, int32_t type, uint64_t rows, uint64_t cols, int64_t ld);
typedef lt_status (*lt_layout_destroy_fn)(lt_layout layout);
typedef lt_status (*lt_pref_create_fn)(lt_pref *pref);
typedef lt_status (*lt_pref_destroy_fn)(lt_pref pref);
typedef lt_status (*lt_pref_set_attribute_fn)(lt_pref pref, int32_t attr, const void *buf, size_t size);
typedef lt_status (*lt_algo_get_heuristic_fn)(lt_handle handle, lt_matmul_desc desc, lt_layout a, lt_layout b,
                                              lt_layout c, lt_layout d, lt_pref pref, int requested,
                                              lt_heuristic_result *results, int *returned);
typedef lt_status (*lt_matmul_fn)(lt_handle handle, lt_matmul_desc desc, const void *alpha, const void *a,
                                  lt_layout a_desc, const void *b, lt_layout b_desc, const void *beta, const void *c,
                                  lt_layout c_desc, void *d, lt_layout d_desc, const lt_algo *algo, void *workspace,
                                  size_t workspace_bytes, cudaStream_t stream);

/* The entry points, resolved once by dlsym. */
typedef struct {
  lt_create_fn create;
  lt_destroy_fn destroy;
  lt_status_string_fn status_string;
  lt_get_version_fn get_version;
  lt_matmul_desc_create_fn matmul_desc_create;
  lt_matmul_desc_destroy_fn matmul_desc_destroy;
  lt_matmul_desc_set_attribute_fn matmul_desc_set_attribute;
  lt_layout_create_fn layout_create;
  lt_layout_destroy_fn layout_destroy;
  lt_pref_create_fn pref_create;
  lt_pref_destroy_fn pref_destroy;
  lt_pref_set_attribute_fn pref_set_attribute;
  lt_algo_get_heuristic_fn algo_get_heuristic;
  lt_matmul_fn matmul;
} lt_api;
