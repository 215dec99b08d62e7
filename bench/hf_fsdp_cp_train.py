"""Baseline for `distflash bench train`: the same model in Hugging Face transformers (built from the
config.json bench train writes for it: Llama, Qwen2, Qwen3, ... by model_type) trained with PyTorch
FSDP2 (fully_shard per decoder layer, bf16 compute, fp32 master weights and reductions), context
parallelism over all ranks (ring attention over SDPA, PyTorch's load-balanced sharding) and
activation checkpointing, with AdamW. Prints tokens/s, model-FLOPs utilisation (6*N*T plus causal
attention fwd+bwd = 3.5 * 2*H*S^2*D per layer, over 989 TFLOP/s per GPU) and the peak memory.

Context parallel makes position ids non-monotonic, so transformers builds a mask and SDPA finds
no kernel; a plain causal attention is registered through AttentionInterface (and no mask through
AttentionMaskInterface), as the performance issue notes. So models with a sliding window are not
measured here (bench train skips the baseline for them).

Ran on 2 H100s (BENCHMARKS.md: 32K and 64K train, 128K runs out of memory at the optimizer step):
  python3 -m torch.distributed.run --nproc-per-node=2 bench/hf_fsdp_cp_train.py \
      --config-json outputs/bench-train/baseline_config.json --seq 32768
"""
import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor.experimental import context_parallel
import json

from transformers import AttentionInterface, AutoConfig, AutoModelForCausalLM

def causal_sdpa(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Plain causal SDPA; context parallel replaces it with ring attention. Returns [B, S, H, D]."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config-json", required=True, help="the model's config.json (bench train writes it)")
    ap.add_argument("--name", default=None, help="the model's name in the result line")
    ap.add_argument("--seq", type=int, default=32768)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    dist.init_process_group("nccl")
    world, rank = dist.get_world_size(), dist.get_rank()
    mesh = init_device_mesh("cuda", (world,))

    AttentionInterface.register("cp_causal", causal_sdpa)
    with open(args.config_json) as f:
        hf = json.load(f)
    hf.pop("architectures", None)
    hf["max_position_embeddings"] = max(args.seq, hf.get("max_position_embeddings") or 0)
    cfg = AutoConfig.for_model(hf.pop("model_type"), **hf)
    cfg._attn_implementation = "cp_causal"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)  # fp32 master weights
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    n_params = sum(p.numel() for p in model.parameters())
    H, L = cfg.num_attention_heads, cfg.num_hidden_layers
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    flops_per_token = 6 * n_params + 3.5 * 2 * H * args.seq * D * L
    times = []
    for step in range(args.steps):
        g = torch.Generator(device="cuda").manual_seed(step)
        ids = torch.randint(0, cfg.vocab_size, (1, args.seq + 1), device="cuda", generator=g)
        inputs, labels = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
        positions = torch.arange(args.seq, device="cuda").unsqueeze(0)
        torch.cuda.synchronize()
        start = time.perf_counter()
        with context_parallel(mesh, buffers=[inputs, labels, positions], buffer_seq_dims=[1, 1, 1]):
            logits = model(input_ids=inputs, position_ids=positions).logits
            loss = F.cross_entropy(logits.float().view(-1, cfg.vocab_size), labels.view(-1))
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        if rank == 0:
            print(f"step {step + 1}: loss {loss.item():.4f}, {times[-1]:.2f} s", flush=True)
    timed = times[1:] or times
    tokens_per_s = args.seq / (sum(timed) / len(timed))
    mfu = flops_per_token * tokens_per_s / (world * 989e12)
    peak = torch.cuda.max_memory_allocated() / 2**30
    if rank == 0:
        print(f"HF transformers + FSDP2 + context parallel: {args.name or cfg.model_type} "
              f"{type(model).__name__} ({n_params / 1e9:.2f}B), "
              f"{args.seq} tokens on {world} GPUs: {tokens_per_s:.0f} tokens/s, MFU {100 * mfu:.1f}%, "
              f"peak {peak:.1f} GiB per GPU")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
