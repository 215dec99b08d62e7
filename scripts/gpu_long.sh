#!/usr/bin/env bash
# A 2-GPU call for the long-sequence targets (Llama-2-7B, full_shard, bf16, synthetic tokens, 3
# steps each): 64K without offload (--checkpoint-boundary layer: the plan's hint) beside the HF +
# FSDP2 + context-parallel baseline at 64K, then 64K with --offload-optimizer (pinned host memory),
# then a 1-GPU sanity run (debug-small, 200 steps). Logs under $OUT/all.log; a short table last.
# Step limits sum to 640 s: slightly more than one 10-minute call if every step ran to its limit.
source "$(dirname "$0")/gpu_lib.sh"
SHOW='memory|step [0-9]+/|tokens|MFU|rc=|rror'
L=${LONG:-65536}
T7="train --model llama-2-7b --synthetic --bf16 --max-steps 3 --logging-steps 1 --save-strategy no --save-final-model false --nproc-per-node 2 --fsdp full_shard --learning-rate 1e-5 --device cuda"
step layer_64k 200 deno run -A cli/main.ts $T7 --model-max-length $L --checkpoint-boundary layer --output-dir /tmp/l64
deno run -A scripts/preset_config.ts llama-2-7b >/tmp/llama-2-7b.json
step hf_64k 150 env NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 python3 -m torch.distributed.run --nproc-per-node=2 bench/hf_fsdp_cp_train.py --config-json=/tmp/llama-2-7b.json --name=llama-2-7b --seq=$L --steps=3
step offload_64k 200 deno run -A cli/main.ts $T7 --model-max-length $L --offload-optimizer --output-dir /tmp/o64
step train200 90 deno run -A cli/main.ts train --model debug-small --data-path examples/corpus/tiny.jsonl --max-steps 200 --per-device-train-batch-size 8 --model-max-length 256 --learning-rate 2e-3 --warmup-steps 10 --lr-scheduler-type cosine --logging-steps 20 --bf16 --device cuda --save-strategy no --output-dir /tmp/train200
summary
