#!/usr/bin/env python3
"""Reference fixtures for distflash's Llama model, computed with PyTorch + Hugging Face transformers.

Subcommands (run from the repository root):

  generate [OUTDIR]        (default tests/fixtures)
      Writes two tiny random Llamas in Hugging Face layout, OUTDIR/mha/ and OUTDIR/gqa/, each with
      config.json (as transformers writes it), model.safetensors (float32, HF parameter names) and
      reference.safetensors:
        input_ids  int64 [B,T]
        labels     int64 [B,T]   already aligned: labels[b,t] is the target of position t
                                 (labels[b,t] = input_ids[b,t+1]); -100 = ignored (3 positions)
        logits     f32 [B,T,V]
        loss       f32 [1]       F.cross_entropy(logits.view(-1,V), labels.view(-1), ignore_index=-100)
        grad.<name> f32          d loss / d parameter, for every parameter in model.safetensors
                                 (tied embeddings: only model.embed_tokens.weight, which includes the
                                 LM-head contribution)
      Everything is computed in float64 (eager attention) from the float32 weights as saved, then
      stored as float32. OUTDIR/gqa/config.classic.json is the gqa config in the published
      Llama-3.1 form (top-level rope_theta + rope_scaling). OUTDIR/VERSIONS.txt records versions.

  check-checkpoint MODEL_DIR REFERENCE_SAFETENSORS [--tol 1e-4]
      Loads MODEL_DIR with LlamaForCausalLM.from_pretrained in float32 and float64, runs the
      reference input_ids, and compares logits by ||out - ref|| / ||ref||. Exits 1 if over tol.

  attention [DIR]          (default tests/fixtures)
      Writes DIR/attention.safetensors: a standalone causal GQA softmax attention case
      (B=1, H=4, Hkv=2, T=48, D=16, scale 1/sqrt(D)) with q, k, v, dout, out, lse, dq, dk, dv,
      computed in float64 with plain torch ops and stored as float32. Query head h reads KV head
      h // (H // Hkv) (the grouping of transformers' repeat_kv). lse is the natural-log
      log-sum-exp of the scaled, masked scores, shape [B,H,T].

Setup:
    python3 -m venv .venv && .venv/bin/pip install torch transformers safetensors numpy
"""

import argparse
import json
import math
import os
import shutil
import sys
import tempfile

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join(ROOT, "tests", "fixtures")

B, T = 2, 32
IGNORE = -100

COMMON = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=176,
    num_hidden_layers=2,
    num_attention_heads=4,
    head_dim=16,
    rms_norm_eps=1e-5,
    max_position_embeddings=256,
    hidden_act="silu",
    attention_bias=False,
    mlp_bias=False,
)

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}

VARIANTS = {
    "mha": dict(
        num_key_value_heads=4,
        tie_word_embeddings=False,
        rope_theta=10000.0,
        rope_scaling=None,
        seed=1234,
    ),
    "gqa": dict(
        num_key_value_heads=2,
        tie_word_embeddings=True,
        rope_theta=500000.0,
        rope_scaling=LLAMA3_SCALING,
        seed=5678,
    ),
}

WEIGHT_STD = 0.08


def make_config(variant):
    v = dict(VARIANTS[variant])
    v.pop("seed")
    kw = dict(COMMON)
    kw.update(v)
    if kw["rope_scaling"] is None:
        kw.pop("rope_scaling")
    return LlamaConfig(**kw)


def init_weights(model, seed):
    """Deterministic float32 init: N(0, WEIGHT_STD) for matrices, 1 + 0.1 N(0,1) for RMSNorm."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # RMSNorm weights (no biases in this config)
                assert "norm" in name, name
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float32))
            else:
                p.copy_(WEIGHT_STD * torch.randn(p.shape, generator=gen, dtype=torch.float32))


def make_batch(seed, vocab):
    gen = torch.Generator().manual_seed(seed + 1)
    input_ids = torch.randint(0, vocab, (B, T), generator=gen, dtype=torch.int64)
    labels = torch.full((B, T), IGNORE, dtype=torch.int64)
    labels[:, :-1] = input_ids[:, 1:]  # aligned targets: next token; last position ignored
    labels[0, 10] = IGNORE  # one more ignored position mid-sequence -> 3 ignored in total
    return input_ids, labels


def llama3_inv_freq(theta, dim, s):
    """Independent re-derivation of Llama-3.1 rope scaling, to cross-check transformers."""
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    low_wl = s["original_max_position_embeddings"] / s["low_freq_factor"]
    high_wl = s["original_max_position_embeddings"] / s["high_freq_factor"]
    out = []
    for f in inv.tolist():
        wl = 2 * math.pi / f
        if wl < high_wl:
            out.append(f)
        elif wl > low_wl:
            out.append(f / s["factor"])
        else:
            smooth = (s["original_max_position_embeddings"] / wl - s["low_freq_factor"]) / (
                s["high_freq_factor"] - s["low_freq_factor"])
            out.append((1 - smooth) * f / s["factor"] + smooth * f)
    return inv, torch.tensor(out, dtype=torch.float64)


def one_key_metadata(info):
    """safetensors writes its metadata map in hash order; one key keeps the files byte-reproducible."""
    return {"info": json.dumps(info, sort_keys=True)}


def load_model(model_dir, dtype):
    m = LlamaForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="eager")
    m.eval()
    return m


def forward_logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids=input_ids, use_cache=False).logits


def rel_err(a, b):
    a = a.to(torch.float64)
    b = b.to(torch.float64)
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)).item()


def write_classic_config(cfg_path, out_path):
    """Rewrite a transformers-5 config.json into the published Llama-3.1 form."""
    with open(cfg_path) as f:
        cfg = json.load(f)
    rp = cfg.pop("rope_parameters", None)
    if rp is not None:
        rp = dict(rp)
        theta = rp.pop("rope_theta")
        rope_type = rp.pop("rope_type", "default")
        classic = {}
        cfg_items = list(cfg.items())
        for k, v in cfg_items:
            classic[k] = v
        classic["rope_theta"] = theta
        classic["rope_scaling"] = None if rope_type == "default" else {
            "factor": rp["factor"],
            "high_freq_factor": rp["high_freq_factor"],
            "low_freq_factor": rp["low_freq_factor"],
            "original_max_position_embeddings": rp["original_max_position_embeddings"],
            "rope_type": rope_type,
        }
        cfg = classic
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    cfg = dict(sorted(cfg.items()))
    with open(out_path, "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")


def write_reference(d, variant, m64, input_ids, labels, logits, loss):
    """reference.safetensors of folder d: the batch, the float64 model's logits and loss as float32,
    and every parameter's gradient (the model's backward has run); the parameters it saved must be
    exactly the model's. Returns the tensors written, and the parameters under "params"."""
    saved = load_file(os.path.join(d, "model.safetensors"))
    params = dict(m64.named_parameters())
    assert set(saved) == set(params), (sorted(set(saved) ^ set(params)))
    ref = {
        "input_ids": input_ids.contiguous(),
        "labels": labels.contiguous(),
        "logits": logits.detach().to(torch.float32).contiguous(),
        "loss": loss.detach().reshape(1).to(torch.float32),
    }
    for name in sorted(params):
        g = params[name].grad
        assert g is not None, name
        ref["grad." + name] = g.to(torch.float32).contiguous()
    save_file(ref, os.path.join(d, "reference.safetensors"),
              metadata=one_key_metadata({"variant": variant, "labels": "aligned (no shift), -100 ignored",
                                         "computed_in": "float64 eager",
                                         "transformers": transformers.__version__,
                                         "torch": torch.__version__}))
    return {**ref, "params": params}


def generate_variant(outdir, variant):
    seed = VARIANTS[variant]["seed"]
    cfg = make_config(variant)
    d = os.path.join(outdir, variant)
    os.makedirs(d, exist_ok=True)

    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    init_weights(model, seed)
    model.save_pretrained(d)  # transformers 5 always writes safetensors
    for extra in ("generation_config.json",):
        p = os.path.join(d, extra)
        if os.path.exists(p):
            os.remove(p)

    # Reference: reload exactly what was saved, in float64, eager attention.
    m64 = load_model(d, torch.float64)
    m64.train()  # no dropout in Llama (attention_dropout 0), but be explicit about grads
    input_ids, labels = make_batch(seed, cfg.vocab_size)
    logits = m64(input_ids=input_ids, use_cache=False).logits
    V = logits.shape[-1]
    loss = F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), ignore_index=IGNORE)
    loss.backward()

    ref = write_reference(d, variant, m64, input_ids, labels, logits, loss)
    params = ref["params"]
    print(f"[{variant}] loss={loss.item():.6f} ignored={(labels == IGNORE).sum().item()} "
          f"params={len(params)} grad norms min={min(g.norm().item() for k, g in ref.items() if k.startswith('grad.')):.3e}")

    # RoPE inspection.
    rot = m64.model.rotary_emb
    inv_hf = rot.inv_freq.to(torch.float64)
    print(f"[{variant}] rope config: {getattr(m64.config, 'rope_parameters', None)}")
    if variant == "gqa":
        base, mine = llama3_inv_freq(cfg.rope_parameters["rope_theta"], cfg.head_dim, LLAMA3_SCALING)
        changed = (~torch.isclose(base, inv_hf, rtol=1e-6)).sum().item()
        print(f"[{variant}] inv_freq unscaled: {[f'{x:.6g}' for x in base.tolist()]}")
        print(f"[{variant}] inv_freq scaled  : {[f'{x:.6g}' for x in inv_hf.tolist()]}")
        print(f"[{variant}] {changed}/{len(base)} frequencies changed by llama3 scaling; "
              f"max rel diff vs independent formula {((mine - inv_hf).abs() / mine).max().item():.2e}; "
              f"attention_scaling={getattr(rot, 'attention_scaling', None)}")
        assert changed > 0 and changed < len(base), "scaling should change some but not all freqs"
        assert torch.allclose(mine, inv_hf, rtol=1e-6)
        write_classic_config(os.path.join(d, "config.json"), os.path.join(d, "config.classic.json"))

    for fn in os.listdir(d):  # safetensors files come out 0600; make them like the other fixtures
        os.chmod(os.path.join(d, fn), 0o644)
    return d


def cmd_generate(args):
    outdir = args.outdir
    os.makedirs(outdir, exist_ok=True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    for variant in ("mha", "gqa"):
        generate_variant(outdir, variant)
    with open(os.path.join(outdir, "VERSIONS.txt"), "w") as f:
        f.write(f"transformers {transformers.__version__}\ntorch {torch.__version__}\n")
        f.write("written by tests/reference/make_fixtures.py generate\n")
    sanity(outdir)


def sanity(outdir):
    # mha: float32 reload matches stored logits.
    for variant in ("mha", "gqa"):
        d = os.path.join(outdir, variant)
        ref = load_file(os.path.join(d, "reference.safetensors"))
        out = forward_logits(load_model(d, torch.float32), ref["input_ids"])
        e = rel_err(out, ref["logits"])
        print(f"[sanity] {variant} float32 reload logits rel err {e:.3e}")
        assert e < 1e-5, e
    # gqa: config in the classic (rope_theta + rope_scaling) form loads to the same model.
    d = os.path.join(outdir, "gqa")
    ref = load_file(os.path.join(d, "reference.safetensors"))
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(os.path.join(d, "model.safetensors"), tmp)
        shutil.copy(os.path.join(d, "config.classic.json"), os.path.join(tmp, "config.json"))
        m = load_model(tmp, torch.float32)
        print(f"[sanity] gqa classic config parsed as rope_parameters={m.config.rope_parameters}")
        e = rel_err(forward_logits(m, ref["input_ids"]), ref["logits"])
        print(f"[sanity] gqa classic-config reload logits rel err {e:.3e}")
        assert e < 1e-5, e


def cmd_check_checkpoint(args):
    ref = load_file(args.reference)
    input_ids, want = ref["input_ids"], ref["logits"]
    ok = True
    for dtype in (torch.float32, torch.float64):
        got = forward_logits(load_model(args.model_dir, dtype), input_ids)
        if got.shape != want.shape:
            print(f"{dtype}: logits shape {tuple(got.shape)} != reference {tuple(want.shape)}")
            ok = False
            continue
        e = rel_err(got, want)
        bad = not (e <= args.tol)
        print(f"{dtype}: logits rel err {e:.3e} (tol {args.tol:g}){'  FAIL' if bad else ''}")
        ok = ok and not bad
    sys.exit(0 if ok else 1)


def cmd_attention(args):
    Bq, H, Hkv, Tq, D = 1, 4, 2, 48, 16
    gen = torch.Generator().manual_seed(4242)
    f64 = torch.float64
    # Draw in float32 so the stored inputs are exactly the float64 inputs used.
    q = torch.randn(Bq, H, Tq, D, generator=gen).to(f64)
    k = torch.randn(Bq, Hkv, Tq, D, generator=gen).to(f64)
    v = torch.randn(Bq, Hkv, Tq, D, generator=gen).to(f64)
    dout = torch.randn(Bq, H, Tq, D, generator=gen).to(f64)
    q.requires_grad_(True)
    k.requires_grad_(True)
    v.requires_grad_(True)
    scale = 1.0 / math.sqrt(D)
    group = H // Hkv
    ke = k.repeat_interleave(group, dim=1)  # head h -> kv head h // group
    ve = v.repeat_interleave(group, dim=1)
    s = torch.matmul(q, ke.transpose(-1, -2)) * scale
    mask = torch.ones(Tq, Tq, dtype=torch.bool).triu(1)
    s = s.masked_fill(mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse.unsqueeze(-1))
    out = torch.matmul(p, ve)
    (out * dout).sum().backward()
    t = {
        "q": q.detach(), "k": k.detach(), "v": v.detach(), "dout": dout,
        "out": out.detach(), "lse": lse.detach(),
        "dq": q.grad, "dk": k.grad, "dv": v.grad,
    }
    t = {n: x.to(torch.float32).contiguous() for n, x in t.items()}
    os.makedirs(args.dir, exist_ok=True)
    path = os.path.join(args.dir, "attention.safetensors")
    save_file(t, path, metadata=one_key_metadata({"causal": True, "scale": scale,
                                                  "gqa": "head h uses kv head h // (H/Hkv)",
                                                  "lse": "natural log", "computed_in": "float64"}))
    os.chmod(path, 0o644)
    for n, x in t.items():
        print(f"{n:5s} {tuple(x.shape)} {x.dtype}")
    print(f"wrote {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("outdir", nargs="?", default=DEFAULT_OUT)
    g.set_defaults(fn=cmd_generate)
    c = sub.add_parser("check-checkpoint")
    c.add_argument("model_dir")
    c.add_argument("reference")
    c.add_argument("--tol", type=float, default=1e-4)
    c.set_defaults(fn=cmd_check_checkpoint)
    a = sub.add_parser("attention")
    a.add_argument("dir", nargs="?", default=DEFAULT_OUT)
    a.set_defaults(fn=cmd_attention)
    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
