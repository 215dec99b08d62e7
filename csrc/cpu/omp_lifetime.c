/* Keeps this library (and with it the OpenMP runtime) mapped until the process ends.
 *
 * OpenMP worker threads outlive each parallel region: they wait, spinning at first, inside the
 * OpenMP runtime for the next one. Deno unloads FFI libraries (dlclose) when a script ends; if that
 * unmaps libgomp while its workers still run, they crash the exiting process (an intermittent
 * SIGSEGV after all output). Marking the library RTLD_NODELETE makes that dlclose a no-op. */
#define _GNU_SOURCE
#include <dlfcn.h>

__attribute__((constructor)) static void df_pin_library(void) {
  Dl_info info;
  if (dladdr((void *)&df_pin_library, &info) && info.dli_fname) {
    /* RTLD_NOLOAD: only take a new reference to the already-loaded library, flagged NODELETE. */
    (void)dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD | RTLD_NODELETE);
  }
}
