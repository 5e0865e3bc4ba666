#!/usr/bin/env bash
# The device run of `python -m benchmarks gpu`, one part per process, each under a share of
# one time budget, so that a part that overruns costs only itself and every part that
# finished has written its JSON: on this workplace's GPU machine, from the repository's
# root, with `.whl` (benchmarks/gpu_wheels.sh) and `.wikitext` (WikiText-2's three .txt
# files) carried:
#
#   BUDGET=590 bash benchmarks/gpu_device.sh check "step-bf16:70:--parts step --modes bf16" ...
#
# Each argument is NAME[:SECONDS[:ARGUMENTS]]: `check` runs benchmarks.gpu_check; any other
# NAME runs `python -m benchmarks gpu --device cuda ARGUMENTS` into $OUT/NAME.json, under
# SECONDS or what is left of BUDGET, whichever is less. $OUT/log.txt has everything printed,
# $OUT/dmon.txt the GPU's utilisation each second (nvidia-smi dmon).
set -uo pipefail
out=${OUT:-results/device}
mkdir -p "$out"
log=$out/log.txt
start=$SECONDS
budget=${BUDGET:-590}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl 2>&1 | grep -v "^WARNING" | tee -a "$log"
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 MOE_DATA_DIR=$PWD/.wikitext
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-cache
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee -a "$log"
nvidia-smi dmon -s um -d 1 -o T > "$out/dmon.txt" 2>&1 &
dmon=$!
trap 'kill $dmon 2>/dev/null' EXIT
for spec in "$@"; do
  IFS=: read -r name limit args <<< "$spec"
  left=$((budget - (SECONDS - start) - 3))
  limit=${limit:-$left}
  ((limit > left)) && limit=$left
  if ((limit < 20)); then
    echo "== $name: skipped, ${left}s of the budget left" | tee -a "$log"
    continue
  fi
  echo "== $name (at most ${limit}s, at $((SECONDS - start))s) $(date -u +%T)" | tee -a "$log"
  if [[ $name == check ]]; then
    timeout -k 5 "$limit" python3 -m benchmarks.gpu_check 2>&1 | tee -a "$log" || exit 1
  else
    # shellcheck disable=SC2086  # ARGUMENTS are words
    timeout -k 5 "$limit" python3 -m benchmarks gpu --device cuda --out "$out/$name.json" \
      $args 2>&1 | tee -a "$log" | grep -v "^  \[not measured\]"
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start))s" | tee -a "$log"
  fi
done
