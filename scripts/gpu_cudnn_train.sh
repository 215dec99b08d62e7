#!/usr/bin/env bash
# One GPU, call 2 of 2 for the cuDNN default (issue 22; after scripts/gpu_cudnn.sh): whole steps with
# the DEFAULT attention kernel (auto: cuDNN) beside the peer in the same call. `bench train`
# tinyllama-1.1b at 32K and 64K (3 steps; peer: bench/hf_fsdp_cp_train.py, HF transformers + FSDP2 +
# context parallel + activation checkpointing on the same GPU), then Llama-2-7B on this one GPU
# with --offload-gradients at the longest length `plan` gives for this GPU's free memory with the
# default kernel (2 steps: tokens/s of the second, memory in use against the plan train printed).
# LEN=<tokens> overrides the length. Step limits sum to 580 s. Logs under $OUT, a table last.
source "$(dirname "$0")/gpu_lib.sh"
SHOW='bench train|HF transformers|memory|step [0-9]+/|longest|fit|rc=|rror'
SHOW_LINES=10
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$OUT/all.log"
grep -E 'MemTotal|MemAvailable' /proc/meminfo >>"$OUT/all.log"
git log -1 --format=%H >>"$OUT/all.log" 2>/dev/null
step tiny_32k 120 deno run -A cli/main.ts bench train --model tinyllama-1.1b --model-max-length 32768 --max-steps 3 --output-dir outputs/bench-train-32k
step tiny_64k 150 deno run -A cli/main.ts bench train --model tinyllama-1.1b --model-max-length 65536 --max-steps 3 --output-dir outputs/bench-train-64k
OPTS="--model llama-2-7b --bf16 --offload-gradients --device cuda"
step plan_7b 30 deno run -A cli/main.ts plan $OPTS --model-max-length 131072
L=${LEN:-$(grep -Eo 'longest --model-max-length that fits with these options: [0-9]+' /tmp/logs/plan_7b.log | grep -Eo '[0-9]+$')}
echo "Llama-2-7B length: ${L:-none}" | tee -a "$OUT/all.log"
[ -n "$L" ] && step train_7b 280 deno run -A cli/main.ts train $OPTS --model-max-length "$L" --synthetic \
  --max-steps 2 --logging-steps 1 --learning-rate 1e-5 --save-strategy no --save-final-model false \
  --output-dir /tmp/train_7b --overwrite-output-dir
python3 - <<'PY' | tee -a "$OUT/all.log"
import json, os, re
def log(name):
    p = f"/tmp/logs/{name}.log"
    return open(p).read() if os.path.exists(p) else ""
print("== whole steps, default attention kernel")
for name in ["tiny_32k", "tiny_64k"]:
    t = log(name)
    ours = re.search(r"bench train: .*?: (\d+) tokens/s, MFU ([\d.]+)%", t)
    peer = re.search(r"HF transformers \+ FSDP2 \+ context parallel: .*?: (\d+) tokens/s, MFU ([\d.]+)%", t)
    if ours and peer:
        print(f"{name}: distflash {ours[1]} tok/s ({ours[2]}%), HF {peer[1]} tok/s ({peer[2]}%), {int(ours[1]) / int(peer[1]):.2f}x")
    else:
        print(f"{name}: incomplete (see all.log)")
t = log("train_7b")
used = re.search(r"in use after the first step: ([\d.]+) GiB \(plan ([\d.]+) GiB.*?([+-][\d.]+)%\)", t)
steps = re.findall(r"step (\d+)/\d+ loss ([\d.]+) .*tokens/s (\d+) MFU ([\d.]+)%", t)
print("llama-2-7b:", f"in use {used[1]} GiB vs plan {used[2]} GiB ({used[3]}%)" if used else "no memory line",
      "|", f"step {steps[-1][0]} {steps[-1][2]} tok/s MFU {steps[-1][3]}%" if steps else "no step")
PY
summary
