#!/usr/bin/env python3
"""Reference optimizer steps for distflash's trainer, computed with PyTorch + Hugging Face transformers.

Run from the repository root:

    .venv/bin/python tests/reference/make_train_fixtures.py [OUTDIR]     (default tests/fixtures/train)

Writes OUTDIR/chat.jsonl (a few FastChat-style conversations) and OUTDIR/reference.safetensors, the
result of STEPS optimizer steps of tests/fixtures/mha on that data, computed in float64:

  input_ids   int32 [W, L]  the W = 2 training windows of L + 1 packed tokens (inputs: first L)
  labels      int32 [W, L]  their targets (last L); -100 where the token is not trained on
  loss        f64 [STEPS]   per step, mean cross-entropy over the step's labelled tokens (both windows)
  grad_norm   f64 [STEPS]   per step, global L2 norm of the gradient before clipping
  lr          f64 [STEPS]   per step, the learning rate of the update
  final.<name> f64          every parameter after the last step
  metadata "reference"      JSON of the settings (steps, warmup_steps, lr, weight_decay, betas, eps,
                            max_grad_norm, model_max_length, labelled_tokens, library versions)

What the reference does, written independently of distflash's code (the conventions are distflash's
documented ones; see src/data/chat.ts and src/train/trainer.ts):

- Tokens: the tokenizer tests/fixtures/tokenizer (the `tokenizers` library). A conversation renders
  as "ROLE: text" turns joined by "\\n" (roles USER / ASSISTANT / SYSTEM); each role prefix (with the
  "\\n" before it) and each turn text is encoded separately; only the assistant's texts are trained.
  Each conversation is BOS + its tokens + EOS; BOS is never trained, EOS is when the assistant spoke
  last. The stream is cut into windows of L + 1 tokens; the label of a position is the next token,
  or -100 when that token is not trained.
- One optimizer step = 2 micro-batches (one window each, gradient accumulation); every step sees
  both windows (the data holds exactly 2 windows, so the shuffle order does not matter). The loss is
  the sum of the token cross-entropies over both windows divided by the number of labelled tokens.
- torch.nn.utils.clip_grad_norm_ with a max norm below every step's gradient norm (clipping active;
  the script checks it), then torch.optim.AdamW with weight decay on the matrices and embeddings and
  none on the RMSNorm weights (chosen here by parameter name), and the learning rate from
  transformers.get_scheduler("cosine") with warmup (the first update uses lr 0).
"""

import json
import os
import sys

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import LlamaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "tests", "fixtures", "mha")
TOKENIZER = os.path.join(ROOT, "tests", "fixtures", "tokenizer", "tokenizer.json")

L = 64  # window length (--model-max-length): a multiple of 2P for zigzag at P = 2 and 4
STEPS = 5
WARMUP = 2
HYPER = dict(lr=2e-2, weight_decay=0.5, betas=(0.9, 0.999), eps=1e-6)
MAX_GRAD_NORM = 0.6
BOS, EOS = 1, 2
IGNORE = -100

CONVERSATIONS = [
    {"conversations": [
        {"from": "gpt", "value": "Hello!"},
        {"from": "human", "value": "Why is the sky blue?"},
    ]},
    {"conversations": [
        {"from": "human", "value": "What does the cat say?"},
        {"from": "gpt", "value": "The cat meows."},
        {"from": "human", "value": "And the dog?"},
        {"from": "gpt", "value": "It barks at the ball."},
    ]},
    {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Count to three."},
        {"role": "assistant", "content": "One, two, three."},
    ]},
]

ROLES = {"human": "USER", "user": "USER", "gpt": "ASSISTANT", "assistant": "ASSISTANT",
         "system": "SYSTEM"}


def conversation_stream(tok):
    """The packed token stream and, per token, whether it is a training target."""
    ids, trained = [], []
    for record in CONVERSATIONS:
        turns = record.get("conversations") or record.get("messages")
        ids.append(BOS)
        trained.append(False)
        last_role = None
        for i, turn in enumerate(turns):
            role = ROLES[turn.get("from", turn.get("role"))]
            text = turn.get("value", turn.get("content"))
            prefix = ("\n" if i > 0 else "") + role + ": "
            for piece, train in ((prefix, False), (text, role == "ASSISTANT")):
                piece_ids = tok.encode(piece, add_special_tokens=False).ids
                ids += piece_ids
                trained += [train] * len(piece_ids)
            last_role = role
        ids.append(EOS)
        trained.append(last_role == "ASSISTANT")
    return ids, trained


def windows(ids, trained):
    print(f"{len(ids)} tokens, {sum(trained)} trained")
    n = len(ids) // (L + 1)
    assert n == 2, f"the conversations pack into {n} windows of {L}+1 tokens, expected 2"
    inputs, labels = [], []
    for w in range(n):
        s = w * (L + 1)
        inputs.append(ids[s:s + L])
        labels.append([ids[s + 1 + t] if trained[s + 1 + t] else IGNORE for t in range(L)])
    return torch.tensor(inputs), torch.tensor(labels)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "fixtures", "train")
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    tok = Tokenizer.from_file(TOKENIZER)
    inputs, labels = windows(*conversation_stream(tok))

    model = LlamaForCausalLM.from_pretrained(MODEL, attn_implementation="eager").to(torch.float64)
    model.train()
    decay = [p for n, p in model.named_parameters() if "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if "norm" in n]
    assert len(no_decay) == 2 * model.config.num_hidden_layers + 1
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": HYPER["weight_decay"]},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=HYPER["lr"], betas=HYPER["betas"], eps=HYPER["eps"], foreach=False)
    sched = transformers.get_scheduler("cosine", opt, num_warmup_steps=WARMUP,
                                       num_training_steps=STEPS)
    labelled = int((labels != IGNORE).sum())
    losses, norms, lrs = [], [], []
    for _ in range(STEPS):
        opt.zero_grad()
        loss_sum = 0.0
        for w in range(inputs.shape[0]):  # gradient accumulation: one window per micro-batch
            logits = model(input_ids=inputs[w:w + 1]).logits[0]
            s = F.cross_entropy(logits, labels[w], ignore_index=IGNORE, reduction="sum")
            (s / labelled).backward()
            loss_sum += s.item()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM).item()
        assert norm > MAX_GRAD_NORM * 1.2, f"clipping must be active: norm {norm}"
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
        losses.append(loss_sum / labelled)
        norms.append(norm)
    assert lrs[0] == 0.0

    with open(os.path.join(out, "chat.jsonl"), "w") as f:
        for record in CONVERSATIONS:
            f.write(json.dumps(record) + "\n")
    ref = {
        "input_ids": inputs.to(torch.int32).contiguous(),
        "labels": labels.to(torch.int32).contiguous(),
        "loss": torch.tensor(losses, dtype=torch.float64),
        "grad_norm": torch.tensor(norms, dtype=torch.float64),
        "lr": torch.tensor(lrs, dtype=torch.float64),
    }
    for n, p in model.named_parameters():
        ref["final." + n] = p.detach().clone().contiguous()
    # One metadata key: safetensors writes the map in hash order, which would vary between runs.
    settings = {"steps": STEPS, "warmup_steps": WARMUP, "max_grad_norm": MAX_GRAD_NORM,
                "model_max_length": L, "labelled_tokens": labelled, **HYPER,
                "torch": torch.__version__, "transformers": transformers.__version__}
    meta = {"reference": json.dumps(settings, sort_keys=True)}
    save_file(ref, os.path.join(out, "reference.safetensors"), metadata=meta)
    print(f"{out}: {inputs.shape[0]} windows, {labelled} labelled tokens; losses {losses}; "
          f"grad norms {norms}; lrs {lrs}")


if __name__ == "__main__":
    main()
