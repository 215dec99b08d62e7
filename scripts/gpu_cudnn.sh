#!/usr/bin/env bash
# One GPU: the cuDNN attention backend (csrc/cuda/cudnn_attention.cu), which has NOT yet run on a GPU.
# Order: what cuDNN the loader finds (distflash info), the cuDNN tests against the fp32 kernels
# (tests/cudnn_gpu.test.ts: full blocks, the causal diagonal, diagonal bands, Tq != Tk, GQA, hd 64 and
# 128, queries that see nothing), the attention, DistAttn and zigzag tests (head groups included) with
# cuDNN chosen, then `bench attn` native vs cudnn (16K/32K/64K, 32 heads of 128) with PyTorch SDPA
# (flash and cuDNN) in the same call, then 30 steps of debug-medium (hd 64, bf16) with each kernel and
# their loss curves compared. Benchmarks and the training run only if the tests pass. At most 8 minutes (the step limits sum to 480 s).
# cuDNN comes from DISTFLASH_CUDNN_PATH, the loader path, or PyTorch's nvidia/cudnn/lib (set
# VIRTUAL_ENV or PYTHONPATH to its environment if python3 on PATH is not that one).
source "$(dirname "$0")/gpu_lib.sh"
SHOW='passed|FAILED|rror|cuDNN|attention:|distflash|sdpa|TFLOP|loss|worst'
SHOW_LINES=12
step info 20 deno run -A cli/main.ts info
export DISTFLASH_TEST_BACKEND=cuda
if step test_cudnn 100 deno test -A tests/cudnn_gpu.test.ts &&
  step test_dist 120 env DISTFLASH_TEST_ATTENTION_KERNEL=cudnn deno test -A tests/attention_gpu.test.ts tests/distattn.test.ts tests/zigzag.test.ts; then
  step bench_native 60 deno run -A cli/main.ts bench attn --seq 16384,32768,65536 --device cuda --attention-kernel native --no-baseline
  step bench_cudnn 90 deno run -A cli/main.ts bench attn --seq 16384,32768,65536 --device cuda --attention-kernel cudnn
  for k in native cudnn; do
    step "train_$k" 40 deno run -A cli/main.ts train --model debug-medium --synthetic --bf16 \
      --model-max-length 2048 --max-steps 30 --logging-steps 1 --save-strategy no --save-final-model false \
      --learning-rate 1e-3 --seed 7 --attention-kernel "$k" --output-dir "/tmp/cudnn_train_$k" --overwrite-output-dir
  done
  # Loss curves: the largest relative difference per step (bf16 noise is ~1e-4 at the start).
  step loss_compare 10 deno eval '
    const read = (k) => Deno.readTextFileSync(`/tmp/cudnn_train_${k}/metrics.jsonl`).trim().split("\n")
      .map((l) => JSON.parse(l)).filter((m) => m.loss !== undefined);
    const a = read("native"), b = read("cudnn");
    let worst = 0;
    for (let i = 0; i < Math.min(a.length, b.length); i++) {
      const r = Math.abs(a[i].loss - b[i].loss) / Math.abs(a[i].loss);
      worst = Math.max(worst, r);
      console.log(`step ${a[i].step} loss native ${a[i].loss.toFixed(5)} cudnn ${b[i].loss.toFixed(5)} rel ${r.toExponential(2)}`);
    }
    console.log(`loss curves: ${a.length} vs ${b.length} steps, worst relative difference ${worst.toExponential(2)}`);'
fi
summary
