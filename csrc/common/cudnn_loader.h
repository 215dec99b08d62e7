/* Opening libcudnn (cuDNN 9) at run time: shared by both backends so that the loader's search and
 * its messages are tested on the CPU backend (CI has no GPU); only the CUDA backend runs attention
 * through it (csrc/cuda/cudnn_attention.cu). */
#ifndef DF_CUDNN_LOADER_H
#define DF_CUDNN_LOADER_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The oldest cuDNN whose graph API runs the fused attention patterns built here. */
#define DF_CUDNN_MIN_VERSION 90000

typedef struct {
  void *library;        /* dlopen handle, never closed */
  size_t version;       /* cudnnGetVersion(): major*10000 + minor*100 + patch */
  char path[1024];      /* where it was opened from */
} df_cudnn_library;

/* Opens libcudnn once per process (later calls return the first answer). Returns the library, or
 * NULL with *why set to a message naming every place looked at and what was wrong there. Order:
 * DISTFLASH_CUDNN_PATH (a file, or a folder holding libcudnn.so.9; when set, nothing else is
 * tried), the dynamic loader's libcudnn.so.9, then the nvidia/cudnn/lib folder of the Python
 * environments on this host (PYTHONPATH, VIRTUAL_ENV, CONDA_PREFIX, ~/.local, the system
 * site-packages, and as the last resort what `python3 -c 'import site'` reports). */
const df_cudnn_library *df_cudnn_open(const char **why);

#ifdef __cplusplus
}
#endif

#endif
