#!/usr/bin/env bash
# Two-GPU checks of the offloads and the long-sequence runs, one phase per device call (a call
# holds 10 minutes, and machines go back 30 s after a call):
# - checks (default): the CUDA tests of ops, model and planner, then debug-small (bf16, 30 steps)
#   at P = 1 against --offload-checkpoints, P = 2 --offload-optimizer, both, and 4 head groups:
#   the largest relative loss difference from P = 1 (about 1 minute).
# - compare128: Llama-2-7B at 128K tokens on the bundled corpus with and without
#   --offload-optimizer (both with --offload-checkpoints, the layer boundary and 16 head groups,
#   which the plan fits without the optimizer offload), 3 steps each: the offload's throughput
#   cost (target: within 15%) (about 5 minutes).
# - compare64: 64K, the layer boundary against 8 head groups at the default (attention) boundary
#   and against --offload-optimizer at the default boundary, 3 steps each (about 6 minutes): which
#   memory saving costs least speed.
# - long256: the model tests and debug-small P = 1 again, then Llama-2-7B at 256K tokens (three
#   copies of the corpus) with --offload-optimizer, the layer boundary and 16 head groups, 3 steps
#   (about 8.5 minutes); LONG256_EXTRA adds flags (e.g. --offload-checkpoints).
# The 7B runs use lr 1e-5 without warmup: at 1e-4 AdamW's first sign-like steps raise the loss of a
# randomly initialised 7B model (11.5 -> 12.5 -> 16.5 at 128K).
# If a loss differs, rerun that step with DISTFLASH_SERIALIZE_STREAMS=1: a difference that goes away
# is a missing stream dependency. Logs under $OUT/all.log; a short table last. Step limits: checks
# 570 s, compare64 600 s, compare128 560 s, long256 720 s.
source "$(dirname "$0")/gpu_lib.sh"
SHOW='memory|step [0-9]+/|rror|FAILED|passed'
SHOW_LINES=6
PHASE=${1:-checks}
T="train --model debug-small --data-path examples/corpus/tiny.jsonl --max-steps 30 --per-device-train-batch-size 4 --model-max-length 512 --learning-rate 2e-3 --warmup-steps 3 --logging-steps 1 --bf16 --device cuda --save-strategy no --save-final-model false"
# Llama-2-7B, 3 steps on 2 GPUs, full_shard; each phase adds its data, length and options.
T7="train --model llama-2-7b --bf16 --max-steps 3 --logging-steps 1 --save-strategy no --save-final-model false --nproc-per-node 2 --learning-rate 1e-5 --warmup-steps 0 --device cuda --fsdp full_shard"
if [ "$PHASE" = long256 ]; then
  # A quick bf16 check first (the backward's buffer sharing): the CUDA model tests and debug-small
  # P = 1, whose losses the checks phase also prints.
  step test_llama 120 env DISTFLASH_TEST_BACKEND=cuda deno test -A tests/llama.test.ts
  step p1 60 deno run -A cli/main.ts $T --output-dir /tmp/v_p1
  # The bundled corpus is 190K tokens: three copies give two windows of 256K + 1.
  mkdir -p /tmp/corpus3 && for i in 1 2 3; do cp examples/corpus/tiny.jsonl /tmp/corpus3/part$i.jsonl; done
  step long_256k 540 deno run -A cli/main.ts $T7 --data-path /tmp/corpus3 --model-max-length 262144 --offload-optimizer --checkpoint-boundary layer --attention-head-groups 16 ${LONG256_EXTRA:-} --output-dir /tmp/v_l256
  summary; exit 0
fi
if [ "$PHASE" = compare64 ]; then
  # 64K without offload: the layer boundary (backward recomputes attention: ~2 s a step by the
  # FLOP count) against the attention boundary made to fit by 8 head groups (strided copies: ~0.2 s
  # by the byte count). The planner names the layer boundary first; this decides the order.
  C="$T7 --data-path examples/corpus/tiny.jsonl --model-max-length 65536"
  step c64_layer 200 deno run -A cli/main.ts $C --checkpoint-boundary layer --output-dir /tmp/v_c64a
  step c64_groups8 200 deno run -A cli/main.ts $C --attention-head-groups 8 --output-dir /tmp/v_c64b
  # The third way to fit 64K: the optimizer in host memory, its update overlapped with the next
  # forward (1.5% at 128K), at the default boundary with room to spare.
  step c64_offopt 200 deno run -A cli/main.ts $C --offload-optimizer --output-dir /tmp/v_c64c
  summary; exit 0
fi
if [ "$PHASE" = compare128 ]; then
  C="$T7 --data-path examples/corpus/tiny.jsonl --model-max-length 131072 --offload-checkpoints --checkpoint-boundary layer --attention-head-groups 16"
  step c128_gpu_opt 280 deno run -A cli/main.ts $C --output-dir /tmp/v_c128a
  step c128_host_opt 280 deno run -A cli/main.ts $C --offload-optimizer --output-dir /tmp/v_c128b
  summary; exit 0
fi
step test_gpu 180 env DISTFLASH_TEST_BACKEND=cuda deno test -A tests/ops.test.ts tests/llama.test.ts tests/plan.test.ts
step p1 60 deno run -A cli/main.ts $T --output-dir /tmp/v_p1
step p1_offck 60 deno run -A cli/main.ts $T --output-dir /tmp/v_p1_offck --offload-checkpoints
step p2_offopt 90 deno run -A cli/main.ts $T --output-dir /tmp/v_p2_offopt --nproc-per-node 2 --offload-optimizer
step p2_both 90 deno run -A cli/main.ts $T --output-dir /tmp/v_p2_both --nproc-per-node 2 --offload-optimizer --offload-checkpoints
step p2_groups 90 deno run -A cli/main.ts $T --output-dir /tmp/v_p2_groups --nproc-per-node 2 --attention-head-groups 4
python3 - <<'PY' | tee -a "$OUT/all.log"
import json, os
def load(r):
    f = f"/tmp/{r}/metrics.jsonl"
    return [json.loads(l) for l in open(f)] if os.path.exists(f) else None
base = load("v_p1")
for r in ["v_p1", "v_p1_offck", "v_p2_offopt", "v_p2_both", "v_p2_groups"]:
    m = load(r)
    if m is None or base is None:
        print(r.ljust(12), "no metrics"); continue
    d = max(abs(a["loss"] - b["loss"]) / a["loss"] for a, b in zip(base, m))
    print(r.ljust(12), "final loss", f"{m[-1]['loss']:.4f}", "max rel loss diff vs p1", f"{d:.2e}")
PY
summary
