/* Errors and the allocation registry, compiled into both backends. */
#include "common.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char last_error[1024] = "";

const char *df_last_error(void) { return last_error; }

int32_t df_abi_version(void) { return DF_ABI_VERSION; }

df_status df_fail(df_status status, const char *fmt, ...) {
  va_list args;
  va_start(args, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, args);
  va_end(args);
  return status;
}

/* A sorted array of live blocks; lookups are binary searches. Few blocks exist (one allocation per
 * tensor kind), so insertion by memmove is cheap. */
typedef struct {
  uintptr_t start;
  uint64_t bytes;
  int pinned_host;
} block;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static block *blocks = NULL;
static size_t block_count = 0, block_capacity = 0;

/* Index of the last block whose start <= addr, or -1. Caller holds the lock. */
static long find_block(uintptr_t addr) {
  long lo = 0, hi = (long)block_count - 1, found = -1;
  while (lo <= hi) {
    long mid = (lo + hi) / 2;
    if (blocks[mid].start <= addr) {
      found = mid;
      lo = mid + 1;
    } else {
      hi = mid - 1;
    }
  }
  return found;
}

void df_registry_add(void *ptr, uint64_t bytes, int pinned_host) {
  pthread_mutex_lock(&registry_lock);
  if (block_count == block_capacity) {
    size_t capacity = block_capacity ? 2 * block_capacity : 64;
    block *grown = (block *)realloc(blocks, capacity * sizeof(block));
    if (!grown) { /* the block stays unregistered: ops on it will be refused, never corrupted */
      pthread_mutex_unlock(&registry_lock);
      return;
    }
    blocks = grown;
    block_capacity = capacity;
  }
  uintptr_t start = (uintptr_t)ptr;
  size_t at = (size_t)(find_block(start) + 1);
  memmove(blocks + at + 1, blocks + at, (block_count - at) * sizeof(block));
  blocks[at].start = start;
  blocks[at].bytes = bytes;
  blocks[at].pinned_host = pinned_host;
  block_count++;
  pthread_mutex_unlock(&registry_lock);
}

int df_registry_remove(void *ptr, int pinned_host) {
  pthread_mutex_lock(&registry_lock);
  long at = find_block((uintptr_t)ptr);
  int ok = at >= 0 && blocks[at].start == (uintptr_t)ptr && blocks[at].pinned_host == pinned_host;
  if (ok) {
    memmove(blocks + at, blocks + at + 1, (block_count - (size_t)at - 1) * sizeof(block));
    block_count--;
  }
  pthread_mutex_unlock(&registry_lock);
  return ok;
}

int df_registry_contains(const void *ptr, uint64_t bytes) {
  uintptr_t addr = (uintptr_t)ptr;
  pthread_mutex_lock(&registry_lock);
  long at = find_block(addr);
  int ok = at >= 0 && addr - blocks[at].start <= blocks[at].bytes &&
           bytes <= blocks[at].bytes - (addr - blocks[at].start);
  pthread_mutex_unlock(&registry_lock);
  return ok;
}

void df_registry_totals(uint64_t *count, uint64_t *bytes) {
  pthread_mutex_lock(&registry_lock);
  uint64_t total = 0;
  for (size_t i = 0; i < block_count; i++) total += blocks[i].bytes;
  *count = block_count;
  *bytes = total;
  pthread_mutex_unlock(&registry_lock);
}

df_status df_live_allocations(uint64_t *count, uint64_t *bytes) {
  if (!count || !bytes) return df_fail(DF_ERR_INVALID, "df_live_allocations: null output");
  df_registry_totals(count, bytes);
  return DF_OK;
}

df_status df_check_range(const char *fn, const char *name, const void *ptr, uint64_t bytes) {
  if (ptr == NULL) return df_fail(DF_ERR_INVALID, "%s: argument '%s' is a null pointer", fn, name);
  if (!df_registry_contains(ptr, bytes)) {
    return df_fail(DF_ERR_INVALID,
                   "%s: argument '%s' (%p, %llu bytes) is not inside a live allocation "
                   "(freed, foreign or out of bounds)",
                   fn, name, ptr, (unsigned long long)bytes);
  }
  return DF_OK;
}
