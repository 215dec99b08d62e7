/* Runs the Hopper attention kernels' own source (csrc/cuda/flash_fwd_sm90.cu, flash_bwd_sm90.cu) on
 * the host emulation of csrc/emu/sm90_emu.h and compares them with float64 attention, forward and
 * backward: head dims 64 and 128, both forward variants, GQA, ragged lengths, query/key offsets
 * (DistAttn's blocks: causal diagonal, fully visible, partly visible, rows that see no key), the
 * sliding window (Mistral: i + delta - j < window, whole key tiles skipped before it), a grid
 * smaller than the tile count (the kernels' grid-stride loop), one query or 17 tokens (tiles mostly
 * padding), and eight key tiles for one query tile (the online softmax's rescaling). Every case runs under several
 * schedules (see sm90_emu.h); the forward's output must be bit-identical across them.
 *
 * Errors are max |x - ref| / max |ref| over a whole tensor (lse: max |x - ref|). The kernels round
 * P and dS to bf16 before their products and the output to bf16 (unit roundoff 2^-9 = 2e-3), so
 * the tolerance is 1e-2 (about five units); a wrong layout, mask or rescale gives errors of order 1.
 *
 * Build and run (tests/flash_sm90_emu.test.ts does):
 *   c++ -std=c++20 -O2 -Wall -Wextra -Wno-unknown-pragmas -o flash_sm90_emu csrc/emu/flash_sm90_emu.cpp
 *   ./flash_sm90_emu            exit 0: all pass; 1: a numerical failure; 2: a hazard the emulator found */
#define FLASH_EMULATE 1
#include "../cuda/flash_fwd_sm90.cu"
#include "../cuda/flash_bwd_sm90.cu"

using flash::BwdParams;
using flash::FwdParams;

namespace {

struct Case {
  const char *name;
  int hd, nh, nkv;
  int64_t tq, tk, delta; /* query i sees key j iff j - i <= delta and j < tk */
  unsigned grid_y_cap;   /* 0: one block per tile, as launched on the GPU */
  int64_t window;        /* > 0: and i + delta - j < window (the sliding window) */
};

struct Tensors {
  std::vector<uint16_t> q, k, v, dout;
};

/* A buffer with guard words on both sides that the kernel must leave alone. */
template <class T>
struct Guarded {
  static constexpr size_t GUARD = 64;
  std::vector<T> all;
  size_t n;
  T fill;
  Guarded(size_t n_, T fill_) : all(n_ + 2 * GUARD, fill_), n(n_), fill(fill_) {}
  T *data() { return all.data() + GUARD; }
  bool guards_intact() const {
    for (size_t i = 0; i < GUARD; i++)
      if (memcmp(&all[i], &fill, sizeof(T)) || memcmp(&all[GUARD + n + i], &fill, sizeof(T))) return false;
    return true;
  }
};

std::vector<uint16_t> random_bf16(size_t n, float sd, std::mt19937 &rng) {
  std::normal_distribution<float> dist(0.0f, sd);
  std::vector<uint16_t> r(n);
  for (auto &x : r) x = emu::f32_to_bf16(dist(rng));
  return r;
}
double bf(uint16_t b) { return emu::bf16_to_f32(b); }

struct Reference {
  std::vector<double> out, lse, dq, dk, dv, D;
};

/* float64 attention over the bf16 inputs, forward and backward. */
Reference reference(const Case &c, const Tensors &t) {
  const int hd = c.hd, nh = c.nh, nkv = c.nkv, group = nh / nkv;
  const double scale = 1.0 / sqrt((double)hd);
  Reference r;
  r.out.assign(c.tq * nh * hd, 0.0);
  r.lse.assign(nh * c.tq, -INFINITY);
  r.D.assign(nh * c.tq, 0.0);
  r.dq.assign(c.tq * nh * hd, 0.0);
  r.dk.assign(c.tk * nkv * hd, 0.0);
  r.dv.assign(c.tk * nkv * hd, 0.0);
  std::vector<double> s(c.tk), dp(c.tk);
  for (int h = 0; h < nh; h++) {
    const int kh = h / group;
    for (int64_t i = 0; i < c.tq; i++) {
      const uint16_t *qi = &t.q[(i * nh + h) * hd], *doi = &t.dout[(i * nh + h) * hd];
      int64_t jn = std::min<int64_t>(c.tk, i + c.delta + 1);
      const int64_t j0 = c.window > 0 ? std::max<int64_t>(0, i + c.delta - c.window + 1) : 0;
      if (jn <= j0) continue;
      double m = -INFINITY;
      for (int64_t j = j0; j < jn; j++) {
        const uint16_t *kj = &t.k[(j * nkv + kh) * hd];
        double acc = 0;
        for (int d = 0; d < hd; d++) acc += bf(qi[d]) * bf(kj[d]);
        s[j] = acc * scale;
        m = std::max(m, s[j]);
      }
      double sum = 0;
      for (int64_t j = j0; j < jn; j++) sum += exp(s[j] - m);
      const double lse = m + log(sum);
      r.lse[h * c.tq + i] = lse;
      double *oi = &r.out[(i * nh + h) * hd];
      for (int64_t j = j0; j < jn; j++) {
        const double p = exp(s[j] - lse);
        for (int d = 0; d < hd; d++) oi[d] += p * bf(t.v[(j * nkv + kh) * hd + d]);
      }
      double Di = 0;
      for (int d = 0; d < hd; d++) Di += bf(doi[d]) * oi[d];
      r.D[h * c.tq + i] = Di;
      for (int64_t j = j0; j < jn; j++) {
        double acc = 0;
        for (int d = 0; d < hd; d++) acc += bf(doi[d]) * bf(t.v[(j * nkv + kh) * hd + d]);
        const double p = exp(s[j] - lse), ds = p * (acc - Di);
        for (int d = 0; d < hd; d++) {
          r.dq[(i * nh + h) * hd + d] += scale * ds * bf(t.k[(j * nkv + kh) * hd + d]);
          r.dk[(j * nkv + kh) * hd + d] += scale * ds * bf(qi[d]);
          r.dv[(j * nkv + kh) * hd + d] += p * bf(doi[d]);
        }
      }
    }
  }
  return r;
}

template <class T, class F>
double rel_err(const T *x, const std::vector<double> &ref, F value) {
  double worst = 0, scale = 0;
  for (size_t i = 0; i < ref.size(); i++) {
    const double v = value(x[i]);
    if (!std::isfinite(v)) return INFINITY;
    worst = std::max(worst, fabs(v - ref[i]));
    scale = std::max(scale, fabs(ref[i]));
  }
  return scale > 0 ? worst / scale : worst;
}

double lse_err(const float *x, const std::vector<double> &ref) {
  double worst = 0;
  for (size_t i = 0; i < ref.size(); i++) {
    if (std::isinf(ref[i]) || std::isinf(x[i])) {
      if (ref[i] != (double)x[i]) return INFINITY;
      continue;
    }
    if (!std::isfinite(x[i])) return INFINITY;
    worst = std::max(worst, fabs((double)x[i] - ref[i]));
  }
  return worst;
}

const emu::Schedule SCHEDULES[] = {
    {emu::Completion::eager, emu::Order::forward, 1},
    {emu::Completion::lazy, emu::Order::reverse, 1},
    {emu::Completion::lazy, emu::Order::shuffled, 7},
    {emu::Completion::eager, emu::Order::shuffled, 11},
};
const char *schedule_name(const emu::Schedule &s) {
  static char buf[64];
  snprintf(buf, sizeof buf, "%s/%s", s.completion == emu::Completion::eager ? "eager" : "lazy",
           s.order == emu::Order::forward ? "forward" : s.order == emu::Order::reverse ? "reverse" : "shuffled");
  return buf;
}

constexpr double TOL = 1e-2, LSE_TOL = 1e-3;
int failures = 0;

void verdict(const char *what, const Case &c, const char *variant, const emu::Schedule &s, double err, double tol) {
  const bool ok = err <= tol;
  if (!ok) failures++;
  printf("%-4s %-26s hd %3d %-9s %-15s %-5s err %.2e (tol %.0e)\n", ok ? "ok" : "FAIL", c.name, c.hd, variant,
         schedule_name(s), what, err, tol);
}

template <int HD, bool OVERLAP>
void run_forward(const Case &c, const Tensors &t, const Reference &r) {
  std::vector<uint16_t> first_out;
  std::vector<float> first_lse;
  const char *variant = OVERLAP ? "fwd v5" : "fwd v4";
  for (const emu::Schedule &s : SCHEDULES) {
    Guarded<uint16_t> out(c.tq * c.nh * HD, 0x7FC1); /* NaN: a row never written shows */
    Guarded<float> lse(c.nh * c.tq, 12345.0f);
    emu::clear_globals();
    emu::register_global(t.q.data(), t.q.size() * 2, "q");
    emu::register_global(t.k.data(), t.k.size() * 2, "k");
    emu::register_global(t.v.data(), t.v.size() * 2, "v");
    FwdParams p{};
    p.q = reinterpret_cast<const flash::bf16 *>(t.q.data());
    p.k = reinterpret_cast<const flash::bf16 *>(t.k.data());
    p.v = reinterpret_cast<const flash::bf16 *>(t.v.data());
    p.out = reinterpret_cast<flash::bf16 *>(out.data());
    p.lse = lse.data();
    p.tq = c.tq;
    p.tk = c.tk;
    p.q_stride = (int64_t)c.nh * HD;
    p.kv_stride = (int64_t)c.nkv * HD;
    p.delta = c.delta;
    p.window = c.window;
    p.group = c.nh / c.nkv;
    p.scale_log2 = (float)(1.0 / sqrt((double)HD)) * FLASH_LOG2E;
    p.n_qtiles = (int)((c.tq + flash::FwdSm90::BQ - 1) / flash::FwdSm90::BQ);
    const unsigned gy = c.grid_y_cap ? std::min<unsigned>(c.grid_y_cap, p.n_qtiles) : (unsigned)p.n_qtiles;
    emu::g.schedule = s;
    emu::launch(dim3{(unsigned)c.nh, gy, 1}, flash::FwdSm90::smem_bytes(HD, OVERLAP),
                [&] { flash::flash_fwd_sm90_kernel<HD, OVERLAP>(p); });
    if (!out.guards_intact() || !lse.guards_intact()) {
      printf("FAIL %s: the forward wrote outside out or lse\n", c.name);
      failures++;
    }
    verdict("out", c, variant, s, rel_err(out.data(), r.out, [](uint16_t b) { return bf(b); }), TOL);
    verdict("lse", c, variant, s, lse_err(lse.data(), r.lse), LSE_TOL);
    std::vector<uint16_t> o(out.data(), out.data() + out.n);
    std::vector<float> l(lse.data(), lse.data() + lse.n);
    if (first_out.empty()) {
      first_out = o;
      first_lse = l;
    } else if (o != first_out || memcmp(l.data(), first_lse.data(), l.size() * 4)) {
      printf("FAIL %s hd %d %s: the output under %s differs from the first schedule's (a race)\n", c.name, HD,
             variant, schedule_name(s));
      failures++;
    }
  }
}

template <int HD>
void run_backward(const Case &c, const Tensors &t, const Reference &r) {
  const int64_t tq_pad = (c.tq + 127) / 128 * 128;
  std::vector<float> L(c.nh * tq_pad, INFINITY), D(c.nh * tq_pad, 0.0f);
  for (int h = 0; h < c.nh; h++)
    for (int64_t i = 0; i < c.tq; i++) { /* what flash_bwd_prep_kernel writes */
      const double lse = r.lse[h * c.tq + i];
      L[h * tq_pad + i] = std::isinf(lse) ? INFINITY : (float)(lse * 1.4426950408889634);
      D[h * tq_pad + i] = (float)r.D[h * c.tq + i];
    }
  for (const emu::Schedule &s : SCHEDULES) {
    Guarded<float> dq(c.tq * c.nh * HD, 0.0f), dk(c.tk * c.nkv * HD, 0.0f), dv(c.tk * c.nkv * HD, 0.0f);
    emu::clear_globals();
    emu::register_global(t.q.data(), t.q.size() * 2, "q");
    emu::register_global(t.k.data(), t.k.size() * 2, "k");
    emu::register_global(t.v.data(), t.v.size() * 2, "v");
    emu::register_global(t.dout.data(), t.dout.size() * 2, "dout");
    emu::register_global(L.data(), L.size() * 4, "L");
    emu::register_global(D.data(), D.size() * 4, "D");
    emu::register_global(dq.data(), dq.n * 4, "dq");
    emu::register_global(dk.data(), dk.n * 4, "dk");
    emu::register_global(dv.data(), dv.n * 4, "dv");
    BwdParams p{};
    p.q = reinterpret_cast<const flash::bf16 *>(t.q.data());
    p.k = reinterpret_cast<const flash::bf16 *>(t.k.data());
    p.v = reinterpret_cast<const flash::bf16 *>(t.v.data());
    p.dout = reinterpret_cast<const flash::bf16 *>(t.dout.data());
    p.dq = dq.data();
    p.dk = dk.data();
    p.dv = dv.data();
    p.L = L.data();
    p.D = D.data();
    p.tq = c.tq;
    p.tk = c.tk;
    p.q_stride = (int64_t)c.nh * HD;
    p.kv_stride = (int64_t)c.nkv * HD;
    p.tq_pad = tq_pad;
    p.delta = c.delta;
    p.window = c.window;
    p.group = c.nh / c.nkv;
    p.scale = (float)(1.0 / sqrt((double)HD));
    p.scale_log2 = p.scale * FLASH_LOG2E;
    using C = flash::BwdSm90<HD>;
    p.n_ktiles = (int)((c.tk + C::BK - 1) / C::BK);
    const unsigned gy = c.grid_y_cap ? std::min<unsigned>(c.grid_y_cap, p.n_ktiles) : (unsigned)p.n_ktiles;
    emu::g.schedule = s;
    emu::launch(dim3{(unsigned)c.nh, gy, 1}, C::SMEM, [&] { flash::flash_bwd_sm90_kernel<C>(p); });
    if (!dq.guards_intact() || !dk.guards_intact() || !dv.guards_intact()) {
      printf("FAIL %s: the backward wrote outside dq, dk or dv\n", c.name);
      failures++;
    }
    auto id = [](float x) { return (double)x; };
    verdict("dq", c, "bwd v6", s, rel_err(dq.data(), r.dq, id), TOL);
    verdict("dk", c, "bwd v6", s, rel_err(dk.data(), r.dk, id), TOL);
    verdict("dv", c, "bwd v6", s, rel_err(dv.data(), r.dv, id), TOL);
  }
}

template <int HD>
void run_case(const Case &c, bool backward) {
  std::mt19937 rng(1234u + (unsigned)c.tq * 7u + (unsigned)c.tk + (unsigned)HD);
  Tensors t;
  t.q = random_bf16(c.tq * c.nh * HD, 1.5f, rng); /* scores of a few units: a peaked softmax */
  t.k = random_bf16(c.tk * c.nkv * HD, 1.0f, rng);
  t.v = random_bf16(c.tk * c.nkv * HD, 1.0f, rng);
  t.dout = random_bf16(c.tq * c.nh * HD, 1.0f, rng);
  const Reference r = reference(c, t);
  if (!backward) {
    run_forward<HD, false>(c, t, r);
    run_forward<HD, true>(c, t, r);
  } else {
    run_backward<HD>(c, t, r);
  }
}

}  // namespace

int main(int argc, char **argv) {
  /* Optional filter: "fwd" or "bwd". */
  const bool want_fwd = argc < 2 || !strcmp(argv[1], "fwd"), want_bwd = argc < 2 || !strcmp(argv[1], "bwd");
  const Case cases[] = {
      {"causal, ragged", 0, 2, 2, 300, 300, 0, 0, 0},
      {"GQA 4/2, keys before", 0, 4, 2, 200, 456, 256, 0, 0},
      {"rows seeing no key", 0, 2, 1, 260, 200, -140, 0, 0},
      {"fully visible", 0, 2, 2, 130, 260, 5000, 0, 0},
      {"causal, grid-stride", 0, 2, 2, 300, 300, 0, 1, 0},
      {"tiny", 0, 1, 1, 17, 17, 0, 0, 0},
      {"one query, all keys", 0, 1, 1, 1, 700, 699, 0, 0},
      {"many key tiles", 0, 1, 1, 128, 1000, 900, 0, 0},
      /* The sliding window: shorter than a tile (both edges in one tile pair, whole tiles skipped on
       * both sides), a window edge off the tile grid, keys before the queries (DistAttn's pair past
       * the diagonal: every row cut), GQA under a grid-stride loop, a window no row reaches, keys
       * far before the queries (the later rows' windows hold none of them: out 0, lse -inf). */
      {"window 50, diagonal", 0, 2, 2, 400, 400, 0, 0, 50},
      {"window 300, ragged", 0, 2, 1, 520, 520, 0, 0, 300},
      {"window, keys before", 0, 2, 2, 256, 300, 200, 0, 333},
      {"window, GQA grid-stride", 0, 4, 2, 390, 390, 0, 2, 130},
      {"window past every row", 0, 1, 1, 300, 300, 0, 0, 100000},
      {"window past the keys", 0, 2, 2, 300, 100, 150, 0, 200}, /* rows 149.. see no key */
  };
  for (int hd : {128, 64})
    for (Case c : cases) {
      c.hd = hd;
      for (int pass = 0; pass < 2; pass++) {
        const bool backward = pass == 1;
        if ((backward && !want_bwd) || (!backward && !want_fwd)) continue;
        if (hd == 128) run_case<128>(c, backward);
        else run_case<64>(c, backward);
      }
    }
  printf("%s: %d failure(s)\n", failures ? "FAILED" : "passed", failures);
  return failures ? 1 : 0;
}
