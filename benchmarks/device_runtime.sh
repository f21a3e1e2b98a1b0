#!/usr/bin/env bash
# Issue 14 on one H200, in one device call (after the bring-up of scripts/device/README.md):
#   bash scripts/device/setup.sh || exit; source scripts/device/env.sh; bash benchmarks/device_runtime.sh
# 1. benchmarks/double_compression_runtime.py --only $DC_SETTINGS: resident bytes vs INT8 and WikiText-2
#    PPL (64 x 512 tokens) of the settings that met the goal on the CPU; their artifacts are kept.
# 2. the uniform 3-bit RTN artifact (evo baseline uniform --bits 3).
# 3. benchmarks/resident_memory.py on u3 and the 8-bit DC artifact: dense / codes / compressed 25-50-100 %
#    / auto 50 %, prompt 512 tokens, 128 new tokens (each mode's decoding capped at $MODE_SECONDS).
# Every step runs under `timeout` and its script's own --deadline-s (partial tables are printed and
# written); the whole script stays under ~560 s (BUDGET_S, default 570, bounds its last step). Tables: $OUT/*.txt, figures: $OUT/*.json.
set -uo pipefail
: "${OUT:?set OUT to the folder that comes back}"
[ -f scripts/device/env.sh ] && source scripts/device/env.sh
PY=${PY:-python3}
WORK=${WORK:-/tmp/evo-device-runtime}
DC_SETTINGS=${DC_SETTINGS:-"dc-mix-r4r6-gptq-e4 b4-g32-zfloat-e3 dc-r6-gptq-e3 int8-rtn"}
DC8=${DC8:-dc-mix-r4r6-gptq-e4}      # the 8-bit Double Compression artifact run resident
MODE_SECONDS=${MODE_SECONDS:-8}
mkdir -p "$WORK" "$OUT"
began=$SECONDS
step() { echo; echo "== $1 (at $((SECONDS - began)) s)"; }

step "double_compression_runtime: $DC_SETTINGS"
timeout 300 "$PY" benchmarks/double_compression_runtime.py --device cuda --only $DC_SETTINGS --deadline-s 280 \
    --artifacts "$WORK/dc" --json "$OUT/dc_runtime.json" 2>&1 | grep -v -e 'it/s]' -e '^Loading' | tee "$OUT/dc_runtime.txt"

step "uniform 3-bit artifact"
[ -f "$WORK/u3/manifest.json" ] || timeout 150 "$PY" -m evo baseline uniform --bits 3 --device cuda \
    --out "$WORK/u3" --overwrite 2>&1 | grep -v -e 'it/s]' | tail -3

step "resident_memory: u3 and $DC8"
artifacts=()
for a in "$WORK/u3" "$WORK/dc/$DC8"; do [ -f "$a/manifest.json" ] && artifacts+=("$a") || echo "missing artifact $a"; done
left=$(( ${BUDGET_S:-570} - (SECONDS - began) ))
if [ ${#artifacts[@]} -gt 0 ] && [ $left -gt 60 ]; then
    timeout $left "$PY" benchmarks/resident_memory.py "${artifacts[@]}" --device cuda --dtype bfloat16 \
        --prompt-tokens 512 --new-tokens 128 --mode-seconds "$MODE_SECONDS" --deadline-s $(( left - 45 )) \
        --json "$OUT/resident.json" 2>&1 | tee "$OUT/resident.txt"
else
    echo "resident_memory skipped: ${#artifacts[@]} artifacts, $left s left"
fi
step "done"
