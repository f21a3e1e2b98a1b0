#!/usr/bin/env bash
# Session 24's last H200 measurements (issues 18 and 14), one phase per device call, after the bring-up of
# scripts/device/README.md (`source scripts/device/env.sh` is done here when the file is there):
#   PHASE=quality   issue 18 (a): search_quality.py at the 3-bit budget (66,397,058 bytes), gptq space, seeds
#                   0-2 side by side (+ the baselines as a 4th job), $GENERATIONS x 16, WikiText-2 and C4 PPL of
#                   each seed's exported artifact; then $OUT/best_seed.txt names the seed of lowest WikiText-2 PPL.
#   PHASE=runtime   issue 14 on the GPU alone, in order: that seed's exported artifact (ANS frames) and its
#                   zstd twin (`evo compress --prefer-decode-speed`, same config, calibration and Hessians as
#                   the run), dense / codes / compressed 25-50-100 % / auto; the 8-bit Double Compression
#                   artifact ($DC8, built with int8-rtn by double_compression_runtime.py) codes / compressed
#                   50-100 % / auto; int8-rtn in every mode. Prompt 512 tokens, 128 greedy tokens.
#   PHASE=llamacpp  issue 18 (b): search_quality.py at llama.cpp's sizes $LLAMACPP_BUDGETS, seeds 0..$SIZE_SEEDS-1
#                   each (SIZE_SEEDS=1,2: those seeds), side by side, against gguf_vs_llamacpp_h200.json; the size jobs whose results are in
#                   $SIZE_EXTRA (b{BYTES}-s{SEED}.json of an earlier call, same space/generations/population) are
#                   not run again but join the table (mean ± std over the seeds). Default: the five sizes of
#                   sessions 23-24 x seeds 0-2, seed 0 of 91,298,624 and 93,510,464 from
#                   benchmarks/results/sq_llamacpp_seed0/ (when there): 13 searches side by side, 1 CPU thread
#                   each, ending by LLAMACPP_DEADLINE_S (440 s; searches stop SIZE_RESERVE_S = 120 s before it).
#                   A budget at or above the space's largest artifact scores that artifact (0 evaluations); a
#                   failed job is a row of the table, the others are still rendered.
#   PHASE=quality,llamacpp  both searches side by side in one call (each under its own deadline).
# Each phase ends by its own deadline (DEADLINE_S, default 500 / 530 / 440 s; every step also runs under
# `timeout`), writes its log and small results under $OUT (a call returns at most ~8 files: run directories are
# packed by scripts/device/collect.sh) and keeps run directories, artifacts and Hessians under $WORK
# (default $EVO_DEV/final, in /tmp: it survives between the calls of one warm lease, and a phase run again
# resumes or reuses what is there). Results: $OUT/<phase>.log, $OUT/quality.tar.gz (table.txt, results.json,
# logs, each seed's journal and best config), $OUT/best_seed.txt, $OUT/resident_*.{txt,json},
# $OUT/dc_runtime.{txt,json}, $OUT/llamacpp.tar.gz.
# SMOKE=1: every phase on a CPU with the tests' tiny Llama, 2 generations of 4, budgets of ~100 kB, 32-token
# prompts and 8 new tokens, DC8=dc-r6-gptq-e3 (the dc-mix config names SmolLM2's tensors): the plumbing in
# a few minutes (WORK defaults to /tmp/final-h200-smoke).
set -uo pipefail
: "${OUT:?set OUT to the folder that comes back}"
: "${PHASE:?set PHASE to quality, runtime, llamacpp or quality,llamacpp}"
[ -f scripts/device/env.sh ] && [ "${SMOKE:-0}" != 1 ] && source scripts/device/env.sh
PY=${PY:-python3}
SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
    WORK=${WORK:-/tmp/final-h200-smoke}
    DEVICE=cpu
    BUDGET=${BUDGET:-100000}
    LLAMACPP_BUDGETS=${LLAMACPP_BUDGETS:-97000,103000,110000}
    GENERATIONS=${GENERATIONS:-2}
    SIZE_GENERATIONS=${SIZE_GENERATIONS:-2}
    POPULATION=4
    DC8=${DC8:-dc-r6-gptq-e3}
    smoke_search=(--max-tokens 1024)
    resident_tokens=(--prompt-tokens 32 --new-tokens 8 --mode-seconds 5 --prefetch 1)
else
    WORK=${WORK:-${EVO_DEV:-/tmp/evo-dev}/final}
    DEVICE=cuda
    BUDGET=${BUDGET:-66397058}                 # issue 18's uniform 3-bit RTN figure
    LLAMACPP_BUDGETS=${LLAMACPP_BUDGETS:-74046272,79354688,88202048,91298624,93510464}
    SIZE_SEEDS=${SIZE_SEEDS:-3}
    [ -d benchmarks/results/sq_llamacpp_seed0 ] && SIZE_EXTRA=${SIZE_EXTRA-benchmarks/results/sq_llamacpp_seed0}
    GENERATIONS=${GENERATIONS:-70}             # session 23: 40 generations in ~190 s of search per seed
    SIZE_GENERATIONS=${SIZE_GENERATIONS:-40}
    POPULATION=${POPULATION:-16}
    DC8=${DC8:-dc-mix-r4r6-gptq-e4}
    smoke_search=()
    resident_tokens=(--dtype bfloat16 --prompt-tokens 512 --new-tokens 128 --mode-seconds "${MODE_SECONDS:-6}"
                     --prefetch "${PREFETCH:-4}")
fi
SIZE_SEEDS=${SIZE_SEEDS:-1}
SIZE_EXTRA=${SIZE_EXTRA:-}  # a folder of earlier size jobs' results (search_quality.py --extra-results)
LAST_MODE_S=${LAST_MODE_S:-20}  # resident_memory starts no mode later than this before its share of the time ends
threads=()  # quality,llamacpp: two parents on one machine, their workers' CPU threads split between them
case "$SIZE_SEEDS" in *,*) size_seed_count=$(tr ',' '\n' <<< "$SIZE_SEEDS" | grep -c .);; *) size_seed_count=$SIZE_SEEDS;; esac
size_jobs=$(( $(tr ',' '\n' <<< "$LLAMACPP_BUDGETS" | grep -c .) * size_seed_count ))
case "$PHASE" in *,*) threads=(--threads $(( $(nproc) / (4 + size_jobs) > 0 ? $(nproc) / (4 + size_jobs) : 1 )));; esac
SQ3=$WORK/sq3 SQL=$WORK/sqL
mkdir -p "$WORK" "$OUT"

if [ "$SMOKE" = 1 ]; then  # the tests' tiny Llama (benchmarks/_experiments.tiny_model), written once
    MODEL=$(cd benchmarks && "$PY" -c "import sys; from pathlib import Path; from _experiments import tiny_model; \
print(tiny_model(Path(sys.argv[1])))" "$WORK/tiny-model" 2> /dev/null | tail -1)
    [ -f "$MODEL/config.json" ] || { echo "SMOKE: could not write the tiny model under $WORK/tiny-model"; exit 3; }
else
    MODEL=${MODEL:-smollm2-135m}
fi

quality() {  # issue 18 (a): 3 seeds at the 3-bit budget, the baselines beside them
    local deadline=${DEADLINE_S:-500}
    echo "== quality: budget $BUDGET bytes, 3 seeds x $GENERATIONS generations, deadline $deadline s ($(date -u +%T))"
    timeout $(( deadline + 45 )) "$PY" benchmarks/search_quality.py --device "$DEVICE" --model "$MODEL" --space gptq \
        --seeds 3 --jobs 4 --generations "$GENERATIONS" --population "$POPULATION" --skip-evop --skip-random --c4 \
        --budget-bytes "$BUDGET" --deadline-s "$deadline" --reserve-s "${RESERVE_S:-100}" "${smoke_search[@]}" "${threads[@]}" \
        --out "$SQ3"
    echo "search_quality exit $?"
    best_seed | tee "$OUT/best_seed.txt"
    pack quality "$SQ3"
}

llamacpp() {  # issue 18 (b): one search per llama.cpp size (x SIZE_SEEDS), minus those in $SIZE_EXTRA
    local deadline=${LLAMACPP_DEADLINE_S:-${DEADLINE_S:-440}}
    local extra=(); [ -n "$SIZE_EXTRA" ] && extra=(--extra-results "$SIZE_EXTRA")
    echo "== llamacpp: budgets $LLAMACPP_BUDGETS, seeds $SIZE_SEEDS (a count from 0, or a list) x $SIZE_GENERATIONS generations" \
         "(${SIZE_EXTRA:-no earlier results}), deadline $deadline s ($(date -u +%T))"
    timeout $(( deadline + 45 )) "$PY" benchmarks/search_quality.py --device "$DEVICE" --model "$MODEL" --space gptq \
        --seeds 0 --size-seeds "$SIZE_SEEDS" --jobs "$size_jobs" --generations "$SIZE_GENERATIONS" \
        --population "$POPULATION" --skip-evop --llamacpp-sizes benchmarks/results/gguf_vs_llamacpp_h200.json \
        --budgets-bytes "$LLAMACPP_BUDGETS" "${extra[@]}" --deadline-s "$deadline" --reserve-s "${SIZE_RESERVE_S:-120}" \
        "${smoke_search[@]}" "${threads[@]}" --out "$SQL"
    echo "search_quality exit $?"
    pack llamacpp "$SQL"
}

best_seed() {  # the seed whose exported artifact has the lowest WikiText-2 PPL: "seed N ppl P bytes B DIR"
    "$PY" - "$SQ3" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = []
for path in sorted((out / "results").glob("seed*.json")):
    deap = json.loads(path.read_text()).get("deap")
    if deap:
        rows.append((deap["ppl"], path.stem, deap))
        print(f"{path.stem}: WikiText-2 PPL {deap['ppl']:.3f}, C4 {deap.get('ppl_c4', float('nan')):.3f}, "
              f"{deap['bytes']:,} bytes, {deap['evaluations']} evaluations, "
              f"{'finished' if deap['finished'] else 'stopped by the deadline'}")
if not rows:
    sys.exit(f"no seed result in {out / 'results'}: run PHASE=quality first")
ppl, name, deap = min(rows, key=lambda r: r[0])
print(f"best {name} ppl {ppl:.4f} bytes {deap['bytes']} artifact {out / name / 'deap' / 'export'}")
EOF
}

pack() {  # $OUT/NAME.tar.gz: a search_quality --out folder without artifacts, Hessians and size caches
    local name=$1 dir=$2 parts=()
    for p in "$dir"/table.txt "$dir"/results.json "$dir"/results "$dir"/logs "$dir"/*/deap/{journal.jsonl,best.toml,spec.json,front.json,calibration.json} \
             "$dir"/*/deap/export/manifest.json "$dir"/*/largest/export/manifest.json; do
        [ -e "$p" ] && parts+=("$p")
    done
    [ ${#parts[@]} -gt 0 ] && bash scripts/device/collect.sh "$name" "${parts[@]}"
}

runtime() {  # issue 14 on CUDA: the best seed's artifact + zstd twin, DC 8-bit, int8-rtn; sequential
    local deadline=${DEADLINE_S:-530} began=$SECONDS line art run twin left
    echo "== runtime: deadline $deadline s ($(date -u +%T))"
    line=$(best_seed | tee "$OUT/best_seed.txt" | tail -1)
    cat "$OUT/best_seed.txt"
    art=; [ "${line%% *}" = best ] && art=${line##* artifact }
    twin=$WORK/best3z
    if [ -n "$art" ] && [ -f "$art/manifest.json" ]; then
        run=$(dirname "$art")
        echo "-- zstd twin of $art (--prefer-decode-speed, the run's calibration and Hessians) at $((SECONDS - began)) s"
        local stamp; stamp="$art $(stat -c %Y "$art/manifest.json")"  # a re-export makes a new twin
        if [ ! -f "$twin/manifest.json" ] || [ "$(cat "$twin.source" 2> /dev/null)" != "$stamp" ]; then
            "$PY" - "$SQ3" "${line#best }" "$WORK/best3.toml" <<'EOF'
import json, sys
from pathlib import Path
from evo.compress.config import CompressionConfig
name = sys.argv[2].split()[0]
config = json.loads((Path(sys.argv[1]) / "results" / f"{name}.json").read_text())["deap"]["config"]
CompressionConfig.from_dict(config).save(sys.argv[3])
EOF
            rm -rf "$WORK/best3z-hessians"; cp -r "$run/hessians" "$WORK/best3z-hessians"
            timeout 180 "$PY" -m evo compress --model "$MODEL" --device "$DEVICE" --config "$WORK/best3.toml" \
                --calibration "$run/calibration.json" --hessians "$WORK/best3z-hessians" --prefer-decode-speed \
                --out "$twin" --overwrite 2>&1 | grep -v 'it/s]' | tail -3
            [ -f "$twin/manifest.json" ] && echo "$stamp" > "$twin.source"
        fi
        [ -f "$twin/manifest.json" ] || twin=
    else
        echo "no exported artifact of the quality phase under $SQ3: its rows are skipped"; art=; twin=
    fi

    echo "-- double_compression_runtime: $DC8 int8-rtn at $((SECONDS - began)) s"
    if [ -f "$WORK/dc/$DC8/manifest.json" ] && [ -f "$WORK/dc/int8-rtn/manifest.json" ]; then
        echo "artifacts already in $WORK/dc"
    else
        timeout 220 "$PY" benchmarks/double_compression_runtime.py --model "$MODEL" --device "$DEVICE" \
            --only "$DC8" int8-rtn --deadline-s 200 --artifacts "$WORK/dc" "${smoke_dc[@]}" \
            --json "$OUT/dc_runtime.json" 2>&1 | grep -v -e 'it/s]' -e '^Loading'
    fi

    # resident rows, one resident_memory.py call per artifact; each gets its share of what is left
    local jobs=() shares=() i
    [ -n "$art" ] && { jobs+=("best3|$art|dense codes compressed auto|25 50 100"); shares+=(26); }
    [ -n "$twin" ] && { jobs+=("best3z|$twin|dense codes compressed auto|25 50 100"); shares+=(26); }
    jobs+=("dc8|$WORK/dc/$DC8|codes compressed auto|50 100"); shares+=(20)
    jobs+=("int8|$WORK/dc/int8-rtn|dense codes compressed auto|25 50 100"); shares+=(28)
    local total=0; for s in "${shares[@]}"; do total=$(( total + s )); done
    for i in "${!jobs[@]}"; do
        IFS='|' read -r tag path modes caps <<< "${jobs[$i]}"
        left=$(( deadline - (SECONDS - began) ))
        local share=$(( left * shares[i] / total ))
        total=$(( total - shares[i] ))
        echo "-- resident_memory $tag ($path): modes $modes, caps $caps, $share s at $((SECONDS - began)) s"
        if [ ! -f "$path/manifest.json" ]; then echo "missing artifact $path"; continue; fi
        if [ "$share" -lt 20 ]; then echo "skipped: $share s left for it"; continue; fi
        # shellcheck disable=SC2086  # modes and caps are word lists
        timeout "$share" "$PY" benchmarks/resident_memory.py "$path" --device "$DEVICE" "${resident_tokens[@]}" \
            --modes $modes --caps $caps --auto-cap 50 --deadline-s $(( share > 2 * LAST_MODE_S ? share - LAST_MODE_S : share / 2 )) \
            --json "$OUT/resident_$tag.json" 2>&1 | grep -v -e 'it/s]' -e 'clean_up_tokenization'
    done
    echo "== runtime done at $((SECONDS - began)) s"
}

smoke_dc=(); [ "$SMOKE" = 1 ] && smoke_dc=(--max-tokens 1024)
monitor=
if command -v nvidia-smi > /dev/null; then  # GPU utilisation and memory every 5 s: shows the GPU was not shared
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 > "$OUT/gpu.csv" 2>&1 &
    monitor=$!
fi
case "$PHASE" in
    quality) quality > "$OUT/quality.log" 2>&1; tail -40 "$OUT/quality.log" ;;
    llamacpp) llamacpp > "$OUT/llamacpp.log" 2>&1; tail -40 "$OUT/llamacpp.log" ;;
    quality,llamacpp|llamacpp,quality)
        quality > "$OUT/quality.log" 2>&1 & q=$!
        llamacpp > "$OUT/llamacpp.log" 2>&1 & l=$!
        wait $q; wait $l; tail -25 "$OUT/quality.log"; tail -25 "$OUT/llamacpp.log" ;;
    runtime) runtime 2>&1 | tee "$OUT/runtime.log" | grep -e '^==' -e '^--' -e '^best' -e 'skipped\|missing' ;;
    *) echo "PHASE=$PHASE: give quality, runtime, llamacpp or quality,llamacpp"; exit 2 ;;
esac
[ -n "$monitor" ] && kill "$monitor"
exit 0
