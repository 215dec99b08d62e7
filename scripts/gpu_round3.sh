#!/usr/bin/env bash
# One GPU, the work never run on a GPU before (2026-12-07, third session), most wanted first:
# 1. The document and window kernels on CUDA: the general document kernels (and Mistral's sliding
#    window) against float64, the causal pieces and the Hopper kernels' window against those.
# 2. bench attn at 64K, 32 heads of 128, bf16: causal beside documents of ~8K and ~2K (issue 23's
#    speedup against the work ratio), and beside a 4096-token sliding window (32K and 64K).
# 3. The families (Qwen2, Qwen3, Qwen2 with use_sliding_window, Mistral) against transformers on
#    1-4 in-process ranks.
# Step limits sum to 340 s (a session's GPU time was short). lib/ is carried as built here (DISTFLASH_BUILD_CUDA=1 deno task build).
source "$(dirname "$0")/gpu_lib.sh"
SHOW='passed|FAILED|rror|distflash|attention:|speedup|single|documents|TF/s'
SHOW_LINES=14
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/all.log"
export DISTFLASH_TEST_BACKEND=cuda
step test_docs_kernels 70 deno test -A tests/attention_docs.test.ts tests/documents.test.ts tests/document_attention.test.ts
for len in 8192 2048; do
  step "bench_docs_$len" 60 deno run -A cli/main.ts bench attn --seq 65536 --heads 32 --head-dim 128 \
    --device cuda --attention-mask document --doc-length "$len" --reps 3 --warmup 1 --no-baseline \
    --output-dir "/tmp/bench_docs_$len"
done
step bench_window 60 deno run -A cli/main.ts bench attn --seq 32768,65536 --heads 32 --head-dim 128 \
  --device cuda --sliding-window 4096 --reps 3 --warmup 1 --no-baseline --output-dir /tmp/bench_window
step test_families 90 deno test -A tests/families.test.ts tests/families_ranks.test.ts tests/mistral_window.test.ts
summary
