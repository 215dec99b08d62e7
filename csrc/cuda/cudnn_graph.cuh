/* A builder for cuDNN backend descriptors: creates, sets and finalizes them, owns every one it made
 * (destroying them together) and keeps the first failure as text, after which every call is a
 * no-op. Separate from the attention patterns (cudnn_attention_graph.cu) because it knows nothing
 * of attention: it is the backend API made readable, and the variant pack of an execution uses it
 * too. Virtual tensors get ids from U_FIRST_VIRTUAL up. */
#pragma once
#include <stdint.h>

#include <vector>

#include "cudnn_library.cuh"

/* The first uid of virtual (graph-internal) tensors; the uids below it name real tensors. */
enum { U_FIRST_VIRTUAL = 100 };

/* Creates and finalizes descriptors, remembering each so all are destroyed together; the first
 * failure is kept (as text) and every later call becomes a no-op returning NULL. */
struct Graph {
  std::vector<dnn_desc> owned, ops;
  int64_t next_uid = U_FIRST_VIRTUAL;
  char error[768] = "";

  ~Graph() {
    for (size_t i = owned.size(); i-- > 0;) dnn.backend_destroy(owned[i]);
  }
  bool failed() const { return error[0] != 0; }
  bool check(dnn_status st, const char *what) {
    if (st == DNN_STATUS_SUCCESS || failed()) return !failed();
    dnn_describe(error, sizeof error, what, st);
    return false;
  }
  dnn_desc create(int32_t type, const char *what) {
    if (failed()) return NULL;
    dnn_desc d = NULL;
    if (!check(dnn.backend_create(type, &d), what)) return NULL;
    owned.push_back(d);
    return d;
  }
  void set(dnn_desc d, int32_t name, int32_t type, int64_t count, const void *values, const char *what) {
    if (!failed() && d) check(dnn.backend_set(d, name, type, count, values), what);
  }
  void set_desc(dnn_desc d, int32_t name, dnn_desc value, const char *what) {
    set(d, name, DNN_TYPE_BACKEND_DESCRIPTOR, 1, &value, what);
  }
  dnn_desc finalize(dnn_desc d, const char *what) {
    if (!failed() && d) check(dnn.backend_finalize(d), what);
    return failed() ? NULL : d;
  }

  /* A tensor [d0, d1, d2, d3] with strides; uid 0 makes a virtual one with a fresh id. */
  dnn_desc tensor(int32_t dtype, const int64_t dims[4], const int64_t strides[4], int64_t uid, bool by_value = false) {
    dnn_desc t = create(DNN_TENSOR_DESCRIPTOR, "tensor");
    const bool is_virtual = uid == 0;
    const int64_t id = is_virtual ? next_uid++ : uid, alignment = 16;
    set(t, DNN_ATTR_TENSOR_DATA_TYPE, DNN_TYPE_DATA_TYPE, 1, &dtype, "tensor data type");
    set(t, DNN_ATTR_TENSOR_DIMENSIONS, DNN_TYPE_INT64, 4, dims, "tensor dims");
    set(t, DNN_ATTR_TENSOR_STRIDES, DNN_TYPE_INT64, 4, strides, "tensor strides");
    set(t, DNN_ATTR_TENSOR_UNIQUE_ID, DNN_TYPE_INT64, 1, &id, "tensor uid");
    set(t, DNN_ATTR_TENSOR_BYTE_ALIGNMENT, DNN_TYPE_INT64, 1, &alignment, "tensor alignment");
    set(t, DNN_ATTR_TENSOR_IS_VIRTUAL, DNN_TYPE_BOOLEAN, 1, &is_virtual, "tensor virtual");
    if (by_value) set(t, DNN_ATTR_TENSOR_IS_BY_VALUE, DNN_TYPE_BOOLEAN, 1, &by_value, "tensor by value");
    return finalize(t, "tensor finalize");
  }
  /* A host scalar [1,1,1,1] passed by value at execution. */
  dnn_desc scalar(int32_t dtype, int64_t uid) {
    const int64_t one[4] = {1, 1, 1, 1};
    return tensor(dtype, one, one, uid, true);
  }
  /* y = mode(x [, b [, t]]); compute type `prec`; axis >= 0 for GEN_INDEX. */
  void pointwise(int32_t mode, int32_t prec, dnn_desc x, dnn_desc b, dnn_desc t, dnn_desc y, int64_t axis = -1) {
    dnn_desc pw = create(DNN_POINTWISE_DESCRIPTOR, "pointwise");
    set(pw, DNN_ATTR_POINTWISE_MODE, DNN_TYPE_POINTWISE_MODE, 1, &mode, "pointwise mode");
    set(pw, DNN_ATTR_POINTWISE_MATH_PREC, DNN_TYPE_DATA_TYPE, 1, &prec, "pointwise precision");
    if (axis >= 0) set(pw, DNN_ATTR_POINTWISE_AXIS, DNN_TYPE_INT64, 1, &axis, "pointwise axis");
    finalize(pw, "pointwise finalize");
    dnn_desc op = create(DNN_OPERATION_POINTWISE_DESCRIPTOR, "pointwise op");
    set_desc(op, DNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw, "pointwise op desc");
    set_desc(op, DNN_ATTR_OPERATION_POINTWISE_XDESC, x, "pointwise x");
    if (b) set_desc(op, DNN_ATTR_OPERATION_POINTWISE_BDESC, b, "pointwise b");
    if (t) set_desc(op, DNN_ATTR_OPERATION_POINTWISE_TDESC, t, "pointwise t");
    set_desc(op, DNN_ATTR_OPERATION_POINTWISE_YDESC, y, "pointwise y");
    if (finalize(op, "pointwise op finalize")) ops.push_back(op);
  }
  void matmul(dnn_desc a, dnn_desc b, dnn_desc c) {
    const int32_t comp = DNN_DATA_FLOAT;
    dnn_desc mm = create(DNN_MATMUL_DESCRIPTOR, "matmul");
    set(mm, DNN_ATTR_MATMUL_COMP_TYPE, DNN_TYPE_DATA_TYPE, 1, &comp, "matmul compute type");
    finalize(mm, "matmul finalize");
    dnn_desc op = create(DNN_OPERATION_MATMUL_DESCRIPTOR, "matmul op");
    set_desc(op, DNN_ATTR_OPERATION_MATMUL_ADESC, a, "matmul a");
    set_desc(op, DNN_ATTR_OPERATION_MATMUL_BDESC, b, "matmul b");
    set_desc(op, DNN_ATTR_OPERATION_MATMUL_CDESC, c, "matmul c");
    set_desc(op, DNN_ATTR_OPERATION_MATMUL_DESC, mm, "matmul desc");
    if (finalize(op, "matmul op finalize")) ops.push_back(op);
  }
  void reduction(int32_t reduce_op, dnn_desc x, dnn_desc y) {
    const int32_t comp = DNN_DATA_FLOAT;
    dnn_desc red = create(DNN_REDUCTION_DESCRIPTOR, "reduction");
    set(red, DNN_ATTR_REDUCTION_OPERATOR, DNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &reduce_op, "reduction operator");
    set(red, DNN_ATTR_REDUCTION_COMP_TYPE, DNN_TYPE_DATA_TYPE, 1, &comp, "reduction compute type");
    finalize(red, "reduction finalize");
    dnn_desc op = create(DNN_OPERATION_REDUCTION_DESCRIPTOR, "reduction op");
    set_desc(op, DNN_ATTR_OPERATION_REDUCTION_DESC, red, "reduction desc");
    set_desc(op, DNN_ATTR_OPERATION_REDUCTION_XDESC, x, "reduction x");
    set_desc(op, DNN_ATTR_OPERATION_REDUCTION_YDESC, y, "reduction y");
    if (finalize(op, "reduction op finalize")) ops.push_back(op);
  }
  void reshape(dnn_desc x, dnn_desc y) {
    dnn_desc op = create(DNN_OPERATION_RESHAPE_DESCRIPTOR, "reshape op");
    set_desc(op, DNN_ATTR_OPERATION_RESHAPE_XDESC, x, "reshape x");
    set_desc(op, DNN_ATTR_OPERATION_RESHAPE_YDESC, y, "reshape y");
    if (finalize(op, "reshape op finalize")) ops.push_back(op);
  }
};
