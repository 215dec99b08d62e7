"""Baseline for `distflash bench attn --nproc-per-node N`: PyTorch's context parallel (ring
attention over SDPA, its load-balanced sharding) on the same GPUs, forward+backward TFLOP/s per GPU
under the same FLOP convention (causal forward = 2*B*H*S^2*D, backward = 2.5x forward).

Run: python3 -m torch.distributed.run --nproc-per-node=2 bench/torch_cp_attn.py --seq=32768,65536
"""
import argparse
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.experimental import context_parallel


def ints(text):
    return [int(x) for x in text.split(",")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq", type=ints, default=[32768, 65536])
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=None)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    dist.init_process_group("nccl")
    world, rank = dist.get_world_size(), dist.get_rank()
    mesh = init_device_mesh("cuda", (world,))
    H, D = args.heads, args.head_dim
    rows = []
    for S in args.seq:
        torch.manual_seed(0)
        shape = (1, H, S, D)
        # GQA is expanded here (PyTorch's CP path needs equal heads), which favours the baseline.
        q, k, v, dout = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        with context_parallel(mesh, buffers=[q, k, v, dout], buffer_seq_dims=[2, 2, 2, 2]):
            ql, kl, vl = (t.detach().requires_grad_() for t in (q, k, v))

            def fwd():
                return F.scaled_dot_product_attention(ql, kl, vl, is_causal=True)

            def timeit(fn):
                times = []
                for i in range(args.warmup + args.reps):
                    dist.barrier()
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    fn()
                    end.record()
                    torch.cuda.synchronize()
                    if i >= args.warmup:
                        times.append(start.elapsed_time(end))
                times.sort()
                return times[len(times) // 2]

            fwd_ms = timeit(lambda: fwd())
            fwd_bwd_ms = timeit(lambda: fwd().backward(dout))
        flops = 2 * H * S * S * D
        rows.append((S, world, fwd_ms, fwd_bwd_ms, flops / world / fwd_ms / 1e9, 3.5 * flops / world / fwd_bwd_ms / 1e9))
    if rank == 0:
        print(f"torch {torch.__version__} context parallel, {torch.cuda.get_device_name()}, bf16, causal, {H} heads of {D}:")
        print("seq      ranks variant      fwd ms   fwd+bwd ms  fwd TFLOP/s  fwd+bwd TFLOP/s/GPU")
        for S, P, f, fb, tf, tfb in rows:
            print(f"{S:<8} {P:<5} {'torch-cp':<12} {f:8.2f} {fb:12.2f} {tf:12.1f} {tfb:20.1f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
