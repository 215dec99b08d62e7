#!/usr/bin/env bash
# A 2-GPU call for the 7B figures: the op tests (device random init against the CPU library), a
# short debug-model check that full_shard (prefetched gathers, overlapped reduce-scatters, with
# gradient accumulation) gives the one-GPU loss curve, `bench train` for Llama-2-7B at 32K beside
# the HF + FSDP2 + context-parallel baseline (contiguous DistAttn, then the zigzag ring), and with
# OFFLOAD=1 a 64K step with the optimizer offloaded (the planner's figure against the measurement).
# Logs under $OUT (one combined all.log); a short table last. Step limits sum to 750 s (950 s with
# OFFLOAD=1; T7B changes the two bench limits): more than one 10-minute call if every step ran to
# its limit.
source "$(dirname "$0")/gpu_lib.sh"
SHOW_LINES=12
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$OUT/all.log"
git log -1 --format=%H >>"$OUT/all.log" 2>/dev/null
step ops 90 env DISTFLASH_TEST_BACKEND=cuda deno test -A tests/ops.test.ts
T="train --model debug-small --data-path examples/corpus/tiny.jsonl --max-steps 30 --per-device-train-batch-size 2 --gradient-accumulation-steps 2 --model-max-length 512 --learning-rate 2e-3 --warmup-steps 3 --logging-steps 1 --bf16 --device cuda --save-strategy no --save-final-model false"
step p1 60 deno run -A cli/main.ts $T --output-dir /tmp/p1
step p2fs 60 deno run -A cli/main.ts $T --output-dir /tmp/p2fs --nproc-per-node 2 --fsdp full_shard
step p2fs_zz 60 deno run -A cli/main.ts $T --output-dir /tmp/p2fs_zz --nproc-per-node 2 --fsdp full_shard --distattn-layout zigzag
python3 - <<'PY' | tee -a "$OUT/all.log"
import json, os
runs = {r: [json.loads(l) for l in open(f"/tmp/{r}/metrics.jsonl")] for r in ["p1", "p2fs", "p2fs_zz"] if os.path.exists(f"/tmp/{r}/metrics.jsonl")}
for r, m in runs.items():
    d = max(abs(a["loss"] - b["loss"]) / a["loss"] for a, b in zip(runs["p1"], m)) if "p1" in runs else float("nan")
    print(r.ljust(8), "final loss", f"{m[-1]['loss']:.4f}", "max rel loss diff vs p1", f"{d:.2e}")
PY
step bench_7b ${T7B:-240} deno run -A cli/main.ts bench train --model llama-2-7b --model-max-length ${TRAINSEQ:-32768} --nproc-per-node 2 --max-steps 3
step bench_7b_zz ${T7B:-240} deno run -A cli/main.ts bench train --model llama-2-7b --model-max-length ${TRAINSEQ:-32768} --nproc-per-node 2 --max-steps 3 --distattn-layout zigzag --no-baseline
[ "${OFFLOAD:-0}" = 1 ] && step offload_64k ${TOFF:-200} deno run -A cli/main.ts train --model llama-2-7b --synthetic --bf16 --model-max-length 65536 --max-steps 2 --logging-steps 1 --save-strategy no --nproc-per-node 2 --offload-optimizer --output-dir /tmp/off64 --device cuda
summary
