#!/usr/bin/env python3
"""Document-masking reference: the tiny Llamas of tests/fixtures run by Hugging Face transformers on
each packed document ALONE (its own forward, positions from 0), in float64.

    .venv/bin/python tests/reference/make_document_fixtures.py [OUTDIR]   (default tests/fixtures/documents)

Writes OUTDIR/{mha,gqa}.safetensors for the models tests/fixtures/{mha,gqa}/ (weights as saved there):
    input_ids  int64 [B,T]   B = 2 packed windows of T = 24 tokens; a document begins at every BOS
                             (bos_token_id of the config) and at position 0 of each window
    next_ids   int64 [B,T]   next_ids[b,t] = the token after position t (the window's T+1 tokens),
                             the raw next-token labels before document masking
    labels     int64 [B,T]   the labels the reference trains on: next_ids, -100 where the target is a
                             BOS (the prediction of a document's first token from the previous one)
    logits     f32 [B,T,V]   each document's logits from its own forward, placed at its positions
    loss       f32 [1]       sum over documents of the cross-entropy sums / number of labels >= 0
                             (the mean over the in-document predictions of the whole batch)
    grad.<name> f32          d loss / d parameter (tied embeddings: model.embed_tokens.weight only)

Window 0 packs one-token documents (at 0, 1 and 2: the first cut by the window edge, not a BOS),
a document crossing every chunk and rank boundary the tests use (5..16), short ones and a last
document whose next token (outside the window) is a BOS, so its last label is ignored too. Window 1
is one document (BOS at 0, no other): document masking must equal plain causal attention there.
Deterministic: running it again reproduces the same bytes.
"""

import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import LlamaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
T = 24
IGNORE = -100
# Document starts of window 0 (position 0 is a start without a BOS: a cut document) and the
# position after the window that holds a BOS (T: the next window would begin a document).
WINDOW0_BOS = [1, 2, 5, 17, 20]


def windows(bos, vocab, seed):
    gen = torch.Generator().manual_seed(seed)
    # Ordinary tokens avoid the special ids 0..2 (so a BOS appears only where placed).
    raw = torch.randint(3, vocab, (2, T + 1), generator=gen, dtype=torch.int64)
    for p in WINDOW0_BOS + [T]:
        raw[0, p] = bos
    raw[1, 0] = bos
    return raw[:, :T].clone(), raw[:, 1:].clone()


def doc_starts(ids, bos):
    return [0] + [p for p in range(1, len(ids)) if int(ids[p]) == bos]


def reference(variant):
    model_dir = os.path.join(FIXTURES, variant)
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    bos, vocab = cfg["bos_token_id"], cfg["vocab_size"]
    m = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float64, attn_implementation="eager")
    m.train(False)
    ids, next_ids = windows(bos, vocab, seed=4242 if variant == "mha" else 2424)
    labels = next_ids.clone()
    labels[labels == bos] = IGNORE
    count = int((labels >= 0).sum())
    logits = torch.zeros(2, T, vocab, dtype=torch.float64)
    loss_sum = torch.zeros((), dtype=torch.float64)
    for b in range(2):
        starts = doc_starts(ids[b], bos) + [T]
        for a, e in zip(starts[:-1], starts[1:]):
            out = m(input_ids=ids[b : b + 1, a:e]).logits[0]  # positions 0 .. e-a-1
            logits[b, a:e] = out.detach()
            loss_sum = loss_sum + F.cross_entropy(out, labels[b, a:e], ignore_index=IGNORE, reduction="sum")
    loss = loss_sum / count
    loss.backward()
    tensors = {
        "input_ids": ids.contiguous(),
        "next_ids": next_ids.contiguous(),
        "labels": labels.contiguous(),
        "logits": logits.float().contiguous(),
        "loss": loss.detach().float().reshape(1),
    }
    for name, p in m.named_parameters():
        tensors[f"grad.{name}"] = p.grad.float().contiguous()
    return tensors


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(FIXTURES, "documents")
    os.makedirs(out_dir, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    for variant in ("mha", "gqa"):
        path = os.path.join(out_dir, f"{variant}.safetensors")
        save_file(reference(variant), path, metadata={"computed_in": "float64 eager, per document"})
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
