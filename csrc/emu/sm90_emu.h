/* A host emulation of the CUDA execution model and of the sm_90a instructions that the Hopper
 * attention kernels use (csrc/cuda/flash_fwd_sm90.cu, flash_bwd_sm90.cu), so that their own source
 * runs on a CPU: csrc/emu/flash_sm90_emu.cpp drives them against a float64 reference, and
 * tests/flash_sm90_emu.test.ts runs that in CI, where there is no GPU.
 *
 * Compiled in by defining FLASH_EMULATE: csrc/cuda/flash_internal.cuh then includes this header in
 * place of the CUDA headers and of its PTX wrappers, and flash_sm90.cuh leaves out its wgmma and
 * fence wrappers; everything else (tile loops, index arithmetic, descriptors, masks, softmax) is the
 * kernels' code as the GPU runs it.
 *
 * Threads are fibers (ucontext) on one OS thread, switched only where a thread waits: block and
 * warp barriers, and wgmma waits. As in PTX, wgmma, commit and wait bind no warp to the others of
 * its warpgroup: an operation starts once all 128 threads have issued it, and a wait returns once
 * the thread's own committed groups are complete. The scheduler's order is a choice (forward, reverse, shuffled each
 * pass), and asynchronous work can complete at issue ("eager") or at its wait ("lazy"): correct
 * synchronisation gives the same forward output bit for bit under every choice.
 *
 * What the emulator models, from the PTX ISA:
 * - wgmma.mma_async m64nNk16 (N = 64, 128), bf16 in, f32 accumulators: A and B from shared memory
 *   through matrix descriptors with the 128-byte swizzle (K-major and MN-major canonical layouts),
 *   or A from registers; the accumulator and A register fragments of each thread of the warpgroup.
 * - wgmma.fence / commit_group / wait_group (per thread), cp.async (16 bytes, zero fill) with commit/wait groups,
 *   fence.proxy.async, warp shuffles and votes, __syncthreads.
 * What it checks, failing with a message that names the block, thread and address:
 * - descriptors: swizzle mode, no stray bits, base offset 0 and the start on a 1024-byte pattern
 *   row 0 (what CUTLASS-built descriptors satisfy), every element inside the dynamic shared memory;
 * - wgmma issued without a wgmma.fence since the thread's last wait, or with operands that differ
 *   between the threads of the warpgroup (they must be uniform);
 * - a wgmma reading shared memory whose cp.async has not completed, or that a thread wrote through
 *   the generic proxy without fence.proxy.async afterwards;
 * - shared memory overwritten while an issued wgmma may still read it; A-fragment registers, or (eager)
 *   accumulators, changed between a wgmma's issue and its wait;
 * - ld.shared of bytes whose cp.async has not completed; cp.async sources and atomics outside the
 *   registered global buffers, misaligned accesses; a deadlock (threads waiting at different
 *   barriers).
 * What it does not model (a kernel relying on these would pass here and could fail on a GPU):
 * - the fence check remembers only a wgmma.fence since the thread's last wait, not whether
 *   registers were touched after that fence; reads of an in-flight wgmma's registers; compiler
 *   reordering around the asm (ptxas warns when it has to serialise wgmma, and scripts/build.ts
 *   fails on any warning);
 * - the exact rounding of ex2.approx.ftz and of the tensor cores' accumulation (tolerances only). */
#pragma once
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <deque>
#include <functional>
#include <random>
#include <vector>

#define __device__
#define __host__
#define __global__
#define __shared__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __log2f log2f
#define __CUDA_ARCH_FEAT_SM90_ALL 1

struct uint4 {
  uint32_t x, y, z, w;
};
static inline uint4 make_uint4(uint32_t x, uint32_t y, uint32_t z, uint32_t w) { return {x, y, z, w}; }
struct __nv_bfloat16 {
  uint16_t bits;
};
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

namespace emu {

enum class Completion { eager, lazy };
enum class Order { forward, reverse, shuffled };
struct Schedule {
  Completion completion = Completion::eager;
  Order order = Order::forward;
  uint32_t seed = 1;
};

/* The first shared address of the dynamic shared memory: 16-byte aligned but not 1024, so the
 * kernels' own alignment of their tiles is exercised. */
constexpr uint32_t SHARED_BASE = 0x230;
constexpr int THREADS = 256;

inline float bf16_to_f32(uint16_t b) {
  uint32_t u = (uint32_t)b << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) { /* round to nearest even, as cvt.rn */
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
  return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

struct Barrier {
  int count;
  int arrived = 0;
  uint64_t gen = 0;
  const char *name;
};

struct CpCopy {
  uint32_t dst;
  const unsigned char *src; /* null: zero fill */
};

struct Thread {
  ucontext_t ctx;
  dim3 idx;
  int tid = 0;
  bool done = false;
  Barrier *waiting = nullptr; /* the barrier it waits at, and that barrier's generation */
  uint64_t waiting_gen = 0;
  std::vector<CpCopy> open_copies;
  std::deque<std::vector<CpCopy>> copy_groups;
  std::vector<uint32_t> unfenced; /* 4-byte words it wrote through the generic proxy, not yet fenced */
  bool wg_fenced = false;
  uint64_t wg_issued = 0;            /* wgmma it has issued: the next one's index in its warpgroup */
  std::vector<uint64_t> wg_commits;  /* wg_issued at each commit_group */
};

struct Op { /* one wgmma of a warpgroup: formed when all 128 threads have issued it */
  int arrived = 0;
  bool formed = false, completed = false;
  int n = 0;          /* 64 or 128 */
  bool a_regs = false, ta = false, tb = false, scale_d = false;
  uint64_t da = 0, db = 0;
  /* what each thread passed */
  uint64_t t_da[128], t_db[128];
  int t_acc[128], t_n[128];
  bool t_ta[128], t_tb[128];
  float *d[128];
  const uint32_t *a[128];
  uint32_t a_at_issue[128][4];
  std::vector<float> d_after; /* eager: the accumulators it left, checked at its wait unless a later
                                 wgmma in flight accumulates into the same registers (then empty) */
  std::vector<uint32_t> reads; /* shared addresses (2-byte elements) it reads */
};

/* The wgmma of a warpgroup, by issue index (ops[i - first] is wgmma i). As in PTX, issuing,
 * committing and waiting bind no thread to the other warps: a wgmma can start once every thread
 * has issued it, and a wait returns once the thread's groups are formed and complete. */
struct WarpGroup {
  std::deque<Op> ops;
  uint64_t first = 0;
  Op &op(uint64_t i) {
    while (first + ops.size() <= i) ops.emplace_back();
    return ops[i - first];
  }
};

struct Warp {
  Barrier bar{32, 0, 0, "warp"};
  uint32_t slot[32];
};

struct GlobalBuffer {
  const unsigned char *p;
  size_t bytes;
  const char *name;
};

struct State {
  Schedule schedule;
  dim3 block_idx, grid_dim, block_dim;
  uint32_t smem_bytes = 0;
  std::vector<unsigned char> smem;
  std::vector<int16_t> unfenced_by; /* per byte: the thread whose generic write awaits a fence, or -1 */
  std::vector<uint16_t> inflight_reads, pending_copy;
  Thread threads[THREADS];
  Barrier block_bar{THREADS, 0, 0, "__syncthreads"};
  Warp warps[THREADS / 32];
  WarpGroup wgs[THREADS / 128];
  Thread *cur = nullptr;
  ucontext_t sched;
  uint64_t progress = 0;
  std::function<void()> body;
  std::vector<GlobalBuffer> globals;
  std::vector<std::vector<unsigned char>> stacks;
};
inline State g;

[[noreturn]] inline void fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "emu: ");
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  if (g.cur)
    fprintf(stderr, " (block %u,%u, thread %d)\n", g.block_idx.x, g.block_idx.y, g.cur->tid);
  else
    fprintf(stderr, "\n");
  fflush(stdout);
  fflush(stderr);
  _exit(2); /* not exit(): this may run on a fiber's stack, which the destructors would free */
}

inline void register_global(const void *p, size_t bytes, const char *name) {
  g.globals.push_back({static_cast<const unsigned char *>(p), bytes, name});
}
inline void clear_globals() { g.globals.clear(); }
inline void check_global(const void *p, size_t bytes, size_t align, const char *what) {
  const unsigned char *c = static_cast<const unsigned char *>(p);
  if ((uintptr_t)c % align) fail("%s: global address %p is not %zu-byte aligned", what, p, align);
  for (const GlobalBuffer &b : g.globals)
    if (c >= b.p && c + bytes <= b.p + b.bytes) return;
  fail("%s: %zu bytes at %p lie outside every buffer the kernel was given", what, bytes, p);
}

/* Index of shared address `addr` in the block's dynamic shared memory, checked. */
inline uint32_t smem_index(uint32_t addr, uint32_t bytes, uint32_t align, const char *what) {
  if (addr % align) fail("%s: shared address 0x%x is not %u-byte aligned", what, addr, align);
  if (addr < SHARED_BASE || addr + bytes > SHARED_BASE + g.smem_bytes)
    fail("%s: shared address 0x%x (+%u) is outside the %u bytes of dynamic shared memory at 0x%x", what, addr,
         bytes, g.smem_bytes, SHARED_BASE);
  return addr - SHARED_BASE;
}

/* ---- fibers and barriers ---- */

inline void yield() { swapcontext(&g.cur->ctx, &g.sched); }

inline void barrier_wait(Barrier &b) {
  const uint64_t gen = b.gen;
  g.progress++;
  if (++b.arrived == b.count) {
    b.arrived = 0;
    b.gen++;
    return;
  }
  g.cur->waiting = &b;
  g.cur->waiting_gen = gen;
  while (b.gen == gen) yield();
  g.cur->waiting = nullptr;
}

inline Warp &my_warp() { return g.warps[g.cur->tid / 32]; }
inline WarpGroup &my_wg() { return g.wgs[g.cur->tid / 128]; }

inline void fiber_main() {
  g.body();
  g.cur->done = true;
  g.progress++;
  swapcontext(&g.cur->ctx, &g.sched);
}

/* Runs `body` as one block of THREADS threads with `smem_bytes` of dynamic shared memory. */
inline void run_block(dim3 block_idx, uint32_t smem_bytes) {
  constexpr size_t STACK = 256 * 1024;
  g.block_idx = block_idx;
  g.block_dim = dim3{THREADS, 1, 1};
  g.smem_bytes = smem_bytes;
  g.smem.assign(smem_bytes, 0xA5); /* not zero: a tile read before it is written shows */
  g.unfenced_by.assign(smem_bytes, -1);
  g.inflight_reads.assign(smem_bytes, 0);
  g.pending_copy.assign(smem_bytes, 0);
  g.stacks.resize(THREADS);
  for (int t = 0; t < THREADS; t++) {
    Thread &th = g.threads[t];
    th = Thread();
    th.tid = t;
    th.idx = dim3{(unsigned)t, 0, 0};
    g.stacks[t].resize(STACK);
    getcontext(&th.ctx);
    th.ctx.uc_stack.ss_sp = g.stacks[t].data();
    th.ctx.uc_stack.ss_size = STACK;
    th.ctx.uc_link = nullptr;
    makecontext(&th.ctx, fiber_main, 0);
  }
  for (Warp &w : g.warps) w.bar.arrived = 0;
  for (WarpGroup &w : g.wgs) {
    w.ops.clear();
    w.first = 0;
  }
  g.block_bar.arrived = 0;

  std::vector<int> order(THREADS);
  for (int t = 0; t < THREADS; t++) order[t] = g.schedule.order == Order::reverse ? THREADS - 1 - t : t;
  std::mt19937 rng(g.schedule.seed * 7919u + block_idx.x * 131u + block_idx.y);
  for (;;) {
    if (g.schedule.order == Order::shuffled) std::shuffle(order.begin(), order.end(), rng);
    bool any_left = false;
    const uint64_t before = g.progress;
    for (int t : order) {
      Thread &th = g.threads[t];
      if (th.done) continue;
      any_left = true;
      if (th.waiting && th.waiting->gen == th.waiting_gen) continue;
      g.cur = &th;
      swapcontext(&g.sched, &th.ctx);
      g.cur = nullptr;
    }
    if (!any_left) break;
    if (g.progress == before) { /* a whole pass in which no thread got anywhere */
      for (int t = 0; t < THREADS; t++) {
        const Thread &th = g.threads[t];
        if (!th.done && t % 32 == 0)
          fprintf(stderr, "  thread %d: %s\n", t, th.waiting ? th.waiting->name : "wgmma.wait_group");
      }
      fail("deadlock in block %u,%u: threads wait at barriers that the others never reach", block_idx.x,
           block_idx.y);
    }
  }
  for (int w = 0; w < THREADS / 128; w++)
    for (const Op &op : g.wgs[w].ops)
      if (!op.completed)
        fail("warpgroup %d of block %u,%u ended with wgmma never waited for", w, block_idx.x, block_idx.y);
  for (int t = 0; t < THREADS; t++) { /* an empty group left pending is harmless */
    bool pending = !g.threads[t].open_copies.empty();
    for (const std::vector<CpCopy> &group : g.threads[t].copy_groups) pending |= !group.empty();
    if (pending) fail("thread %d of block %u,%u ended with cp.async never waited for", t, block_idx.x, block_idx.y);
  }
}

/* Runs a kernel body over a grid, block after block. */
inline void launch(dim3 grid, uint32_t smem_bytes, std::function<void()> body) {
  g.grid_dim = grid;
  g.body = std::move(body);
  for (unsigned y = 0; y < grid.y; y++)
    for (unsigned x = 0; x < grid.x; x++) run_block(dim3{x, y, 1}, smem_bytes);
  g.body = nullptr;
}

/* ---- shared memory bookkeeping ---- */

inline void generic_write(uint32_t index, uint32_t bytes, int writer, const char *what) {
  for (uint32_t i = index; i < index + bytes; i++) {
    if (g.inflight_reads[i])
      fail("%s overwrites shared address 0x%x, which an issued wgmma may still read (no wgmma.wait_group "
           "and barrier between)",
           what, i + SHARED_BASE);
    g.unfenced_by[i] = (int16_t)writer;
  }
  for (uint32_t w = index / 4; w < (index + bytes + 3) / 4; w++) g.threads[writer].unfenced.push_back(w);
}

/* What a 16-byte cp.async puts at shared index i: the source, or zeros. */
inline void copy16(uint32_t i, const unsigned char *src) {
  if (src) memcpy(&g.smem[i], src, 16);
  else memset(&g.smem[i], 0, 16);
}

inline void complete_copy(const CpCopy &c, int writer) {
  const uint32_t i = c.dst - SHARED_BASE;
  for (uint32_t b = i; b < i + 16; b++) g.pending_copy[b]--;
  if (g.schedule.completion == Completion::lazy) copy16(i, c.src);
  generic_write(i, 16, writer, "cp.async");
}

inline void check_copied(uint32_t index, uint32_t bytes, const char *what) {
  for (uint32_t i = index; i < index + bytes; i++)
    if (g.pending_copy[i])
      fail("%s reads shared address 0x%x before its cp.async completed (cp.async.wait_group, then a barrier)",
           what, i + SHARED_BASE);
}

/* ---- wgmma ---- */

struct Desc {
  uint32_t start, lbo, sbo;
};

inline Desc decode(uint64_t d, const char *which) {
  const uint64_t fields = 0x3FFFull | (0x3FFFull << 16) | (0x3FFFull << 32) | (7ull << 49) | (3ull << 62);
  if (d & ~fields) fail("wgmma %s descriptor 0x%016llx sets bits outside its fields", which, (unsigned long long)d);
  if ((d >> 62) != 1)
    fail("wgmma %s descriptor: layout type %d, not the 128-byte swizzle (1)", which, (int)(d >> 62));
  const Desc r{(uint32_t)(d & 0x3FFF) << 4, (uint32_t)((d >> 16) & 0x3FFF) << 4, (uint32_t)((d >> 32) & 0x3FFF) << 4};
  /* The base offset locates the start of the 1024-byte swizzle pattern (PTX ISA); CUTLASS leaves it 0.
   * Only what is certain is modelled: base offset 0 with the start on a pattern row 0 (address bits
   * 7-9 clear; a k16 step's +32 bytes keeps them so). */
  const int base_offset = (int)((d >> 49) & 7);
  if (base_offset != 0 || ((r.start >> 7) & 7) != 0)
    fail("wgmma %s descriptor: start 0x%x (address bits 7-9 = %d), base offset %d: only starts on a "
         "1024-byte swizzle-pattern row 0 with base offset 0 are modelled",
         which, r.start, (int)((r.start >> 7) & 7), base_offset);
  return r;
}

/* The shared address of element (mn, k) of a 128-byte-swizzled operand: K-major when the reduced
 * dimension k is contiguous, MN-major (transposed) when mn is. Canonical layouts (PTX ISA, "shared
 * memory matrix layout"), in bytes for 2-byte elements: K-major, rows of 128 bytes, 8-row groups
 * SBO apart, k at 2 k within the row; MN-major, 64 mn a 128-byte row, rows k, 8-row groups of k
 * SBO apart, 64-wide mn blocks LBO apart. The 128-byte swizzle then XORs address bits 4-6 with 7-9. */
inline uint32_t element_address(const Desc &d, bool mn_major, int mn, int k) {
  uint32_t a;
  if (!mn_major) a = d.start + (uint32_t)(mn / 8) * d.sbo + (uint32_t)(mn % 8) * 128 + (uint32_t)k * 2;
  else a = d.start + (uint32_t)(mn / 64) * d.lbo + (uint32_t)(mn % 64) * 2 + (uint32_t)(k % 8) * 128 + (uint32_t)(k / 8) * d.sbo;
  return a ^ (((a >> 7) & 7) << 4);
}

inline float smem_bf16(uint32_t addr) {
  const uint32_t i = smem_index(addr, 2, 2, "wgmma operand");
  uint16_t b;
  memcpy(&b, &g.smem[i], 2);
  return bf16_to_f32(b);
}

/* Thread t (0..127 in its warpgroup) holds accumulator i of row acc_row, column acc_col (the
 * m64nNk16 f32 fragment); register r of its A fragment holds row a_row, columns a_col, a_col + 1. */
inline int acc_row(int t, int i) { return 16 * (t / 32) + (t % 32) / 4 + 8 * ((i >> 1) & 1); }
inline int acc_col(int t, int i) { return 8 * (i >> 2) + 2 * (t % 4) + (i & 1); }
inline int a_row(int t, int r) { return 16 * (t / 32) + (t % 32) / 4 + 8 * (r & 1); }
inline int a_col(int t, int r) { return 2 * (t % 4) + 8 * (r >> 1); }

inline void op_reads(Op &op) {
  op.reads.clear();
  if (!op.a_regs) {
    const Desc a = decode(op.da, "A");
    for (int m = 0; m < 64; m++)
      for (int k = 0; k < 16; k++) op.reads.push_back(element_address(a, op.ta, m, k));
  }
  const Desc b = decode(op.db, "B");
  for (int n = 0; n < op.n; n++)
    for (int k = 0; k < 16; k++) op.reads.push_back(element_address(b, op.tb, n, k));
  for (uint32_t addr : op.reads) (void)smem_index(addr, 2, 2, "wgmma operand");
}

inline void op_execute(Op &op) {
  float A[64][16], B[256][16];
  if (op.a_regs) {
    for (int t = 0; t < 128; t++)
      for (int r = 0; r < 4; r++) {
        const uint32_t v = op.a[t][r];
        A[a_row(t, r)][a_col(t, r)] = bf16_to_f32((uint16_t)(v & 0xFFFF));
        A[a_row(t, r)][a_col(t, r) + 1] = bf16_to_f32((uint16_t)(v >> 16));
      }
  } else {
    const Desc a = decode(op.da, "A");
    for (int m = 0; m < 64; m++)
      for (int k = 0; k < 16; k++) A[m][k] = smem_bf16(element_address(a, op.ta, m, k));
  }
  const Desc b = decode(op.db, "B");
  for (int n = 0; n < op.n; n++)
    for (int k = 0; k < 16; k++) B[n][k] = smem_bf16(element_address(b, op.tb, n, k));
  for (int t = 0; t < 128; t++)
    for (int i = 0; i < op.n / 2; i++) {
      const int m = acc_row(t, i), n = acc_col(t, i);
      float acc = op.scale_d ? op.d[t][i] : 0.0f;
      for (int k = 0; k < 16; k++) acc += A[m][k] * B[n][k];
      op.d[t][i] = acc;
    }
}

/* Every thread of the warpgroup calls this with its own accumulators (and A registers); the last
 * to issue forms the operation: checks, operand footprint, and (eager) the product itself. */
inline void form(WarpGroup &w, Op &op) {
  op.n = op.t_n[0];
  op.da = op.t_da[0];
  op.db = op.t_db[0];
  op.ta = op.t_ta[0];
  op.tb = op.t_tb[0];
  op.scale_d = op.t_acc[0] != 0;
  op.a_regs = op.a[0] != nullptr;
  for (int u = 1; u < 128; u++)
    if (op.t_da[u] != op.da || op.t_db[u] != op.db || (op.t_acc[u] != 0) != op.scale_d || op.t_n[u] != op.n ||
        op.t_ta[u] != op.ta || op.t_tb[u] != op.tb || (op.a[u] != nullptr) != op.a_regs)
      fail("the threads of a warpgroup issued different wgmma (thread %d of it differs from thread 0)", u);
  if (op.a_regs)
    for (int u = 0; u < 128; u++) memcpy(op.a_at_issue[u], op.a[u], 16);
  op_reads(op);
  for (uint32_t addr : op.reads) {
    const uint32_t i = addr - SHARED_BASE;
    check_copied(i, 2, "wgmma");
    if (g.unfenced_by[i] >= 0 || g.unfenced_by[i + 1] >= 0)
      fail("wgmma reads shared address 0x%x, which thread %d wrote through the generic proxy and has not "
           "yet made visible to the async proxy (the writer's fence.proxy.async, then a barrier)",
           addr, std::max(g.unfenced_by[i], g.unfenced_by[i + 1]));
    g.inflight_reads[i]++;
    g.inflight_reads[i + 1]++;
  }
  if (g.schedule.completion == Completion::eager) {
    for (Op &earlier : w.ops)
      if (&earlier != &op && earlier.formed && !earlier.completed && earlier.d[0] == op.d[0])
        earlier.d_after.clear();
    op_execute(op);
    for (int u = 0; u < 128; u++) op.d_after.insert(op.d_after.end(), op.d[u], op.d[u] + op.n / 2);
  }
  op.formed = true;
}

inline void wgmma(int n, float *d, const uint32_t *a, uint64_t da, uint64_t db, int acc, bool ta, bool tb) {
  Thread &th = *g.cur;
  if (!th.wg_fenced) fail("wgmma.mma_async without a wgmma.fence since this thread's last wait");
  WarpGroup &w = my_wg();
  Op &op = w.op(th.wg_issued++);
  const int t = th.tid % 128;
  op.t_n[t] = n;
  op.t_da[t] = da;
  op.t_db[t] = db;
  op.t_acc[t] = acc;
  op.t_ta[t] = ta;
  op.t_tb[t] = tb;
  op.d[t] = d;
  op.a[t] = a;
  g.progress++;
  if (++op.arrived == 128) form(w, op);
}

inline void complete(Op &op) {
  op.completed = true;
  if (op.a_regs)
    for (int u = 0; u < 128; u++)
      if (memcmp(op.a_at_issue[u], op.a[u], 16))
        fail("the A-fragment registers of thread %d changed while a wgmma reading them was in flight", u);
  if (g.schedule.completion == Completion::lazy) op_execute(op);
  else if (!op.d_after.empty())
    for (int u = 0; u < 128; u++)
      if (memcmp(op.d_after.data() + u * (op.n / 2), op.d[u], sizeof(float) * (op.n / 2)))
        fail("thread %d touched wgmma accumulators between the issue and the wait", u);
  for (uint32_t addr : op.reads) {
    g.inflight_reads[addr - SHARED_BASE]--;
    g.inflight_reads[addr - SHARED_BASE + 1]--;
  }
}

}  // namespace emu

#define threadIdx (emu::g.cur->idx)
#define blockIdx (emu::g.block_idx)
#define gridDim (emu::g.grid_dim)
#define blockDim (emu::g.block_dim)

inline void __syncthreads() { emu::barrier_wait(emu::g.block_bar); }
inline void __syncwarp() { emu::barrier_wait(emu::my_warp().bar); }
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
  static_assert(sizeof(T) == 4, "32-bit values");
  if (mask != 0xffffffffu) emu::fail("__shfl_xor_sync with a partial mask");
  emu::Warp &w = emu::my_warp();
  const int lane = emu::g.cur->tid % 32;
  memcpy(&w.slot[lane], &v, 4);
  emu::barrier_wait(w.bar);
  T r;
  memcpy(&r, &w.slot[lane ^ lane_mask], 4);
  emu::barrier_wait(w.bar);
  return r;
}
inline int __any_sync(unsigned mask, int pred) {
  if (mask != 0xffffffffu) emu::fail("__any_sync with a partial mask");
  emu::Warp &w = emu::my_warp();
  const int lane = emu::g.cur->tid % 32;
  w.slot[lane] = pred != 0;
  emu::barrier_wait(w.bar);
  int any = 0;
  for (int l = 0; l < 32; l++) any |= (int)w.slot[l];
  emu::barrier_wait(w.bar);
  return any;
}

namespace flash {

/* What `extern __shared__ unsigned char smem_raw[]` names: only its address is used, as the first
 * shared address. */
inline unsigned char smem_raw[16];

/* ---- the PTX wrappers of flash_internal.cuh ---- */

inline uint32_t smem_u32(const void *p) {
  return emu::SHARED_BASE + (uint32_t)(static_cast<const unsigned char *>(p) - smem_raw);
}

inline void cp_async16(uint32_t dst, const void *src, bool valid) {
  emu::Thread &th = *emu::g.cur;
  const uint32_t i = emu::smem_index(dst, 16, 16, "cp.async destination");
  const unsigned char *s = nullptr;
  if (valid) {
    emu::check_global(src, 16, 16, "cp.async source");
    s = static_cast<const unsigned char *>(src);
  }
  for (uint32_t b = i; b < i + 16; b++) {
    if (emu::g.inflight_reads[b])
      emu::fail("cp.async overwrites shared address 0x%x, which an issued wgmma may still read", b + emu::SHARED_BASE);
    emu::g.pending_copy[b]++;
  }
  if (emu::g.schedule.completion == emu::Completion::eager) emu::copy16(i, s);
  th.open_copies.push_back({dst, s});
}
inline void cp_async_commit() {
  emu::Thread &th = *emu::g.cur;
  th.copy_groups.push_back(std::move(th.open_copies));
  th.open_copies.clear();
}
template <int N>
inline void cp_async_wait() {
  emu::Thread &th = *emu::g.cur;
  while ((int)th.copy_groups.size() > N) {
    for (const emu::CpCopy &c : th.copy_groups.front()) emu::complete_copy(c, th.tid);
    th.copy_groups.pop_front();
  }
}

inline uint32_t pack_bf16(float lo, float hi) {
  return (uint32_t)emu::f32_to_bf16(lo) | ((uint32_t)emu::f32_to_bf16(hi) << 16);
}
inline float ex2(float x) { return exp2f(x); }

inline void st_shared_u32(uint32_t addr, uint32_t v) {
  const uint32_t i = emu::smem_index(addr, 4, 4, "st.shared");
  emu::generic_write(i, 4, emu::g.cur->tid, "st.shared");
  memcpy(&emu::g.smem[i], &v, 4);
}
template <class T>
inline T ld_shared(uint32_t addr, const char *what) {
  const uint32_t i = emu::smem_index(addr, sizeof(T), sizeof(T), what);
  emu::check_copied(i, sizeof(T), what);
  T v;
  memcpy(&v, &emu::g.smem[i], sizeof(T));
  return v;
}
inline uint4 ld_shared_u128(uint32_t addr) { return ld_shared<uint4>(addr, "ld.shared.v4"); }
inline float ld_shared_f32(uint32_t addr) { return ld_shared<float>(addr, "ld.shared.f32"); }

inline void atomic_add2(float *dst, float a, float b) {
  emu::check_global(dst, 8, 8, "atomicAdd(float2)");
  dst[0] += a;
  dst[1] += b;
}

/* ---- the wgmma and fence wrappers of flash_sm90.cuh, with the operands of their PTX ---- */

inline void wg_fence() { emu::g.cur->wg_fenced = true; }
inline void fence_proxy_async() {
  emu::Thread &th = *emu::g.cur;
  for (uint32_t w : th.unfenced)
    for (uint32_t b = w * 4; b < w * 4 + 4 && b < emu::g.smem_bytes; b++)
      if (emu::g.unfenced_by[b] == th.tid) emu::g.unfenced_by[b] = -1;
  th.unfenced.clear();
}
inline void wg_commit() { emu::g.cur->wg_commits.push_back(emu::g.cur->wg_issued); }
/* Returns once every wgmma of this thread's committed groups but the newest N is complete; it
 * completes them itself (in issue order) if no thread of the warpgroup has yet. */
template <int N>
inline void wg_wait() {
  emu::Thread &th = *emu::g.cur;
  emu::WarpGroup &w = emu::my_wg();
  if ((int)th.wg_commits.size() > N) {
    const uint64_t upto = th.wg_commits[th.wg_commits.size() - 1 - N];
    for (;;) { /* every thread of the warpgroup must have issued them */
      bool formed = true;
      for (uint64_t i = w.first; i < upto; i++) formed &= w.op(i).formed;
      if (formed) break;
      emu::yield();
    }
    for (uint64_t i = w.first; i < upto; i++)
      if (!w.op(i).completed) emu::complete(w.op(i));
    while (!w.ops.empty() && w.ops.front().completed) { /* no thread refers to them any more */
      w.ops.pop_front();
      w.first++;
    }
    emu::g.progress++;
  }
  th.wg_fenced = false;
}
template <int N>
inline void pin(float (&)[N]) {}
template <int KT>
inline void pin(uint32_t (&)[KT][4]) {}

/* "p, 1, 1, 0, 0": scale-d = accumulate, A and B K-major. */
inline void wgmma_ss(float (&d)[64], uint64_t da, uint64_t db, int accumulate) {
  emu::wgmma(128, d, nullptr, da, db, accumulate, false, false);
}
/* A from registers, "p, 1, 1, 1" with p = 1: accumulate, B MN-major. */
inline void wgmma_rs(float (&d)[64], const uint32_t (&a)[4], uint64_t db) {
  emu::wgmma(128, d, a, 0, db, 1, false, true);
}
template <int TA, int TB>
inline void wgmma_ss_n64(float (&d)[32], uint64_t da, uint64_t db, int accumulate) {
  emu::wgmma(64, d, nullptr, da, db, accumulate, TA != 0, TB != 0);
}
inline void wgmma_rs(float (&d)[32], const uint32_t (&a)[4], uint64_t db) {
  emu::wgmma(64, d, a, 0, db, 1, false, true);
}

}  // namespace flash
