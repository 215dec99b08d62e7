#!/usr/bin/env bash
# One GPU: the Hopper forwards (DISTFLASH_FLASH_FWD=4 and 5, csrc/cuda/flash_fwd_sm90.cu). First the
# attention tests with each (bf16 kernels against the fp32 kernel: offsets, ragged lengths, GQA), then
# the variant sweep (each variant checked against the fp32 kernel at S = 2048, then timed), then the
# main table with v5 (FWD=${FWD:-5}) beside PyTorch SDPA (flash, cuDNN) in the same call. About 5 minutes.
source "$(dirname "$0")/gpu_lib.sh"
SHOW='passed|FAILED|rror|sweep|distflash|sdpa'
SHOW_LINES=12
step test_wgmma 120 env DISTFLASH_TEST_BACKEND=cuda DISTFLASH_FLASH_FWD=4 deno test -A tests/attention_gpu.test.ts
step test_wgmma_overlap 120 env DISTFLASH_TEST_BACKEND=cuda DISTFLASH_FLASH_FWD=5 deno test -A tests/attention_gpu.test.ts
step sweep 200 deno run -A bench/attn_kernel.ts --sweep 16384,32768 --hd 128 --sizes 16384 --reps 5
step table 240 env DISTFLASH_FLASH_FWD=${FWD:-5} deno run -A bench/attn_kernel.ts --sizes 16384,32768,65536 --hd 128 --torch
summary
