#!/usr/bin/env bash
# One GPU: document masking (--attention-mask document) on CUDA through the causal kernels
# (src/model/document_attention.ts splits a document-masked block pair into one causal piece per
# document; the pieces run the native bf16 tensor-core kernels). Order: the document tests on the CUDA backend (the general document kernels against float64, the pieces
# against those kernels, the model against the transformers fixtures on 1-4 in-process ranks), then
# `bench attn` at 64K (32 heads of 128, bf16) causal beside documents of ~8192 and ~2048 tokens
# (random lengths): the measured speedup against the attention work ratio (visible pairs). The
# bench runs only if the tests pass. Step limits sum to 195 s. lib/ is carried as built here (DISTFLASH_BUILD_CUDA=1 deno task build).
source "$(dirname "$0")/gpu_lib.sh"
SHOW='passed|FAILED|rror|distflash|attention:|speedup|single|documents'
SHOW_LINES=12
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$OUT/all.log"
step info 15 deno run -A cli/main.ts info
export DISTFLASH_TEST_BACKEND=cuda
if step test_docs_kernels 50 deno test -A tests/attention_docs.test.ts tests/documents.test.ts tests/document_attention.test.ts &&
  step test_docs_model 40 deno test -A tests/documents_model.test.ts; then
  for len in 8192 2048; do
    step "bench_docs_$len" 45 deno run -A cli/main.ts bench attn --seq 65536 --heads 32 --head-dim 128 \
      --device cuda --attention-mask document --doc-length "$len" --reps 3 --warmup 1 --no-baseline \
      --output-dir "/tmp/bench_docs_$len"
  done
fi
summary
