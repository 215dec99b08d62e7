/* The cuDNN library as the attention path sees it: opened on first use (through the loader in
 * csrc/common/cudnn_loader.h), its backend entry points resolved into `dnn`, one handle per device,
 * and the one mutex that guards all cuDNN state of this library (this, the plan cache in
 * cudnn_attention_plan.cu and the scratch in cudnn_attention.cu). Separate from the graphs and
 * plans so they can be read without the dlsym plumbing. */
#pragma once
#include <stddef.h>

#include <mutex>

#include "cudnn_api.h"
#include "kernel_utils.cuh"

#define DNN_MAX_DEVICES 64

/* Shared between the cudnn_*.cu files only: kept out of the library's exported symbols, as the
 * statics they were once were. */
#define DNN_INTERNAL __attribute__((visibility("hidden")))

/* Guards every piece of cuDNN state; held through cudnnBackendExecute, which only enqueues work. */
DNN_INTERNAL extern std::mutex dnn_mutex;
/* The resolved entry points (valid once dnn_ready() has returned 1). */
DNN_INTERNAL extern dnn_api dnn;
/* cudnnGetVersion() of the loaded library, e.g. 91600 for 9.16.0. */
DNN_INTERNAL extern size_t dnn_version;

/* Caller holds dnn_mutex. 1 when cuDNN is loaded and its entry points resolved. */
DNN_INTERNAL int dnn_ready(void);

/* "what: cuDNN status N (text; last error)" into buf. */
DNN_INTERNAL void dnn_describe(char *buf, size_t size, const char *what, dnn_status st);

/* Caller holds dnn_mutex. The device's handle, bound to stream s. */
DNN_INTERNAL df_status dnn_handle_for(int device, cudaStream_t s, dnn_handle *out);
