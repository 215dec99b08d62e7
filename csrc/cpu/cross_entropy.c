/* CPU cross-entropy over vocabulary chunks: running max and sum of exponentials per token, so the
 * [T, V] logits never exist at once. Rows are independent; each is handled by one thread. */
#include <math.h>

#include "cpu_util.h"

#define PARALLEL_MIN 32768

static df_status check_chunk(const char *fn, int64_t t, int64_t vc, int64_t v0, int64_t *n) {
  DF_CHECK(df_check_dim(fn, "t", t, 1));
  DF_CHECK(df_check_dim(fn, "vc", vc, 1));
  DF_CHECK(df_check_dim(fn, "v0", v0, 0));
  if (v0 + vc > ((int64_t)1 << 31)) {
    return df_fail(DF_ERR_INVALID, "%s: chunk [v0, v0 + vc) = [%lld, %lld) goes past 2^31 ids", fn,
                   (long long)v0, (long long)(v0 + vc));
  }
  return df_numel(fn, "logits", n, t, vc, 1);
}

df_status df_ce_chunk_forward(float *m, float *s, float *target, const float *logits,
                              const int32_t *labels, int64_t t, int64_t vc, int64_t v0,
                              void *stream) {
  (void)stream;
  const char *fn = "df_ce_chunk_forward";
  int64_t n = 0;
  DF_CHECK(check_chunk(fn, t, vc, v0, &n));
  DF_CHECK(df_check_elems(fn, "m", m, t, sizeof(float)));
  DF_CHECK(df_check_elems(fn, "s", s, t, sizeof(float)));
  DF_CHECK(df_check_elems(fn, "target", target, t, sizeof(float)));
  DF_CHECK(df_check_elems(fn, "logits", logits, n, sizeof(float)));
  DF_CHECK(df_check_elems(fn, "labels", labels, t, sizeof(int32_t)));
#pragma omp parallel for schedule(static) if (n > PARALLEL_MIN)
  for (int64_t i = 0; i < t; i++) {
    const float *row = logits + i * vc;
    float cmax = -INFINITY;
    for (int64_t j = 0; j < vc; j++) cmax = row[j] > cmax ? row[j] : cmax;
    const float m_old = m[i], m_new = cmax > m_old ? cmax : m_old;
    if (m_new != -INFINITY) { /* else every logit so far is -inf: s stays 0 */
      /* The old sum is rescaled to the new max; with m_old = -inf (first chunk) the factor is 0. */
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int64_t j = 0;
      for (; j + 8 <= vc; j += 8) {
        for (int l = 0; l < 8; l++) acc[l] += expf(row[j + l] - m_new);
      }
      float tail = 0.0f;
      for (; j < vc; j++) tail += expf(row[j] - m_new);
      float chunk =
          ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail;
      s[i] = s[i] * expf(m_old - m_new) + chunk;
      m[i] = m_new;
    }
    const int64_t label = labels[i];
    if (label >= v0 && label < v0 + vc) target[i] = row[label - v0];
  }
  return DF_OK;
}

df_status df_ce_finalize(float *loss, float *lse, const float *m, const float *s,
                         const float *target, const int32_t *labels, int64_t t, void *stream) {
  (void)stream;
  const char *fn = "df_ce_finalize";
  DF_CHECK(df_check_dim(fn, "t", t, 1));
  DF_CHECK(df_check_elems(fn, "loss", loss, t, sizeof(float)));
  DF_CHECK(df_check_elems(fn, "lse", lse, t, sizeof(float)));
  DF_CHECK(df_check_elems(fn, "m", m, t, sizeof(float)));
  DF_CHECK(df_check_elems(fn, "s", s, t, sizeof(float)));
  DF_CHECK(df_check_elems(fn, "target", target, t, sizeof(float)));
  DF_CHECK(df_check_elems(fn, "labels", labels, t, sizeof(int32_t)));
  for (int64_t i = 0; i < t; i++) {
    const float l = m[i] + logf(s[i]);
    lse[i] = l;
    loss[i] = labels[i] < 0 ? 0.0f : l - target[i];
  }
  return DF_OK;
}

df_status df_ce_chunk_backward(float *logits, const float *lse, const int32_t *labels, int64_t t,
                               int64_t vc, int64_t v0, float scale, void *stream) {
  (void)stream;
  const char *fn = "df_ce_chunk_backward";
  int64_t n = 0;
  DF_CHECK(check_chunk(fn, t, vc, v0, &n));
  DF_CHECK(df_check_elems(fn, "logits", logits, n, sizeof(float)));
  DF_CHECK(df_check_elems(fn, "lse", lse, t, sizeof(float)));
  DF_CHECK(df_check_elems(fn, "labels", labels, t, sizeof(int32_t)));
#pragma omp parallel for schedule(static) if (n > PARALLEL_MIN)
  for (int64_t i = 0; i < t; i++) {
    float *row = logits + i * vc;
    const int64_t label = labels[i];
    if (label < 0) {
      for (int64_t j = 0; j < vc; j++) row[j] = 0.0f;
      continue;
    }
    const float l = lse[i];
    for (int64_t j = 0; j < vc; j++) row[j] = scale * expf(row[j] - l);
    if (label >= v0 && label < v0 + vc) row[label - v0] -= scale;
  }
  return DF_OK;
}
