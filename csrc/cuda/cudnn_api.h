/* The few cuDNN 9 backend (graph) API declarations distflash uses, written out by hand so libcudnn is
 * opened with dlopen at run time (no link-time dependency, no cuDNN headers needed to build).
 * Values and signatures follow cudnn_graph.h of cuDNN 9 (stable ABI across 9.x). Enumerations are
 * passed as 32-bit ints, as the C ABI does for these enums. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime.h>

typedef int32_t dnn_status;                  /* cudnnStatus_t */
typedef struct dnn_context_opaque *dnn_handle; /* cudnnHandle_t */
typedef void *dnn_desc;                      /* cudnnBackendDescriptor_t */

enum { DNN_STATUS_SUCCESS = 0, DNN_STATUS_NOT_SUPPORTED = 3000 };

/* cudnnBackendDescriptorType_t */
enum {
  DNN_POINTWISE_DESCRIPTOR = 0,
  DNN_ENGINECFG_DESCRIPTOR = 3,
  DNN_ENGINEHEUR_DESCRIPTOR = 4,
  DNN_EXECUTION_PLAN_DESCRIPTOR = 5,
  DNN_OPERATION_POINTWISE_DESCRIPTOR = 13,
  DNN_OPERATIONGRAPH_DESCRIPTOR = 15,
  DNN_VARIANT_PACK_DESCRIPTOR = 16,
  DNN_TENSOR_DESCRIPTOR = 17,
  DNN_MATMUL_DESCRIPTOR = 18,
  DNN_OPERATION_MATMUL_DESCRIPTOR = 19,
  DNN_REDUCTION_DESCRIPTOR = 21,
  DNN_OPERATION_REDUCTION_DESCRIPTOR = 22,
  DNN_OPERATION_RESHAPE_DESCRIPTOR = 31,
};

/* cudnnBackendAttributeType_t */
enum {
  DNN_TYPE_HANDLE = 0,
  DNN_TYPE_DATA_TYPE = 1,
  DNN_TYPE_BOOLEAN = 2,
  DNN_TYPE_INT64 = 3,
  DNN_TYPE_FLOAT = 4,
  DNN_TYPE_VOID_PTR = 6,
  DNN_TYPE_HEUR_MODE = 8,
  DNN_TYPE_POINTWISE_MODE = 14,
  DNN_TYPE_BACKEND_DESCRIPTOR = 15,
  DNN_TYPE_REDUCTION_OPERATOR_TYPE = 18,
};

/* cudnnBackendAttributeName_t */
enum {
  DNN_ATTR_POINTWISE_MODE = 0,
  DNN_ATTR_POINTWISE_MATH_PREC = 1,
  DNN_ATTR_POINTWISE_AXIS = 9,
  DNN_ATTR_ENGINEHEUR_MODE = 200,
  DNN_ATTR_ENGINEHEUR_OPERATION_GRAPH = 201,
  DNN_ATTR_ENGINEHEUR_RESULTS = 202,
  DNN_ATTR_EXECUTION_PLAN_HANDLE = 400,
  DNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG = 401,
  DNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE = 402,
  DNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR = 750,
  DNN_ATTR_OPERATION_POINTWISE_XDESC = 751,
  DNN_ATTR_OPERATION_POINTWISE_BDESC = 752,
  DNN_ATTR_OPERATION_POINTWISE_YDESC = 753,
  DNN_ATTR_OPERATION_POINTWISE_TDESC = 758,
  DNN_ATTR_OPERATIONGRAPH_HANDLE = 800,
  DNN_ATTR_OPERATIONGRAPH_OPS = 801,
  DNN_ATTR_TENSOR_BYTE_ALIGNMENT = 900,
  DNN_ATTR_TENSOR_DATA_TYPE = 901,
  DNN_ATTR_TENSOR_DIMENSIONS = 902,
  DNN_ATTR_TENSOR_STRIDES = 903,
  DNN_ATTR_TENSOR_UNIQUE_ID = 906,
  DNN_ATTR_TENSOR_IS_VIRTUAL = 907,
  DNN_ATTR_TENSOR_IS_BY_VALUE = 908,
  DNN_ATTR_VARIANT_PACK_UNIQUE_IDS = 1000,
  DNN_ATTR_VARIANT_PACK_DATA_POINTERS = 1001,
  DNN_ATTR_VARIANT_PACK_WORKSPACE = 1003,
  DNN_ATTR_MATMUL_COMP_TYPE = 1500,
  DNN_ATTR_OPERATION_MATMUL_ADESC = 1520,
  DNN_ATTR_OPERATION_MATMUL_BDESC = 1521,
  DNN_ATTR_OPERATION_MATMUL_CDESC = 1522,
  DNN_ATTR_OPERATION_MATMUL_DESC = 1523,
  DNN_ATTR_REDUCTION_OPERATOR = 1600,
  DNN_ATTR_REDUCTION_COMP_TYPE = 1601,
  DNN_ATTR_OPERATION_REDUCTION_XDESC = 1610,
  DNN_ATTR_OPERATION_REDUCTION_YDESC = 1611,
  DNN_ATTR_OPERATION_REDUCTION_DESC = 1612,
  DNN_ATTR_OPERATION_RESHAPE_XDESC = 2200,
  DNN_ATTR_OPERATION_RESHAPE_YDESC = 2201,
};

/* cudnnDataType_t */
enum { DNN_DATA_FLOAT = 0, DNN_DATA_INT32 = 4, DNN_DATA_BFLOAT16 = 9, DNN_DATA_BOOLEAN = 11 };

/* cudnnPointwiseMode_t */
enum {
  DNN_PW_ADD = 0,
  DNN_PW_MUL = 1,
  DNN_PW_DIV = 6,
  DNN_PW_SUB = 9,
  DNN_PW_EXP = 13,
  DNN_PW_LOG = 15,
  DNN_PW_IDENTITY = 21,
  DNN_PW_CMP_GE = 303,
  DNN_PW_GEN_INDEX = 501,
  DNN_PW_BINARY_SELECT = 601,
};

/* cudnnReduceTensorOp_t */
enum { DNN_REDUCE_ADD = 0, DNN_REDUCE_MAX = 3 };

/* cudnnBackendHeurMode_t */
enum { DNN_HEUR_MODE_A = 3 };

typedef size_t (*dnn_get_version_fn)(void);
typedef const char *(*dnn_error_string_fn)(dnn_status status);
typedef void (*dnn_last_error_string_fn)(char *message, size_t max_size);
typedef dnn_status (*dnn_create_fn)(dnn_handle *handle);
typedef dnn_status (*dnn_set_stream_fn)(dnn_handle handle, cudaStream_t stream);
typedef dnn_status (*dnn_backend_create_fn)(int32_t type, dnn_desc *desc);
typedef dnn_status (*dnn_backend_destroy_fn)(dnn_desc desc);
typedef dnn_status (*dnn_backend_finalize_fn)(dnn_desc desc);
typedef dnn_status (*dnn_backend_set_fn)(dnn_desc desc, int32_t name, int32_t type, int64_t count,
                                         const void *values);
typedef dnn_status (*dnn_backend_get_fn)(dnn_desc desc, int32_t name, int32_t type, int64_t requested,
                                         int64_t *returned, void *values);
typedef dnn_status (*dnn_backend_execute_fn)(dnn_handle handle, dnn_desc plan, dnn_desc variant_pack);

/* The entry points, resolved once by dlsym. */
typedef struct {
  dnn_get_version_fn get_version;
  dnn_error_string_fn error_string;
  dnn_last_error_string_fn last_error_string;
  dnn_create_fn create;
  dnn_set_stream_fn set_stream;
  dnn_backend_create_fn backend_create;
  dnn_backend_destroy_fn backend_destroy;
  dnn_backend_finalize_fn backend_finalize;
  dnn_backend_set_fn backend_set;
  dnn_backend_get_fn backend_get;
  dnn_backend_execute_fn backend_execute;
} dnn_api;
