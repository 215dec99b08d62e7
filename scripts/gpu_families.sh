#!/usr/bin/env bash
# One GPU: the new families' training speed beside the same model in HF transformers + FSDP2 + CP
# (bench/hf_fsdp_cp_train.py builds it from the config.json bench train writes): Qwen3-0.6B (head
# dim 128, q/k norms, tied embeddings) and Qwen2.5-0.5B (head dim 64, q/k/v biases) at 32K tokens.
# Step limits sum to 420 s. lib/ is carried as built here (DISTFLASH_BUILD_CUDA=1 deno task build).
source "$(dirname "$0")/gpu_lib.sh"
SHOW='bench train:|HF transformers|baseline|rror|memory'
SHOW_LINES=6
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/all.log"
for m in qwen3-0.6b qwen2.5-0.5b; do
  step "train_$m" 210 deno run -A cli/main.ts bench train --model "$m" --model-max-length 32768 \
    --max-steps 4 --output-dir "/tmp/bench_train_$m"
done
summary
