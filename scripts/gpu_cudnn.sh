#!/usr/bin/env bash
# One GPU, call 1 of 2 for the cuDNN default (issue 22; call 2 is scripts/gpu_cudnn_train.sh, send
# it at once after this one returns). Order: what cuDNN the loader finds (distflash info), the cuDNN
# tests against the fp32 kernels (tests/cudnn_gpu.test.ts: full blocks, the causal diagonal,
# diagonal bands, Tq != Tk, GQA, hd 64 and 128, queries that see nothing), the attention, DistAttn
# and zigzag tests with cuDNN insisted on (head groups included) and with the native kernels (the
# Hopper wgmma kernels are their default on sm_90a since this commit), then `bench attn` with the
# DEFAULT kernel (auto) at 16K/32K/64K for head dims 128 and 64 beside PyTorch SDPA (flash and
# cuDNN) in the same call, the native kernels beside them, 30 steps of debug-medium (hd 64, bf16)
# native vs the default with the loss curves compared, and last the CUDA runs of the plan test
# (plan within 10% of a step's memory) and the single-document test (fp32 rounding on CUDA).
# Benchmarks and training run only if the tests pass. Step limits sum to 680 s (realistic ~350 s).
# cuDNN comes from DISTFLASH_CUDNN_PATH, the loader path, or PyTorch's nvidia/cudnn/lib (set
# VIRTUAL_ENV or PYTHONPATH to its environment if python3 on PATH is not that one).
source "$(dirname "$0")/gpu_lib.sh"
SHOW='passed|FAILED|rror|cuDNN|attention:|distflash|sdpa|TFLOP|loss curves|worst|in use'
SHOW_LINES=12
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$OUT/all.log"
git log -1 --format=%H >>"$OUT/all.log" 2>/dev/null
step info 20 deno run -A cli/main.ts info
export DISTFLASH_TEST_BACKEND=cuda
if step test_cudnn 60 deno test -A tests/cudnn_gpu.test.ts &&
  step test_dist 90 env DISTFLASH_TEST_ATTENTION_KERNEL=cudnn deno test -A tests/attention_gpu.test.ts tests/distattn.test.ts tests/zigzag.test.ts &&
  step test_native 90 env DISTFLASH_TEST_ATTENTION_KERNEL=native deno test -A tests/attention_gpu.test.ts tests/distattn.test.ts tests/zigzag.test.ts; then
  step bench_default 90 deno run -A cli/main.ts bench attn --seq 16384,32768,65536 --device cuda
  step bench_default_hd64 80 deno run -A cli/main.ts bench attn --seq 16384,32768,65536 --device cuda --head-dim 64 --output-dir outputs/bench-hd64
  step bench_native 50 deno run -A cli/main.ts bench attn --seq 16384,32768,65536 --device cuda --attention-kernel native --no-baseline --output-dir outputs/bench-native
  for k in native auto; do
    step "train_$k" 40 deno run -A cli/main.ts train --model debug-medium --synthetic --bf16 \
      --model-max-length 2048 --max-steps 30 --logging-steps 1 --save-strategy no --save-final-model false \
      --learning-rate 1e-3 --seed 7 --attention-kernel "$k" --output-dir "/tmp/cudnn_train_$k" --overwrite-output-dir
  done
  # Loss curves: the largest relative difference per step (bf16 noise is ~1e-4 at the start).
  step loss_compare 10 deno eval '
    const read = (k) => Deno.readTextFileSync(`/tmp/cudnn_train_${k}/metrics.jsonl`).trim().split("\n")
      .map((l) => JSON.parse(l)).filter((m) => m.loss !== undefined);
    const a = read("native"), b = read("auto");
    let worst = 0;
    for (let i = 0; i < Math.min(a.length, b.length); i++) {
      const r = Math.abs(a[i].loss - b[i].loss) / Math.abs(a[i].loss);
      worst = Math.max(worst, r);
      console.log(`step ${a[i].step} loss native ${a[i].loss.toFixed(5)} auto ${b[i].loss.toFixed(5)} rel ${r.toExponential(2)}`);
    }
    console.log(`loss curves: ${a.length} vs ${b.length} steps, worst relative difference ${worst.toExponential(2)}`);'
  step test_plan 70 deno test -A tests/plan.test.ts --filter "on a GPU"
  step test_docs 70 deno test -A tests/documents_model.test.ts --filter "single document"
fi
summary
