#!/usr/bin/env bash
# One GPU call: info, the CUDA backend tests, a transformers check of a distflash checkpoint, and a
# 200-step training run. Logs under $OUT; a short table last. Run from the repository root on the
# GPU host after carrying lib/, node_modules/ and .gpu/ (see DEVELOPERS.md, "Running on GPUs").
# Step limits sum to 1000 s (460 s with SKIP_TRAIN=1): more than one 10-minute call if every step
# ran to its limit.
source "$(dirname "$0")/gpu_lib.sh"
SHOW_LINES=5
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>&1
step info 60 deno run -A cli/main.ts info
cat /tmp/logs/info.log
step test_gpu 400 env DISTFLASH_TEST_BACKEND=cuda deno test -A tests/ffi.test.ts tests/ops.test.ts tests/attention_gpu.test.ts tests/llama.test.ts tests/distattn.test.ts tests/zigzag.test.ts
grep -E "FAILED|passed|worst" /tmp/logs/test_gpu.log | head -40
if [ "${SKIP_TRAIN:-0}" != 1 ]; then
  step checkpoint 120 bash -c 'deno run -A scripts/save_fixture_checkpoint.ts /tmp/ckpt && python3 tests/reference/make_fixtures.py check-checkpoint /tmp/ckpt tests/fixtures/gqa/reference.safetensors'
  step trained_checkpoint 120 deno run -A scripts/check_trained_checkpoint.ts
  step train200 300 deno run -A cli/main.ts train --model debug-small --data-path examples/corpus/tiny.jsonl --max-steps 200 --per-device-train-batch-size 8 --model-max-length 256 --learning-rate 2e-3 --warmup-steps 10 --lr-scheduler-type cosine --logging-steps 20 --bf16 --device cuda --save-strategy no --output-dir /tmp/train200
  cp /tmp/train200/metrics.jsonl "$OUT/train200_metrics.jsonl" 2>/dev/null
fi
summary
