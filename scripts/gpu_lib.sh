# Sourced by the scripts/gpu_*.sh device calls. `step NAME LIMIT CMD...` runs CMD under its own
# timeout, appends its log (without download noise) to $OUT/all.log, since $OUT brings back at most
# 8 files, keeps it in /tmp/logs/NAME.log, and prints its last lines (those matching $SHOW when set);
# returns CMD's exit code; `summary` prints each step's exit code and seconds.
# DISTFLASH_BUILD_CUDA=0 on purpose: the GPU host never compiles CUDA. lib/libdistflash_cuda.so is
# built on the development machine (DISTFLASH_BUILD_CUDA=1 deno task build) and carried with lib/;
# a `deno task build` on the GPU host only refreshes the CPU library. Rebuild before a call after a
# CUDA change, or the call runs the old kernels.
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
  grep -v '^Download' "/tmp/logs/$name.log" | grep -E "${SHOW:-.}" | tail -"${SHOW_LINES:-8}"
  return $rc
}
summary() {
  echo "== summary =="; printf '%s\n' "${results[@]}"
}
