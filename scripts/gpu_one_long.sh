#!/usr/bin/env bash
# A 1-GPU call (issue 19): one Llama-2-7B step at 256K tokens on ONE H100 with the gradients,
# optimizer and checkpoints offloaded and the layer boundary, measured against the plan: the plan
# for this host (its real host memory, GPU 0's free memory), then the step (2 steps: the first
# includes warm-up; tokens/s from the second), then a table of tokens/s and device memory in use
# against the plan's total (the issue asks for 3%). When the host cannot hold the 256K state the
# train step refuses before allocating and names the length that fits: LEN=<tokens> reruns at it,
# OFFLOAD_CKPT=0 drops --offload-checkpoints. The plan (80 GB GPU): 47.3 GiB on the GPU at 256K
# but 178.5 GiB of host state, more than the one-GPU machine's 128 GiB: there, OFFLOAD_CKPT=0 with
# the length train names (about 172K; 176128 needs 79.8 GiB). LEN=524288 fits a 250 GiB host
# (75.4 GiB GPU, 242.5 GiB host). Per-step limits sum to 495 s. Logs under $OUT.
source "$(dirname "$0")/gpu_lib.sh"
SHOW='memory|step [0-9]+/|tokens|fit|rc=|rror'
SHOW_LINES=14
L=${LEN:-262144}
CKPT=--offload-checkpoints
[ "${OFFLOAD_CKPT:-1}" = 0 ] && CKPT=
OPTS="--model llama-2-7b --bf16 --model-max-length $L --offload-gradients $CKPT --checkpoint-boundary layer"
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader >>"$OUT/all.log"
grep -E 'MemTotal|MemAvailable' /proc/meminfo >>"$OUT/all.log"
git log -1 --format=%H >>"$OUT/all.log" 2>/dev/null
step build 45 deno task build
step plan 30 deno run -A cli/main.ts plan $OPTS
step train 420 deno run -A cli/main.ts train $OPTS --synthetic --max-steps 2 --logging-steps 1 \
  --learning-rate 1e-5 --save-strategy no --save-final-model false --device cuda \
  --output-dir /tmp/one_long
# The table: the plan's total (with the workspace allowance) against what the first step used,
# and the second step's tokens/s (metrics.jsonl) beside the published ALST figure.
python3 - "$L" <<'PY' | tee -a "$OUT/all.log"
import json, os, re, sys
length = int(sys.argv[1])
plan_log = open("/tmp/logs/plan.log").read() if os.path.exists("/tmp/logs/plan.log") else ""
train_log = open("/tmp/logs/train.log").read() if os.path.exists("/tmp/logs/train.log") else ""
def gib(text):
    value, unit = text.split()
    return float(value) * {"GiB": 1, "MiB": 1 / 1024, "KiB": 1 / 2**20}[unit]
total = re.search(r"^\s+total\s+([\d.]+ [KMG]iB)", plan_log, re.M)
host = re.search(r"host memory for offloaded state: ([\d.]+ [KMG]iB) per rank", plan_log)
used = re.search(r"in use after the first step: ([\d.]+ [KMG]iB)", train_log)
metrics = "/tmp/one_long/metrics.jsonl"
steps = [json.loads(l) for l in open(metrics)] if os.path.exists(metrics) else []
print(f"== Llama-2-7B, 1 GPU, {length} tokens, --offload-gradients --checkpoint-boundary layer")
print(f"plan total (with allowance)   {gib(total.group(1)):.1f} GiB" if total else "plan: no total")
print(f"plan host state               {gib(host.group(1)):.1f} GiB" if host else "plan: no host line")
if used and total:
    u, p = gib(used.group(1)), gib(total.group(1))
    print(f"device memory in use          {u:.1f} GiB ({100 * (u - p) / p:+.1f}% against the plan)")
else:
    print("device memory in use          (no step ran: see train.log; the plan names what fits)")
if len(steps) >= 2:
    print(f"tokens/s (step 2)             {steps[1]['tokens_per_s']:.0f}")
print("ALST (Arctic Long Sequence Training) publishes an 8B Llama at 500K tokens on one H100 (not run here)")
PY
summary
