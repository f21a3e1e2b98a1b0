#!/usr/bin/env bash
# Issue 19's two experiments side by side on one H200, in one device call: the bring-up's second call
# (scripts/device/README.md; llama.cpp is not needed), its setup time taken off the deadline so that
# everything has ended by ~530 s of the call:
#   T0=$(date +%s); EVO_DEV_BUILD=0 bash scripts/device/setup.sh > $OUT/setup.log 2>&1 || { cat $OUT/setup.log;
#   exit 3; }; source scripts/device/env.sh; DEADLINE_S=$((500 - $(date +%s) + T0)) bash benchmarks/issue19_h200.sh
# 1. ccds_vs_random.py: CCDS vs random calibration (32 x 512 tokens), seeds 0-2, 6 searches at once in
#    the `bits` space at the uniform 3-bit budget (its sizes read no run data: one size table for all),
#    16 generations x 16 each; held-out PPL on WikiText-2, C4 and the six domains.
# 2. evop_vs_shortgpt.py: 8 of 30 layers removed, seeds 0-2 at once, 30 generations x 32 with stages
#    2048,16384:16,32768:8 on 64 x 512 tokens, against ShortGPT on the same tokens; WikiText-2 and C4 PPL.
# Both parents get --deadline-s DEADLINE_S: a search stops by --reserve-s before it and exports its best
# so far, a worker still running 20 s after it is stopped. Tables are rewritten whenever a job ends:
# $OUT/ccds/ccds_vs_random.md, $OUT/evop/evop_vs_shortgpt.md (+ .json, results/, logs/); $OUT/*.log the
# parents' output, $OUT/gpu.csv utilisation and memory every 5 s. Bulky files (runs, artifacts, size
# cache) stay in $WORK. CCDS_EXTRA / EVOP_EXTRA: options appended to each command (the last one wins).
# SMOKE=1: both --smoke runs with two worker processes each, on a CPU (a few minutes).
set -uo pipefail
: "${OUT:?set OUT to the folder that comes back}"
PY=${PY:-python3}
WORK=${WORK:-/tmp/issue19}
DEADLINE_S=${DEADLINE_S:-480}
mkdir -p "$WORK" "$OUT"
echo "issue19_h200: deadline ${DEADLINE_S} s from $(date -u +%H:%M:%S)"
monitor=
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 > "$OUT/gpu.csv" 2>&1 &
    monitor=$!
fi
if [ "${SMOKE:-0}" = 1 ]; then  # the same plumbing on a CPU: both --smoke runs, two workers each
    ccds_args=(--smoke --jobs 2 --seeds 0 --deadline-s "$DEADLINE_S")
    evop_args=(--smoke --jobs 2 --seeds 0,1 --deadline-s "$DEADLINE_S")
else
    ccds_args=(--device cuda --space bits --seeds 0,1,2 --jobs 6 --threads 2 --size-workers 8 --generations 16
               --population 16 --samples 32 --seq-len 512 --reserve-s 100 --deadline-s "$DEADLINE_S")
    evop_args=(--device cuda --seeds 0,1,2 --jobs 3 --threads 2 --size-workers 8 --drop 8 --generations 30
               --population 32 --samples 64 --seq-len 512 --stages 2048,16384:16,32768:8 --reserve-s 80
               --deadline-s "$DEADLINE_S")
fi
"$PY" benchmarks/ccds_vs_random.py "${ccds_args[@]}" --out "$OUT/ccds" --work-dir "$WORK/ccds" ${CCDS_EXTRA:-} \
    > "$OUT/ccds.log" 2>&1 &
ccds=$!
"$PY" benchmarks/evop_vs_shortgpt.py "${evop_args[@]}" --out "$OUT/evop" --work-dir "$WORK/evop" ${EVOP_EXTRA:-} \
    > "$OUT/evop.log" 2>&1 &
evop=$!
wait $ccds; echo "ccds_vs_random exit $? at ${SECONDS} s"
wait $evop; echo "evop_vs_shortgpt exit $? at ${SECONDS} s"
[ -n "$monitor" ] && kill "$monitor"
cat "$OUT/ccds/ccds_vs_random.md" "$OUT/evop/evop_vs_shortgpt.md" 2>/dev/null
exit 0
