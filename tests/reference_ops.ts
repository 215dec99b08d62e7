/**
 * Float64 reference implementations of the Llama ops, written directly from the math (not from the
 * kernels), for tests/ops.test.ts. Tensors are flat row-major arrays; shapes follow
 * csrc/include/distflash.h.
 */

type Arr = ArrayLike<number>;

/** C[m,n] = alpha op(A) op(B) + beta C, returned dense [m, n]; c (row stride ldc) may be null. */
export function gemmRef(
  transA: boolean,
  transB: boolean,
  m: number,
  n: number,
  k: number,
  alpha: number,
  a: Arr,
  lda: number,
  b: Arr,
  ldb: number,
  beta: number,
  c: Arr | null,
  ldc: number,
): Float64Array {
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let acc = 0;
      for (let p = 0; p < k; p++) {
        const av = transA ? a[p * lda + i] : a[i * lda + p];
        const bv = transB ? b[j * ldb + p] : b[p * ldb + j];
        acc += av * bv;
      }
      out[i * n + j] = alpha * acc + (beta !== 0 && c ? beta * c[i * ldc + j] : 0);
    }
  }
  return out;
}

export function embeddingRef(table: Arr, ids: Arr, h: number): Float64Array {
  const out = new Float64Array(ids.length * h);
  for (let t = 0; t < ids.length; t++) {
    for (let c = 0; c < h; c++) out[t * h + c] = table[ids[t] * h + c];
  }
  return out;
}

export function embeddingBackwardRef(dout: Arr, ids: Arr, v: number, h: number): Float64Array {
  const dtable = new Float64Array(v * h);
  for (let t = 0; t < ids.length; t++) {
    for (let c = 0; c < h; c++) dtable[ids[t] * h + c] += dout[t * h + c];
  }
  return dtable;
}

/** out = x / sqrt(mean(x^2) + eps) * w per row; rstd = 1 / sqrt(mean(x^2) + eps). */
export function rmsnormRef(x: Arr, w: Arr, t: number, h: number, eps: number) {
  const out = new Float64Array(t * h), rstd = new Float64Array(t);
  for (let i = 0; i < t; i++) {
    let ss = 0;
    for (let c = 0; c < h; c++) ss += x[i * h + c] ** 2;
    const r = 1 / Math.sqrt(ss / h + eps);
    rstd[i] = r;
    for (let c = 0; c < h; c++) out[i * h + c] = x[i * h + c] * r * w[c];
  }
  return { out, rstd };
}

/**
 * Gradients of L = sum(dout * rmsnorm(x, w)). With r = (mean(x^2) + eps)^-1/2,
 * d out_c / d x_e = w_c (r [c = e] - r^3 x_c x_e / h), so dx_e = r dout_e w_e - r^3 x_e/h sum_c
 * dout_c w_c x_c, and dw_c = sum over rows of dout_c x_c r.
 */
export function rmsnormBackwardRef(dout: Arr, x: Arr, w: Arr, t: number, h: number, eps: number) {
  const dx = new Float64Array(t * h), dw = new Float64Array(h);
  for (let i = 0; i < t; i++) {
    let ss = 0, dot = 0;
    for (let c = 0; c < h; c++) {
      ss += x[i * h + c] ** 2;
      dot += dout[i * h + c] * w[c] * x[i * h + c];
    }
    const r = 1 / Math.sqrt(ss / h + eps);
    for (let c = 0; c < h; c++) {
      const e = i * h + c;
      dx[e] = r * dout[e] * w[c] - (r ** 3) * x[e] * dot / h;
      dw[c] += dout[e] * x[e] * r;
    }
  }
  return { dx, dw };
}

/**
 * Hugging Face rotary embedding: out = x * cos + rotate_half(x) * sin with
 * rotate_half(x) = cat(-x[hd/2:], x[:hd/2]), angle = pos * inv_freq[i % (hd/2)]. Hugging Face forms
 * the angle as a float32 product (inv_freq @ position_ids in fp32), so the reference rounds it the
 * same way; cos and sin are then exact. `inverse` rotates by -angle.
 */
export function ropeRef(
  x: Arr,
  pos: Arr,
  invFreq: Arr,
  t: number,
  heads: number,
  hd: number,
  inverse = false,
): Float64Array {
  const half = hd / 2;
  const out = new Float64Array(t * heads * hd);
  for (let i = 0; i < t; i++) {
    for (let h = 0; h < heads; h++) {
      const base = (i * heads + h) * hd;
      for (let c = 0; c < hd; c++) {
        const angle = Math.fround(pos[i] * invFreq[c % half]) * (inverse ? -1 : 1);
        const rotated = c < half ? -x[base + c + half] : x[base + c - half];
        out[base + c] = x[base + c] * Math.cos(angle) + rotated * Math.sin(angle);
      }
    }
  }
  return out;
}

export interface AttentionRefShape {
  tq: number;
  tk: number;
  nh: number;
  nkv: number;
  hd: number;
  qPos0: number;
  kPos0: number;
  scale: number;
}

/** Softmax probabilities of query i, head h over the keys it sees (null when it sees none). */
function attentionProbs(q: Arr, k: Arr, s: AttentionRefShape, i: number, h: number) {
  const g = Math.floor(h / (s.nh / s.nkv));
  const scores: number[] = [], keys: number[] = [];
  for (let j = 0; j < s.tk; j++) {
    if (s.kPos0 + j > s.qPos0 + i) continue; // causal: key position <= query position
    let dot = 0;
    for (let c = 0; c < s.hd; c++) {
      dot += q[(i * s.nh + h) * s.hd + c] * k[(j * s.nkv + g) * s.hd + c];
    }
    scores.push(s.scale * dot);
    keys.push(j);
  }
  if (keys.length === 0) return null;
  const mx = Math.max(...scores);
  const e = scores.map((x) => Math.exp(x - mx));
  const z = e.reduce((acc, x) => acc + x, 0);
  return { g, keys, p: e.map((x) => x / z), lse: mx + Math.log(z) };
}

/** Causal GQA attention with global positions: out [tq, nh, hd], lse [nh, tq]. */
export function attentionRef(q: Arr, k: Arr, v: Arr, s: AttentionRefShape) {
  const out = new Float64Array(s.tq * s.nh * s.hd), lse = new Float64Array(s.nh * s.tq);
  for (let i = 0; i < s.tq; i++) {
    for (let h = 0; h < s.nh; h++) {
      const pr = attentionProbs(q, k, s, i, h);
      if (!pr) {
        lse[h * s.tq + i] = -Infinity;
        continue;
      }
      lse[h * s.tq + i] = pr.lse;
      pr.keys.forEach((j, n) => {
        for (let c = 0; c < s.hd; c++) {
          out[(i * s.nh + h) * s.hd + c] += pr.p[n] * v[(j * s.nkv + pr.g) * s.hd + c];
        }
      });
    }
  }
  return { out, lse };
}

/**
 * Gradients of L = sum(dout * attention(q, k, v)) through the softmax Jacobian:
 * dP_j = dout . v_j; dS_j = P_j (dP_j - sum_l P_l dP_l); dq += scale dS_j k_j; dk_j += scale dS_j q;
 * dv_j += P_j dout. K/V gradients of a GQA group sum over its query heads.
 */
export function attentionBackwardRef(dout: Arr, q: Arr, k: Arr, v: Arr, s: AttentionRefShape) {
  const dq = new Float64Array(s.tq * s.nh * s.hd);
  const dk = new Float64Array(s.tk * s.nkv * s.hd), dv = new Float64Array(s.tk * s.nkv * s.hd);
  for (let i = 0; i < s.tq; i++) {
    for (let h = 0; h < s.nh; h++) {
      const pr = attentionProbs(q, k, s, i, h);
      if (!pr) continue;
      const qo = (i * s.nh + h) * s.hd;
      const dp = pr.keys.map((j) => {
        let acc = 0;
        for (let c = 0; c < s.hd; c++) acc += dout[qo + c] * v[(j * s.nkv + pr.g) * s.hd + c];
        return acc;
      });
      const expected = pr.p.reduce((acc, p, n) => acc + p * dp[n], 0);
      pr.keys.forEach((j, n) => {
        const ko = (j * s.nkv + pr.g) * s.hd;
        const ds = pr.p[n] * (dp[n] - expected);
        for (let c = 0; c < s.hd; c++) {
          dq[qo + c] += s.scale * ds * k[ko + c];
          dk[ko + c] += s.scale * ds * q[qo + c];
          dv[ko + c] += pr.p[n] * dout[qo + c];
        }
      });
    }
  }
  return { dq, dk, dv };
}

const silu = (x: number) => x / (1 + Math.exp(-x));

export function swigluRef(gate: Arr, up: Arr): Float64Array {
  return Float64Array.from({ length: gate.length }, (_, i) => silu(gate[i]) * up[i]);
}

/** d silu(g)/dg = s + g s (1 - s) with s = sigmoid(g). */
export function swigluBackwardRef(dout: Arr, gate: Arr, up: Arr) {
  const n = gate.length;
  const dgate = new Float64Array(n), dup = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const s = 1 / (1 + Math.exp(-gate[i]));
    dgate[i] = dout[i] * up[i] * (s + gate[i] * s * (1 - s));
    dup[i] = dout[i] * silu(gate[i]);
  }
  return { dgate, dup };
}

/** Full-vocabulary cross entropy: loss = logsumexp(row) - row[label] (0 for label < 0). */
export function crossEntropyRef(logits: Arr, labels: Arr, t: number, v: number) {
  const loss = new Float64Array(t), lse = new Float64Array(t);
  for (let i = 0; i < t; i++) {
    let mx = -Infinity;
    for (let j = 0; j < v; j++) mx = Math.max(mx, logits[i * v + j]);
    let z = 0;
    for (let j = 0; j < v; j++) z += Math.exp(logits[i * v + j] - mx);
    lse[i] = mx + Math.log(z);
    loss[i] = labels[i] < 0 ? 0 : lse[i] - logits[i * v + labels[i]];
  }
  return { loss, lse };
}

/** d(scale * sum(loss)) / d logits = scale * (softmax - onehot), 0 rows for ignored labels. */
export function crossEntropyBackwardRef(
  logits: Arr,
  labels: Arr,
  t: number,
  v: number,
  scale: number,
): Float64Array {
  const { lse } = crossEntropyRef(logits, labels, t, v);
  const d = new Float64Array(t * v);
  for (let i = 0; i < t; i++) {
    if (labels[i] < 0) continue;
    for (let j = 0; j < v; j++) {
      d[i * v + j] = scale * (Math.exp(logits[i * v + j] - lse[i]) - (j === labels[i] ? 1 : 0));
    }
  }
  return d;
}

export interface AdamWRefState {
  param: Float64Array;
  m: Float64Array;
  v: Float64Array;
}

/**
 * One torch.optim.AdamW step (step is 1-based), as torch writes it: decay the parameter by
 * (1 - lr wd), update the moments, then param -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps).
 */
export function adamwRef(
  st: AdamWRefState,
  grad: Arr,
  o: {
    lr: number;
    beta1: number;
    beta2: number;
    eps: number;
    weightDecay: number;
    step: number;
    gradScale: number;
  },
): void {
  const bc1 = 1 - o.beta1 ** o.step, bc2 = 1 - o.beta2 ** o.step;
  for (let i = 0; i < st.param.length; i++) {
    const g = grad[i] * o.gradScale;
    st.param[i] *= 1 - o.lr * o.weightDecay;
    st.m[i] = o.beta1 * st.m[i] + (1 - o.beta1) * g;
    st.v[i] = o.beta2 * st.v[i] + (1 - o.beta2) * g * g;
    st.param[i] -= (o.lr / bc1) * st.m[i] / (Math.sqrt(st.v[i]) / Math.sqrt(bc2) + o.eps);
  }
}
