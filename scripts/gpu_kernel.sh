#!/usr/bin/env bash
# One GPU: the Hopper attention kernels (csrc/cuda/flash_fwd_sm90.cu: DISTFLASH_FLASH_FWD=4, and 5
# with intra-warpgroup overlap; flash_bwd_sm90.cu: DISTFLASH_FLASH_BWD=4). First the attention tests
# with each alone (bf16 kernels against the fp32 kernel: offsets, ragged lengths, GQA; a failure
# names out/lse or dq/dk/dv), then the variant sweep (each variant checked against the fp32 kernel at
# S = 2048, then timed), then the main table with FWD (default 5) and BWD (default 4) beside PyTorch
# SDPA (flash, cuDNN) in the same call. About 5 minutes.
source "$(dirname "$0")/gpu_lib.sh"
SHOW='passed|FAILED|rror|sweep|distflash|sdpa'
SHOW_LINES=12
T="env DISTFLASH_TEST_BACKEND=cuda deno test -A tests/attention_gpu.test.ts"
step test_fwd4 120 env DISTFLASH_FLASH_FWD=4 $T
step test_fwd5 120 env DISTFLASH_FLASH_FWD=5 $T
step test_bwd4 120 env DISTFLASH_FLASH_BWD=4 $T
step sweep 200 deno run -A bench/attn_kernel.ts --sweep 16384,32768 --hd 128 --sizes 16384 --reps 5
step table 240 env DISTFLASH_FLASH_FWD=${FWD:-5} DISTFLASH_FLASH_BWD=${BWD:-4} deno run -A bench/attn_kernel.ts --sizes 16384,32768,65536 --hd 128 --torch
summary
