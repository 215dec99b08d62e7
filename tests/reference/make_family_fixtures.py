#!/usr/bin/env python3
"""Reference fixtures for distflash's non-Llama model families (Qwen2 / Qwen2.5, Qwen3, Mistral), computed
with PyTorch + Hugging Face transformers, in the layout of make_fixtures.py's mha/ and gqa/.

Subcommands (run from the repository root):

  generate [OUTDIR]        (default tests/fixtures)
      Writes two tiny random models in Hugging Face layout, each with config.json (as transformers
      writes it), model.safetensors (float32, HF parameter names) and reference.safetensors
      (input_ids, labels, logits, loss, grad.<name> for every parameter; the same keys, batch and
      conventions as make_fixtures.py: B=2, T=32, labels aligned, -100 ignored at 3 positions):
        qwen2/  Qwen2ForCausalLM: vocab 128, hidden 32, intermediate 64, 2 layers, 4 heads of 8,
                2 KV heads, biases on q/k/v (random, not zero), tied embeddings, rope_theta 1e6.
        qwen3/  Qwen3ForCausalLM: vocab 128, hidden 32, intermediate 64, 2 layers, 4 heads of
                head_dim 16 (heads x head_dim = 64 != hidden 32), 2 KV heads, q_norm/k_norm,
                untied embeddings, rope_theta 1e6.
        qwen2-window/  Qwen2ForCausalLM as qwen2/ with use_sliding_window: layer 0 attends over the
                whole sequence, layer 1 (max_window_layers 1) under sliding_window 8.
        qwen3-window/  Qwen3ForCausalLM as qwen3/ with use_sliding_window and layer_types: layer 1
                under sliding_window 6.
        mistral/  MistralForCausalLM: the Llama shapes above with sliding_window 8 (transformers'
                sliding-window causal mask: a query at p sees keys p-7 .. p), untied embeddings,
                rope_theta 1e4.
      Everything is computed in float64 (eager attention) from the float32 weights as saved, then
      stored as float32. Norm weights are 1 + 0.1 N(0,1), biases and matrices 0.08 N(0,1).

  check-checkpoint MODEL_DIR REFERENCE_SAFETENSORS CLASS [--tol 1e-4]
      Loads MODEL_DIR with AutoModelForCausalLM in float32, checks the class name is CLASS (e.g.
      Qwen2ForCausalLM), runs the reference input_ids and compares logits (||out - ref|| / ||ref||).
      Exits 1 if the class differs or the error is over tol.

Setup:
    python3 -m venv .venv && .venv/bin/pip install torch transformers safetensors numpy
"""

import argparse
import os
import sys

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file
from transformers import (AutoModelForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                          Qwen3Config, Qwen3ForCausalLM)

# Shared with the Llama fixtures (same folder): writing reference.safetensors, the error measure.
from make_fixtures import rel_err, write_reference  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join(ROOT, "tests", "fixtures")

B, T = 2, 32
IGNORE = -100
WEIGHT_STD = 0.08

COMMON = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-6,
    max_position_embeddings=256,
    hidden_act="silu",
    rope_theta=1000000.0,
    use_sliding_window=False,
)

VARIANTS = {
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, dict(tie_word_embeddings=True), 2468),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM,
              dict(tie_word_embeddings=False, head_dim=16, attention_bias=False), 1357),
    # sliding_window 8: shorter than the sequence (32) and than a rank's slice on 2-3 ranks; every
    # query past position 7 loses keys to it.
    # Qwen2 with use_sliding_window: layer 0 full causal attention, layer 1 (from max_window_layers
    # on) under a window of 8.
    "qwen2-window": (Qwen2Config, Qwen2ForCausalLM,
                     dict(tie_word_embeddings=True, use_sliding_window=True, sliding_window=8,
                          max_window_layers=1), 8642),
    # Qwen3 with use_sliding_window, the window's layer as layer_types names it.
    "qwen3-window": (Qwen3Config, Qwen3ForCausalLM,
                     dict(tie_word_embeddings=False, head_dim=16, attention_bias=False,
                          use_sliding_window=True, sliding_window=6,
                          layer_types=["full_attention", "sliding_attention"]), 7531),
    "mistral": (MistralConfig, MistralForCausalLM,
                dict(tie_word_embeddings=False, sliding_window=8, rope_theta=10000.0), 9753),
}


def make_config(variant):
    cls, _, extra, _ = VARIANTS[variant]
    kw = dict(COMMON)
    kw.update(extra)
    if cls is MistralConfig:
        kw.pop("use_sliding_window")  # a Qwen2 option; Mistral's window is sliding_window alone
    theta = kw.pop("rope_theta")
    cfg = cls(**kw, rope_parameters={"rope_type": "default", "rope_theta": theta})
    return cfg


def init_weights(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float32))
            else:  # matrices and biases
                p.copy_(WEIGHT_STD * torch.randn(p.shape, generator=gen, dtype=torch.float32))


def make_batch(seed, vocab):
    gen = torch.Generator().manual_seed(seed + 1)
    input_ids = torch.randint(0, vocab, (B, T), generator=gen, dtype=torch.int64)
    labels = torch.full((B, T), IGNORE, dtype=torch.int64)
    labels[:, :-1] = input_ids[:, 1:]
    labels[0, 10] = IGNORE
    return input_ids, labels


def generate_variant(outdir, variant):
    _, model_cls, _, seed = VARIANTS[variant]
    cfg = make_config(variant)
    d = os.path.join(outdir, variant)
    os.makedirs(d, exist_ok=True)
    torch.manual_seed(seed)
    model = model_cls(cfg).to(torch.float32)
    init_weights(model, seed)
    model.save_pretrained(d)
    p = os.path.join(d, "generation_config.json")
    if os.path.exists(p):
        os.remove(p)

    m64 = model_cls.from_pretrained(d, dtype=torch.float64, attn_implementation="eager")
    m64.train()
    input_ids, labels = make_batch(seed, cfg.vocab_size)
    logits = m64(input_ids=input_ids, use_cache=False).logits
    V = logits.shape[-1]
    loss = F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), ignore_index=IGNORE)
    loss.backward()

    ref = write_reference(d, variant, m64, input_ids, labels, logits, loss)
    params = ref["params"]
    for fn in os.listdir(d):
        os.chmod(os.path.join(d, fn), 0o644)
    # float32 reload reproduces the float64 logits.
    m32 = model_cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        e = rel_err(m32(input_ids=input_ids, use_cache=False).logits, ref["logits"])
    print(f"[{variant}] loss={loss.item():.6f} params={len(params)} float32 reload rel err {e:.2e}")
    assert e < 1e-5, e


def cmd_generate(args):
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    for variant in VARIANTS:
        generate_variant(args.outdir, variant)


def cmd_check_checkpoint(args):
    ref = load_file(args.reference)
    m = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32,
                                             attn_implementation="eager").eval()
    name = type(m).__name__
    ok = name == args.cls
    with torch.no_grad():
        e = rel_err(m(input_ids=ref["input_ids"], use_cache=False).logits, ref["logits"])
    ok = ok and e <= args.tol
    print(f"class {name} (want {args.cls}), logits rel err {e:.3e} (tol {args.tol:g})"
          f"{'' if ok else '  FAIL'}")
    sys.exit(0 if ok else 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("outdir", nargs="?", default=DEFAULT_OUT)
    g.set_defaults(fn=cmd_generate)
    c = sub.add_parser("check-checkpoint")
    c.add_argument("model_dir")
    c.add_argument("reference")
    c.add_argument("cls")
    c.add_argument("--tol", type=float, default=1e-4)
    c.set_defaults(fn=cmd_check_checkpoint)
    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
