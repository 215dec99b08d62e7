/* Opening cuDNN and its per-device handles; see cudnn_library.cuh. */
#include <dlfcn.h>
#include <stdio.h>

#include "../common/cudnn_loader.h"
#include "cudnn_library.cuh"

std::mutex dnn_mutex;
static int dnn_resolved; /* 0: not tried, 1: ok, -1: symbols missing */
dnn_api dnn;
size_t dnn_version;
static dnn_handle dnn_handles[DNN_MAX_DEVICES];

int dnn_ready(void) {
  if (dnn_resolved) return dnn_resolved > 0;
  dnn_resolved = -1;
  const df_cudnn_library *lib = df_cudnn_open(NULL);
  if (!lib) return 0;
  void *h = lib->library;
  int ok = 1;
#define DNN_SYM(field, name) ok = ok && (*(void **)&dnn.field = dlsym(h, name)) != NULL
  DNN_SYM(get_version, "cudnnGetVersion");
  DNN_SYM(error_string, "cudnnGetErrorString");
  DNN_SYM(last_error_string, "cudnnGetLastErrorString");
  DNN_SYM(create, "cudnnCreate");
  DNN_SYM(set_stream, "cudnnSetStream");
  DNN_SYM(backend_create, "cudnnBackendCreateDescriptor");
  DNN_SYM(backend_destroy, "cudnnBackendDestroyDescriptor");
  DNN_SYM(backend_finalize, "cudnnBackendFinalize");
  DNN_SYM(backend_set, "cudnnBackendSetAttribute");
  DNN_SYM(backend_get, "cudnnBackendGetAttribute");
  DNN_SYM(backend_execute, "cudnnBackendExecute");
#undef DNN_SYM
  if (!ok) {
    fprintf(stderr, "distflash: %s lacks a cuDNN 9 backend entry point; native attention kernels run\n", lib->path);
    return 0;
  }
  dnn_version = lib->version;
  dnn_resolved = 1;
  return 1;
}

void dnn_describe(char *buf, size_t size, const char *what, dnn_status st) {
  char last[512] = "";
  dnn.last_error_string(last, sizeof last);
  snprintf(buf, size, "%s: cuDNN status %d (%s%s%s)", what, (int)st, dnn.error_string(st), last[0] ? "; " : "", last);
}

df_status dnn_handle_for(int device, cudaStream_t s, dnn_handle *out) {
  if (!dnn_handles[device]) {
    dnn_handle h = NULL;
    const dnn_status st = dnn.create(&h);
    if (st != DNN_STATUS_SUCCESS) {
      char why[768];
      dnn_describe(why, sizeof why, "cudnnCreate", st);
      return df_fail(DF_ERR_LIBRARY, "cuDNN attention: %s", why);
    }
    dnn_handles[device] = h;
  }
  const dnn_status st = dnn.set_stream(dnn_handles[device], s);
  if (st != DNN_STATUS_SUCCESS) {
    char why[768];
    dnn_describe(why, sizeof why, "cudnnSetStream", st);
    return df_fail(DF_ERR_LIBRARY, "cuDNN attention: %s", why);
  }
  *out = dnn_handles[device];
  return DF_OK;
}
