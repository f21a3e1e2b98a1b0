#!/usr/bin/env bash
# Issue 14 on one H200, in one device call (after the bring-up of scripts/device/README.md):
#   bash scripts/device/setup.sh || exit; source scripts/device/env.sh; BUDGET_S=540 bash benchmarks/device_runtime.sh
# 1. benchmarks/double_compression_runtime.py --only $DC_SETTINGS: resident bytes vs INT8 and WikiText-2
#    PPL (64 x 512 tokens) of the 8-bit Double Compression setting and the INT8 reference; artifacts kept.
# 2. the uniform 3-bit RTN artifact (evo baseline uniform --bits 3, ANS frames) and the same config written
#    with --prefer-decode-speed (zstd frames): the coder the runtime decodes.
# 3. benchmarks/resident_memory.py on u3, u3 zstd, the 8-bit DC artifact and int8-rtn: dense / codes /
#    compressed 0-25-50-100 % / auto 50 % (caps: fractions of the decoded size = the bit-packed codes),
#    prompt 512 tokens, 128 new tokens (each mode's decoding capped at $MODE_SECONDS), $PREFETCH layers
#    decoded ahead in as many threads.
# Every step runs under `timeout` and its script's own --deadline-s (partial tables are printed and
# written); the whole script stays under BUDGET_S (default 540 s). Tables: $OUT/*.txt, figures: $OUT/*.json.
set -uo pipefail
: "${OUT:?set OUT to the folder that comes back}"
[ -f scripts/device/env.sh ] && source scripts/device/env.sh
PY=${PY:-python3}
WORK=${WORK:-/tmp/evo-device-runtime}
DC_SETTINGS=${DC_SETTINGS:-"dc-mix-r4r6-gptq-e4 int8-rtn"}
DC8=${DC8:-dc-mix-r4r6-gptq-e4}      # the 8-bit Double Compression artifact run resident
MODE_SECONDS=${MODE_SECONDS:-5}
PREFETCH=${PREFETCH:-4}
BUDGET_S=${BUDGET_S:-540}
mkdir -p "$WORK" "$OUT"
began=$SECONDS
step() { echo; echo "== $1 (at $((SECONDS - began)) s)"; }

step "double_compression_runtime: $DC_SETTINGS"
timeout 200 "$PY" benchmarks/double_compression_runtime.py --device cuda --only $DC_SETTINGS --deadline-s 180 \
    --artifacts "$WORK/dc" --json "$OUT/dc_runtime.json" 2>&1 | grep -v -e 'it/s]' -e '^Loading' | tee "$OUT/dc_runtime.txt"

step "uniform 3-bit artifact (ANS) and its zstd twin (--prefer-decode-speed)"
[ -f "$WORK/u3/manifest.json" ] || timeout 120 "$PY" -m evo baseline uniform --bits 3 --device cuda \
    --out "$WORK/u3" --overwrite 2>&1 | grep -v -e 'it/s]' | tail -3
[ -f "$WORK/u3z/manifest.json" ] || timeout 60 "$PY" -m evo compress --config "$WORK/u3.toml" --device cuda \
    --prefer-decode-speed --out "$WORK/u3z" --overwrite 2>&1 | grep -v -e 'it/s]' | tail -2

step "resident_memory: u3, u3z, $DC8, int8-rtn"
artifacts=()
for a in "$WORK/u3" "$WORK/u3z" "$WORK/dc/$DC8" "$WORK/dc/int8-rtn"; do
    [ -f "$a/manifest.json" ] && artifacts+=("$a") || echo "missing artifact $a"
done
left=$(( BUDGET_S - (SECONDS - began) ))
if [ ${#artifacts[@]} -gt 0 ] && [ $left -gt 60 ]; then
    timeout $left "$PY" benchmarks/resident_memory.py "${artifacts[@]}" --device cuda --dtype bfloat16 \
        --prompt-tokens 512 --new-tokens 128 --mode-seconds "$MODE_SECONDS" --prefetch "$PREFETCH" \
        --deadline-s $(( left - 40 )) --json "$OUT/resident.json" 2>&1 | tee "$OUT/resident.txt"
else
    echo "resident_memory skipped: ${#artifacts[@]} artifacts, $left s left"
fi
step "done"
