#!/usr/bin/env bash
# The 2-GPU call: NCCL collectives, DistAttn error vs P, P=2 vs P=1 training, bench attn beside
# PyTorch context parallel, bench train. Logs under $OUT; a short table last. Step limits sum to
# 1380 s (ONLY_FIX=1 skips four steps: 780 s): more than one 10-minute call if every step ran to its
# limit.
source "$(dirname "$0")/gpu_lib.sh"
SHOW_LINES=12
nvidia-smi topo -m > "$OUT/topo.txt" 2>&1
if [ "${ONLY_FIX:-0}" != 1 ]; then
step nccl_comm 120 env DISTFLASH_TEST_BACKEND=cuda deno test -A tests/dist_comm.test.ts
step distattn_err 120 deno run -A scripts/gpu_dist_check.ts --nproc 2 --seq 4096
fi
T="train --model debug-small --data-path examples/corpus/tiny.jsonl --max-steps 30 --per-device-train-batch-size 4 --model-max-length 512 --learning-rate 2e-3 --warmup-steps 3 --logging-steps 1 --bf16 --device cuda --save-strategy no"
step train_p1 120 deno run -A cli/main.ts $T --output-dir /tmp/p1
[ "${ONLY_FIX:-0}" != 1 ] && step train_p2 120 deno run -A cli/main.ts $T --output-dir /tmp/p2 --nproc-per-node 2
step train_p2fs 120 deno run -A cli/main.ts $T --output-dir /tmp/p2fs --nproc-per-node 2 --fsdp full_shard
cp /tmp/p1/metrics.jsonl "$OUT/p1_metrics.jsonl"; cp /tmp/p2/metrics.jsonl "$OUT/p2_metrics.jsonl" 2>/dev/null
python3 - <<'PY' | tee "$OUT/p1_vs_p2.txt"
import json
a=[json.loads(l) for l in open('/tmp/p1/metrics.jsonl')]
import os
for name in [n for n in ['/tmp/p2', '/tmp/p2fs'] if os.path.exists(n + '/metrics.jsonl')]:
    b=[json.loads(l) for l in open(name + '/metrics.jsonl')]
    d=max(abs(x['loss']-y['loss'])/x['loss'] for x,y in zip(a,b))
    print(f"P=1 vs {name} debug-small bf16, {len(a)} steps: loss {a[0]['loss']:.4f}->{a[-1]['loss']:.4f} vs {b[0]['loss']:.4f}->{b[-1]['loss']:.4f}; max rel loss diff {d:.2e}")
PY
[ "${ONLY_FIX:-0}" != 1 ] && step bench_attn1 240 deno run -A cli/main.ts bench attn --seq ${SEQ1:-16384,32768} --device cuda
step bench_attn2 ${ATTN2_LIMIT:-300} env DISTFLASH_TRACE=1 deno run -A cli/main.ts bench attn --nproc-per-node 2 --seq ${SEQ2:-32768,65536} --device cuda
cp outputs/bench/logs/rank0.log "$OUT/bench_attn2_rank0.log" 2>/dev/null; cp outputs/bench/logs/rank1.log "$OUT/bench_attn2_rank1.log" 2>/dev/null
step bench_train 240 deno run -A cli/main.ts bench train --model tinyllama-1.1b --model-max-length ${TRAINSEQ:-16384} --nproc-per-node 2 --max-steps 3
summary; cat "$OUT/p1_vs_p2.txt"
