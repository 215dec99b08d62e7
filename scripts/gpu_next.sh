#!/usr/bin/env bash
# The next 2-GPU call, prepared for the open problems of the DistAttn issue (see its notes):
# 1. full_shard divergence: per-unit gradient norms (DISTFLASH_DEBUG_GRADS=1) of P=2 full_shard
#    against P=2 no_shard and P=1, bf16, 30 steps;
# 2. bench attn over 2 GPUs (the store-barrier deadlock fixed) beside PyTorch context parallel;
# 3. the NCCL communicator tests; 4. the CUDA test suite; 5. a Llama-2-7B step, full_shard.
# Phases (first argument): diverge (1 and 4), bench (2, 3, 5), or all. Logs under $OUT; a short
# table last. Step limits: diverge 690 s, bench 500 s (all: 1190 s, more than one 10-minute call).
source "$(dirname "$0")/gpu_lib.sh"
PHASE=${1:-all}
T="train --model debug-small --data-path examples/corpus/tiny.jsonl --max-steps 30 --per-device-train-batch-size 4 --model-max-length 512 --learning-rate 2e-3 --warmup-steps 3 --logging-steps 1 --bf16 --device cuda --save-strategy no"
if [ "$PHASE" = all ] || [ "$PHASE" = diverge ]; then
export DISTFLASH_DEBUG_GRADS=1
step p1 75 deno run -A cli/main.ts $T --output-dir /tmp/p1
step p2 75 deno run -A cli/main.ts $T --output-dir /tmp/p2 --nproc-per-node 2
step p2fs 75 deno run -A cli/main.ts $T --output-dir /tmp/p2fs --nproc-per-node 2 --fsdp full_shard
# Bisect the full_shard divergence: without bf16, without DistAttn (dp 2, sp 1), with zigzag.
step p2fs_fp32 75 deno run -A cli/main.ts ${T/--bf16 /} --output-dir /tmp/p2fs_fp32 --nproc-per-node 2 --fsdp full_shard
step p2fs_dp 75 deno run -A cli/main.ts $T --output-dir /tmp/p2fs_dp --nproc-per-node 2 --fsdp full_shard --sp-size 1
step p2fs_zz 75 deno run -A cli/main.ts $T --output-dir /tmp/p2fs_zz --nproc-per-node 2 --fsdp full_shard --distattn-layout zigzag
for r in p1 p2 p2fs p2fs_fp32 p2fs_dp p2fs_zz; do
  [ -f /tmp/$r/metrics.jsonl ] && { echo "== $r"; cat /tmp/$r/metrics.jsonl; } >>"$OUT/metrics.txt"
done
python3 - <<'PY' | tee "$OUT/grad_norms.txt"
import json, os
for r in ["p1", "p2", "p2fs", "p2fs_fp32", "p2fs_dp", "p2fs_zz"]:
    f = f"/tmp/{r}/metrics.jsonl"
    if os.path.exists(f):
        m = [json.loads(l) for l in open(f)]
        print(r.ljust(10), " ".join(f"{x['grad_norm']:.2g}" for x in m[::3]), "| loss", f"{m[-1]['loss']:.3f}")
PY
unset DISTFLASH_DEBUG_GRADS
step test_gpu 240 env DISTFLASH_TEST_BACKEND=cuda deno test -A tests/ffi.test.ts tests/ops.test.ts tests/attention_gpu.test.ts tests/llama.test.ts tests/distattn.test.ts tests/zigzag.test.ts
fi
if [ "$PHASE" = all ] || [ "$PHASE" = bench ]; then
step bench_attn2 200 deno run -A cli/main.ts bench attn --nproc-per-node 2 --seq ${SEQ2:-32768,65536} --device cuda
step nccl_comm 60 env DISTFLASH_TEST_BACKEND=cuda deno test -A tests/dist_comm.test.ts
step bench_7b 240 deno run -A cli/main.ts bench train --model llama-2-7b --model-max-length ${TRAINSEQ:-32768} --nproc-per-node 2 --max-steps 3
fi
summary
