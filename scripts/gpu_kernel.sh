#!/usr/bin/env bash
# One GPU: the Hopper attention kernels (csrc/cuda/flash_fwd_sm90.cu: DISTFLASH_FLASH_FWD=4, and 5
# with intra-warpgroup overlap; flash_bwd_sm90.cu: DISTFLASH_FLASH_BWD=4). First the attention tests
# with each alone (bf16 kernels against the fp32 kernel: head dims 64 and 128, offsets, ragged
# lengths, GQA; a failure names out/lse or dq/dk/dv), then the variant sweep (each variant checked
# against the fp32 kernel at S = 2048, then timed), then the main table with FWD (default 5) and BWD
# (default 4) beside PyTorch SDPA (flash, cuDNN) in the same call. About 6 minutes (step limits:
# 840 s).
# Phase `dist` (first argument; two GPUs, once the kernels pass): with FWD and BWD set, the attention,
# DistAttn and zigzag tests on CUDA, then `bench attn` over 2 GPUs beside PyTorch context parallel
# (with each row's share of one GPU) and `bench train` for Llama-2-7B at 32K beside HF + FSDP2 + CP;
# the benchmarks run only if the tests pass. About 8 minutes (step limits: 660 s).
source "$(dirname "$0")/gpu_lib.sh"
SHOW='passed|FAILED|rror|sweep|distflash|sdpa|tokens/s|TFLOP|share'
SHOW_LINES=12
if [ "${1:-one}" = dist ]; then
  export DISTFLASH_FLASH_FWD=${FWD:-5} DISTFLASH_FLASH_BWD=${BWD:-4}
  if step tests 180 env DISTFLASH_TEST_BACKEND=cuda deno test -A tests/attention_gpu.test.ts tests/distattn.test.ts tests/zigzag.test.ts; then
    step bench_attn2 200 deno run -A cli/main.ts bench attn --nproc-per-node 2 --seq 32768,65536 --device cuda
    step bench_7b 280 deno run -A cli/main.ts bench train --model llama-2-7b --model-max-length 32768 --nproc-per-node 2 --max-steps 3
  fi
  summary
  exit 0
fi
T="env DISTFLASH_TEST_BACKEND=cuda deno test -A tests/attention_gpu.test.ts"
step test_fwd4 120 env DISTFLASH_FLASH_FWD=4 $T
step test_fwd5 120 env DISTFLASH_FLASH_FWD=5 $T
step test_bwd4 120 env DISTFLASH_FLASH_BWD=4 $T
step sweep 240 deno run -A bench/attn_kernel.ts --sweep 16384,32768 --hd 128,64 --sizes 16384 --hd64-sizes 16384 --reps 5
step table 240 env DISTFLASH_FLASH_FWD=${FWD:-5} DISTFLASH_FLASH_BWD=${BWD:-4} deno run -A bench/attn_kernel.ts --sizes 16384,32768,65536 --hd 128,64 --torch
summary
