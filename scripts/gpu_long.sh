#!/usr/bin/env bash
# A 2-GPU call for the long-sequence targets (Llama-2-7B, full_shard, bf16, synthetic tokens, 3
# steps each): 64K without offload (--checkpoint-boundary layer: the plan's hint) beside the HF +
# FSDP2 + context-parallel baseline at 64K, then 64K with --offload-optimizer (pinned host memory),
# then a 1-GPU sanity run (debug-small, 200 steps). Logs under $OUT/all.log; a short table last.
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
  grep -v '^Download' "/tmp/logs/$name.log" | grep -E "memory|step [0-9]+/|tokens|MFU|rc=|rror" | tail -8
}
L=${LONG:-65536}
T7="train --model llama-2-7b --synthetic --bf16 --max-steps 3 --logging-steps 1 --save-strategy no --save-final-model false --nproc-per-node 2 --fsdp full_shard --learning-rate 1e-5 --device cuda"
step layer_64k 200 deno run -A cli/main.ts $T7 --model-max-length $L --checkpoint-boundary layer --output-dir /tmp/l64
step hf_64k 150 env NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 python3 -m torch.distributed.run --nproc-per-node=2 bench/hf_fsdp_cp_train.py --model=llama-2-7b --seq=$L --steps=3
step offload_64k 200 deno run -A cli/main.ts $T7 --model-max-length $L --offload-optimizer --output-dir /tmp/o64
step train200 90 deno run -A cli/main.ts train --model debug-small --data-path examples/corpus/tiny.jsonl --max-steps 200 --per-device-train-batch-size 8 --model-max-length 256 --learning-rate 2e-3 --warmup-steps 10 --lr-scheduler-type cosine --logging-steps 20 --bf16 --device cuda --save-strategy no --output-dir /tmp/train200
echo "== summary =="; printf '%s\n' "${results[@]}"
