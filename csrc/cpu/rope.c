/* CPU rotary position embedding (Hugging Face rotate_half convention), in place. */
#include <math.h>

#include "cpu_util.h"

/* For each token t, head, and i < hd/2, with a = pos[t] * inv_freq[i] (negated when inverse):
 *   x[i]        <- x[i] cos a - x[i + hd/2] sin a
 *   x[i + hd/2] <- x[i + hd/2] cos a + x[i] sin a
 * i.e. x * cos + rotate_half(x) * sin with rotate_half(x) = cat(-x2, x1). The angle is the fp32
 * product, as Hugging Face computes it. */
df_status df_rope(void *x, const int32_t *pos, const float *inv_freq, int64_t t, int64_t heads,
                  int64_t hd, int32_t inverse, df_dtype dtype, void *stream) {
  (void)stream;
  const char *fn = "df_rope";
  DF_CHECK(df_check_dim(fn, "t", t, 1));
  DF_CHECK(df_check_dim(fn, "heads", heads, 1));
  DF_CHECK(df_check_dim(fn, "hd", hd, 2));
  if (hd % 2 != 0) {
    return df_fail(DF_ERR_INVALID, "%s: argument 'hd' must be even, got %lld", fn, (long long)hd);
  }
  DF_CHECK(df_check_dtype(fn, "dtype", (int)dtype));
  int64_t n = 0;
  DF_CHECK(df_numel(fn, "x", &n, t, heads, hd));
  const int64_t half = hd / 2;
  DF_CHECK(df_check_elems(fn, "x", x, n, df_dtype_size(dtype)));
  DF_CHECK(df_check_elems(fn, "pos", pos, t, sizeof(int32_t)));
  DF_CHECK(df_check_elems(fn, "inv_freq", inv_freq, half, sizeof(float)));
  const float sign = inverse ? -1.0f : 1.0f;
  int failed = 0;
#pragma omp parallel if (n > 32768) reduction(| : failed)
  {
    /* cos and sin of this token's angles, then the head's row in fp32. */
    float *buf = (float *)malloc((size_t)(2 * hd) * sizeof(float));
    if (!buf) failed = 1;
    float *cs = buf, *sn = buf + half, *row = buf + hd;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < t; i++) {
      if (!buf) continue;
      for (int64_t f = 0; f < half; f++) {
        float angle = (float)pos[i] * inv_freq[f];
        cs[f] = cosf(angle);
        sn[f] = sign * sinf(angle);
      }
      for (int64_t hh = 0; hh < heads; hh++) {
        int64_t base = (i * heads + hh) * hd;
        df_load_row(row, x, dtype, base, hd);
        for (int64_t f = 0; f < half; f++) {
          float x1 = row[f], x2 = row[f + half];
          row[f] = x1 * cs[f] - x2 * sn[f];
          row[f + half] = x2 * cs[f] + x1 * sn[f];
        }
        df_store_row(x, dtype, base, row, hd);
      }
    }
    free(buf);
  }
  if (failed) return df_fail(DF_ERR_OOM, "%s: out of host memory", fn);
  return DF_OK;
}
