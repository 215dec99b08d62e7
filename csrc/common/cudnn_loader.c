/* The cuDNN loader (see cudnn_loader.h) and the attention-kernel choice, both exported by either
 * backend: df_cudnn_probe and df_attention_kernel_set / _get (distflash.h). */
#define _GNU_SOURCE
#include "cudnn_loader.h"

#include <dlfcn.h>
#include <glob.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common.h"

#define CUDNN_SONAME "libcudnn.so.9"

static pthread_once_t open_once = PTHREAD_ONCE_INIT;
static df_cudnn_library loaded;
static int loaded_ok;
static char open_error[4096];

/* Appends "; text" (or "text" first) to open_error, truncating quietly. */
static void note(const char *fmt, const char *a, const char *b) {
  size_t used = strlen(open_error);
  if (used + 3 >= sizeof open_error) return;
  if (used) {
    strcpy(open_error + used, "; ");
    used += 2;
  }
  snprintf(open_error + used, sizeof open_error - used, fmt, a, b ? b : "");
}

/* Tries one candidate; on success fills `loaded` and returns 1. Every failure is noted. */
static int try_open(const char *path) {
  void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    const char *err = dlerror();
    /* dlerror() usually names the path already */
    if (err && strstr(err, path)) note("%s%s", err, NULL);
    else note("%s: %s", path, err ? err : "dlopen failed");
    return 0;
  }
  size_t (*get_version)(void) = (size_t(*)(void))dlsym(lib, "cudnnGetVersion");
  if (!get_version || !dlsym(lib, "cudnnBackendCreateDescriptor")) {
    note("%s: not a cuDNN library (it lacks %s)", path,
         get_version ? "cudnnBackendCreateDescriptor" : "cudnnGetVersion");
    dlclose(lib);
    return 0;
  }
  const size_t version = get_version();
  if (version < DF_CUDNN_MIN_VERSION) {
    char v[64];
    snprintf(v, sizeof v, "%zu.%zu.%zu", version / 10000, (version % 10000) / 100, version % 100);
    note("%s: cuDNN %s is older than 9.0", path, v);
    dlclose(lib);
    return 0;
  }
  loaded.library = lib;
  loaded.version = version;
  /* The file actually opened (the loader's search may have found it anywhere). */
  Dl_info where;
  const char *real = (dladdr((void *)get_version, &where) && where.dli_fname) ? where.dli_fname : path;
  snprintf(loaded.path, sizeof loaded.path, "%s", real);
  return 1;
}

/* Tries <site>/nvidia/cudnn/lib/libcudnn.so.9 for each site-packages folder matching `pattern`. */
static int try_site_glob(const char *pattern) {
  glob_t g;
  memset(&g, 0, sizeof g);
  char full[1200];
  snprintf(full, sizeof full, "%s/nvidia/cudnn/lib/" CUDNN_SONAME, pattern);
  int found = 0;
  if (glob(full, 0, NULL, &g) == 0) {
    for (size_t i = 0; i < g.gl_pathc && !found; i++) found = try_open(g.gl_pathv[i]);
  }
  globfree(&g);
  return found;
}

/* site-packages folders under a Python prefix (a venv, a conda env, /usr/local). */
static int try_prefix(const char *prefix) {
  if (!prefix || !*prefix) return 0;
  char pattern[1100];
  snprintf(pattern, sizeof pattern, "%s/lib/python3*/site-packages", prefix);
  if (try_site_glob(pattern)) return 1;
  snprintf(pattern, sizeof pattern, "%s/lib/python3*/dist-packages", prefix);
  return try_site_glob(pattern);
}

/* Each entry of a ':'-separated list of site-packages folders. */
static int try_path_list(const char *list) {
  if (!list || !*list) return 0;
  char buf[4096];
  snprintf(buf, sizeof buf, "%s", list);
  char *save = NULL;
  for (char *dir = strtok_r(buf, ":", &save); dir; dir = strtok_r(NULL, ":", &save))
    if (*dir && try_site_glob(dir)) return 1;
  return 0;
}

/* The last resort: ask the python3 on PATH where its site-packages are (one short subprocess). */
static int try_python(void) {
  FILE *p = popen("python3 -c 'import site,sys;print(\":\".join(site.getsitepackages()+"
                  "[site.getusersitepackages()]))' 2>/dev/null",
                  "r");
  if (!p) return 0;
  char line[4096] = "";
  const int got = fgets(line, sizeof line, p) != NULL;
  pclose(p);
  if (!got) {
    note("%s%s", "python3 reported no site-packages (no python3 on PATH?)", NULL);
    return 0;
  }
  line[strcspn(line, "\n")] = 0;
  return try_path_list(line);
}

static void open_cudnn(void) {
  const char *env = getenv("DISTFLASH_CUDNN_PATH");
  if (env && *env) {
    struct stat st;
    char path[1100];
    if (stat(env, &st) == 0 && S_ISDIR(st.st_mode)) snprintf(path, sizeof path, "%s/" CUDNN_SONAME, env);
    else snprintf(path, sizeof path, "%s", env);
    loaded_ok = try_open(path);
    if (!loaded_ok) {
      char tried[sizeof open_error];
      snprintf(tried, sizeof tried, "%s", open_error);
      snprintf(open_error, sizeof open_error, "DISTFLASH_CUDNN_PATH=%.512s does not give cuDNN 9 (%.3000s)", env, tried);
    }
    return;
  }
  loaded_ok = try_open(CUDNN_SONAME);
  const char *home = getenv("HOME");
  char local[1100] = "";
  if (home && *home) snprintf(local, sizeof local, "%s/.local", home);
  if (!loaded_ok) loaded_ok = try_path_list(getenv("PYTHONPATH"));
  if (!loaded_ok) loaded_ok = try_prefix(getenv("VIRTUAL_ENV"));
  if (!loaded_ok) loaded_ok = try_prefix(getenv("CONDA_PREFIX"));
  if (!loaded_ok) loaded_ok = try_prefix(local);
  if (!loaded_ok) loaded_ok = try_prefix("/usr/local");
  if (!loaded_ok) loaded_ok = try_prefix("/usr");
  if (!loaded_ok) loaded_ok = try_prefix("/opt/conda");
  if (!loaded_ok) loaded_ok = try_python();
  if (!loaded_ok) {
    char tried[sizeof open_error];
    snprintf(tried, sizeof tried, "%s", open_error);
    snprintf(open_error, sizeof open_error,
             "cuDNN 9 not found (tried %.3000s; then the nvidia/cudnn/lib/" CUDNN_SONAME
             " of the Python environments here); install it (pip install nvidia-cudnn-cu12 or -cu13) or set DISTFLASH_CUDNN_PATH",
             tried);
  }
}

const df_cudnn_library *df_cudnn_open(const char **why) {
  pthread_once(&open_once, open_cudnn);
  if (why) *why = loaded_ok ? NULL : open_error;
  return loaded_ok ? &loaded : NULL;
}

/* ---------------- the ABI ---------------- */

df_status df_cudnn_probe(int64_t *version, char *path, uint64_t path_bytes) {
  if (!version) return df_fail(DF_ERR_INVALID, "df_cudnn_probe: argument 'version' is NULL");
  if (path && path_bytes) path[0] = 0;
  const char *why = NULL;
  const df_cudnn_library *lib = df_cudnn_open(&why);
  if (!lib) {
    *version = 0;
    return df_fail(DF_ERR_LIBRARY, "%s", why);
  }
  *version = (int64_t)lib->version;
  if (path && path_bytes) snprintf(path, (size_t)path_bytes, "%s", lib->path);
  return DF_OK;
}

/* Auto: cuDNN's fused attention where it loads and takes a block pair (2026-12-07, one H100: 553-558
 * TFLOP/s fwd+bwd against 301-310 for the native kernels, scripts/gpu_cudnn.sh), the native kernels
 * for the rest. A caller that sets nothing gets the fast path. */
static _Atomic int32_t attention_kernel = DF_ATTENTION_AUTO;

df_status df_attention_kernel_set(int32_t kernel) {
  if (kernel != DF_ATTENTION_AUTO && kernel != DF_ATTENTION_NATIVE && kernel != DF_ATTENTION_CUDNN)
    return df_fail(DF_ERR_INVALID, "df_attention_kernel_set: argument 'kernel' must be 0 (auto), 1 (native) or 2 (cudnn), got %d",
                   kernel);
  if (kernel == DF_ATTENTION_CUDNN) {
    if (strcmp(df_backend_name(), "cuda") != 0)
      return df_fail(DF_ERR_UNSUPPORTED, "df_attention_kernel_set: cuDNN attention runs only on the CUDA backend (this is the %s backend)",
                     df_backend_name());
    const char *why = NULL;
    if (!df_cudnn_open(&why)) return df_fail(DF_ERR_LIBRARY, "df_attention_kernel_set: cuDNN is not available: %s", why);
  }
  atomic_store(&attention_kernel, kernel);
  return DF_OK;
}

int32_t df_attention_kernel_get(void) { return atomic_load(&attention_kernel); }
