#!/usr/bin/env bash
# One GPU: document masking (--attention-mask document) on CUDA, NOT yet run on a GPU. Order: build,
# the document tests on the CUDA backend (the masked kernels against float64, the model against the
# transformers fixtures on 1-4 in-process ranks, training through the offloads, the layer boundary,
# bf16 and evaluation), then `bench attn` at 64K (32 heads of 128, bf16) causal beside documents of
# ~8192 tokens (random lengths): the measured speedup against the attention work ratio (visible
# pairs). The bench runs only if the tests pass. Step limits sum to 420 s (under the 10-minute call).
# Note: on CUDA the document rows run the general kernels (the bf16 flash kernels do not mask by
# document yet), so the speedup compares two different kernels; the work ratio is what skipping
# alone would give.
# The build, as in scripts/gpu_one_long.sh, refreshes the CPU library; the CUDA one is built as for
# the other gpu_*.sh scripts.
source "$(dirname "$0")/gpu_lib.sh"
SHOW='passed|FAILED|rror|distflash|attention:|speedup|single|documents'
SHOW_LINES=12
step build 60 deno task build
step info 20 deno run -A cli/main.ts info
export DISTFLASH_TEST_BACKEND=cuda
if step test_docs_kernels 60 deno test -A tests/attention_docs.test.ts tests/documents.test.ts &&
  step test_docs_model 120 deno test -A tests/documents_model.test.ts tests/documents_train.test.ts; then
  step bench_docs 160 deno run -A cli/main.ts bench attn --seq 65536 --heads 32 --head-dim 128 \
    --device cuda --attention-mask document --doc-length 8192 --reps 5 --warmup 2 --no-baseline \
    --output-dir "$OUT/bench"
fi
summary
