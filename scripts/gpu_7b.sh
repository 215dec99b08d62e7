#!/usr/bin/env bash
# A 2-GPU call for the 7B figures: the op tests (device random init against the CPU library),
# `bench train` for Llama-2-7B at 32K beside the HF + FSDP2 + context-parallel baseline, and a
# 64K step with the optimizer offloaded (the planner's figure against the measured memory).
# Logs under $OUT (one combined all.log); a short table last.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/logs
export NO_COLOR=1 DISTFLASH_BUILD_CUDA=0
results=()
step() {
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"/tmp/logs/$name.log" 2>&1
  local rc=$?
  results+=("$name rc=$rc $((SECONDS - start))s")
  { echo "===== $name (rc=$rc)"; grep -v '^Download' "/tmp/logs/$name.log"; } >>"$OUT/all.log"
  grep -v '^Download' "/tmp/logs/$name.log" | tail -12
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$OUT/all.log"
git log -1 --format=%H >>"$OUT/all.log" 2>/dev/null
step ops 90 env DISTFLASH_TEST_BACKEND=cuda deno test -A tests/ops.test.ts
step bench_7b ${T7B:-300} deno run -A cli/main.ts bench train --model llama-2-7b --model-max-length ${TRAINSEQ:-32768} --nproc-per-node 2 --max-steps 3
step offload_64k ${TOFF:-200} deno run -A cli/main.ts train --model llama-2-7b --synthetic --bf16 --model-max-length 65536 --max-steps 2 --logging-steps 1 --save-strategy no --nproc-per-node 2 --offload-optimizer --output-dir /tmp/off64 --device cuda
echo "== summary =="; printf '%s\n' "${results[@]}"
