#!/usr/bin/env bash
# One GPU, the work never run on a GPU before (2026-12-07, third session), oldest first:
# 1. scripts/gpu_docs.sh's document steps: the document tests on CUDA (general document kernels incl.
#    Mistral's sliding window against float64, the causal pieces against those kernels, the model
#    against the transformers fixtures), then bench attn at 64K causal beside documents of ~8K / ~2K.
# 2. The model families on CUDA: Qwen2/Qwen3 against transformers on 1-4 in-process ranks, Mistral's
#    window on ranks against one rank.
# 3. bench attn under Mistral's sliding window (4096) beside causal: the Hopper kernels' window
#    (first GPU run) against the work ratio; documents with head dim 64.
# Step limits sum to 480 s. lib/ is carried as built here (DISTFLASH_BUILD_CUDA=1 deno task build).
source "$(dirname "$0")/gpu_lib.sh"
SHOW='passed|FAILED|rror|distflash|attention:|speedup|single|documents|TF/s'
SHOW_LINES=14
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/all.log"
step info 15 deno run -A cli/main.ts info
export DISTFLASH_TEST_BACKEND=cuda
step test_docs_kernels 70 deno test -A tests/attention_docs.test.ts tests/documents.test.ts tests/document_attention.test.ts
step test_docs_model 50 deno test -A tests/documents_model.test.ts
step test_families 120 deno test -A tests/families.test.ts tests/families_ranks.test.ts tests/mistral_window.test.ts
for len in 8192 2048; do
  step "bench_docs_$len" 60 deno run -A cli/main.ts bench attn --seq 65536 --heads 32 --head-dim 128 \
    --device cuda --attention-mask document --doc-length "$len" --reps 3 --warmup 1 --no-baseline \
    --output-dir "/tmp/bench_docs_$len"
done
step bench_window 60 deno run -A cli/main.ts bench attn --seq 32768,65536 --heads 32 --head-dim 128 \
  --device cuda --sliding-window 4096 --reps 3 --warmup 1 --no-baseline --output-dir /tmp/bench_window
step bench_docs_hd64 45 deno run -A cli/main.ts bench attn --seq 65536 --heads 32 --head-dim 64 \
  --device cuda --attention-mask document --doc-length 4096 --reps 3 --warmup 1 --no-baseline \
  --output-dir /tmp/bench_docs_hd64
summary
