"""PyTorch SDPA attention timings for bench/attn_kernel.ts: the flash (FlashAttention-2) and cuDNN
backends on the shapes distflash measures (batch 1, bf16, causal), inputs laid out [S, H, D] as
distflash keeps them (a transposed view for SDPA). Times with CUDA events, median of --reps after
--warmup. FLOPs: causal forward = 2*B*H*S^2*D, forward+backward = 3.5x that.

Prints one JSON object per line, prefixed "TORCH ", for the TypeScript side to merge."""
import argparse
import json
import statistics
import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
import torch.nn.functional as F


def time_ms(fn, warmup, reps, before=None):
    for _ in range(warmup):
        if before:
            before()
        fn()
    times = []
    for _ in range(reps):
        if before:
            before()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    # --seq, --head-dim and --kv-heads are the spellings `distflash bench attn` passes.
    ap.add_argument("--sizes", "--seq", dest="sizes", default="16384,32768,65536")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=0, help="key/value heads (GQA); 0: --heads")
    ap.add_argument("--hd", "--head-dim", dest="hd", default="128")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    dev = torch.device("cuda")
    print(f"TORCHINFO {json.dumps({'torch': torch.__version__, 'gpu': torch.cuda.get_device_name(0)})}",
          flush=True)
    backends = [("sdpa-flash", SDPBackend.FLASH_ATTENTION), ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION)]
    for hd_s in args.hd.split(","):
        hd = int(hd_s)
        for s_s in args.sizes.split(","):
            S, H = int(s_s), args.heads
            Hkv = args.kv_heads or H
            g = torch.Generator(device=dev).manual_seed(S + hd)
            mk = lambda h: torch.randn(1, S, h, hd, device=dev, dtype=torch.bfloat16, generator=g)
            q, k, v, dout = mk(H), mk(Hkv), mk(Hkv), mk(H)
            gqa = {"enable_gqa": True} if Hkv != H else {}
            qt, kt, vt, dot = (x.transpose(1, 2) for x in (q, k, v, dout))
            flops = 2.0 * H * S * S * hd
            for name, backend in backends:
                rec = {"backend": name, "S": S, "D": hd, "H": H, "Hkv": Hkv}
                try:
                    with sdpa_kernel([backend]):
                        qg, kg, vg = (x.detach().requires_grad_(True) for x in (qt, kt, vt))

                        def fwd():
                            F.scaled_dot_product_attention(qg, kg, vg, is_causal=True, **gqa)

                        def fwdbwd():
                            out = F.scaled_dot_product_attention(qg, kg, vg, is_causal=True, **gqa)
                            out.backward(dot)

                        def clear():
                            qg.grad = kg.grad = vg.grad = None

                        rec["fwd_ms"] = time_ms(fwd, args.warmup, args.reps)
                        rec["fwdbwd_ms"] = time_ms(fwdbwd, args.warmup, args.reps, clear)
                        rec["fwd_tflops"] = flops / rec["fwd_ms"] / 1e9
                        rec["fwdbwd_tflops"] = 3.5 * flops / rec["fwdbwd_ms"] / 1e9
                except Exception as e:  # a backend missing for this shape: report, go on
                    rec["error"] = str(e).split("\n")[0][:200]
                print("TORCH " + json.dumps(rec), flush=True)
                torch.cuda.empty_cache()
            del q, k, v, dout, qt, kt, vt, dot
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
