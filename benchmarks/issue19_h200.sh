#!/usr/bin/env bash
# Issue 19 on one H200, one phase per device call (PHASE), after the bring-up of scripts/device/README.md
# (`source scripts/device/env.sh` is done here when the file is there; llama.cpp is not needed):
#   PHASE=throughput  search_throughput.py: variants $VARIANTS (shipped = compile "auto" = "reduce-overhead"
#                     with in-place level copies, mask-free attention, rotary tables and the one-pass KL kernel;
#                     kl_torch_sums, rotary_computed, mask_attention: each with one of those switched off), each
#                     with a search loop of >= $MIN_LOOP_S s (20; session 27: 20 s loops differ ~10 % between
#                     leases, give 60 for a comparison): evaluations/s, share of forward + KL, full evaluation ms. The probe (level database + size table, ~96 s)
#                     counts inside --deadline-s but is not stopped by it. THROUGHPUT_EXTRA: more options for
#                     search_throughput.py (e.g. --cublas-workspace none, the other side of session 30's comparison,
#                     in a call of its own: torch reads it once per process). DEADLINE_S default 520 (session 25: probe
#                     103 s + a cold compile 128 s left 360 s room for one variant's loop; a variant whose new compile
#                     would not fit is skipped).
#   PHASE=evopress    evopress_scale.py, >= $EVALUATIONS (20,000) evaluations, population 64, stages
#                     2048,16384:16,32768:8, torch.compile mode $COMPILE (reduce-overhead), over two consecutive
#                     calls in $WORK/evopress (in /tmp: it survives while the lease stays warm). The first call
#                     (no calls.json there yet) only searches (--reserve-s 20); the second resumes with
#                     --export-partial (--reserve-s $EXPORT_RESERVE_S): the export of the best (finished or
#                     stopped) and its WikiText-2 / C4 PPL beside uniform 3-bit RTN, `evo report`'s convergence
#                     plot. EXPORT=1 exports in this call whatever calls.json says (EXPORT=0 never).
#                     DEADLINE_S default 520.
#   PHASE=ccds        ccds_vs_random.py: CCDS vs random calibration (32 x 512 tokens), seeds $CCDS_SEEDS (0,1,2),
#                     all 6 searches at once (--jobs 6 x 2 threads) in the `bits` space at the uniform 3-bit
#                     budget, 16 generations x 16; held-out PPL on WikiText-2, C4 and the six domains.
#                     DEADLINE_S default 480.
#   PHASE=evop        evop_vs_shortgpt.py: 8 of 30 layers removed, seeds 0-2 at once, 30 x 32, long stages.
#   PHASE=floor       shape-only timings of one evaluation's forward + KL, one after the other (models built from
#                     SmolLM2-135M's config with random weights: a fresh lease needs no bring-up, no carry):
#                     kl_kernel.py (the KL alone: torch ops vs the Triton kernel's program shapes, ~1 min), then
#                     attention_paths.py --profile (the shipped path against session 26's, 64 x 512 and 4 x 512,
#                     kernel times by kind), then forward_floor.py (transformers' compiled forward vs a minimal
#                     one with fused projections; session 27: no faster, nor were the max-autotune modes).
#                     DEADLINE_S default 480, half each (the second gets what the first left).
#   PHASE=klcheck     kl_paths_real.py: one heavily compressed configuration of the real model (uniform 2-bit RTN) on
#                     64 x 512 tokens of WikiText-2, its top-k + tail KL estimate through each path (eager with torch
#                     sums, eager with the kernel at two shapes, stage graphs, graph trees) against the exact KL, all on
#                     the same weights (session 28: the search's warm-up genome moved from +0.143 % to +0.323 %).
#                     DEADLINE_S default 300 (two compiles).
#   PHASE=evopress,ccds (any comma list) runs the phases side by side, each to its own deadline.
# Each phase ends by its deadline (every command also runs under `timeout`, deadline + 60 s), writes its log
# and small results under $OUT (a call returns at most ~8 files: run directories are packed by
# scripts/device/collect.sh, files over 4 MB left out) and keeps run directories, artifacts, level databases
# and size caches under $WORK (default $EVO_DEV/issue19). Results: $OUT/<phase>.log, $OUT/throughput.tar.gz
# (throughput.{md,json}), $OUT/evopress.tar.gz (evopress_scale.{md,json}, calls.json, report/ with the
# convergence plot, the exports' results, the journal), $OUT/ccds.tar.gz, $OUT/evop.tar.gz, $OUT/gpu.csv.
# A phase run again resumes (evopress: the search; ccds/evop: finished jobs are read back).
# The device calls and their plan: scripts/device/README.md, "Sessions 25-26".
# SMOKE=1: every phase on a CPU with the tests' tiny Llama (the scripts' --smoke) in a few minutes
# (WORK defaults to /tmp/issue19-smoke; evopress runs both of its calls in one go unless EXPORT is set).
set -uo pipefail
: "${OUT:?set OUT to the folder that comes back}"
: "${PHASE:?set PHASE to throughput, evopress, ccds, evop, floor, klcheck or a comma list of them}"
SMOKE=${SMOKE:-0}
[ -f scripts/device/env.sh ] && [ "$SMOKE" != 1 ] && source scripts/device/env.sh
PY=${PY:-python3}
COMPILE=${COMPILE:-reduce-overhead}
VARIANTS=${VARIANTS:-shipped,kl_torch_sums,rotary_computed,mask_attention}
MIN_LOOP_S=${MIN_LOOP_S:-20}
EXPORT=${EXPORT:-auto}
EXPORT_RESERVE_S=${EXPORT_RESERVE_S:-150}
CCDS_SEEDS=${CCDS_SEEDS:-0,1,2}
if [ "$SMOKE" = 1 ]; then
    WORK=${WORK:-/tmp/issue19-smoke}
    throughput_args=(--smoke --evaluations 16 --min-loop-s 3 --repeats 1)
    EVALUATIONS=${EVALUATIONS:-3000}  # more than fit in 2 x 60 s: the first call stops, the second resumes
    evopress_args=(--smoke --evaluations "$EVALUATIONS" --compile "$COMPILE")  # CPU: the eager fallback
    ccds_args=(--smoke --jobs 2 --seeds 0)
    evop_args=(--smoke --jobs 2 --seeds 0,1)
    paths_args=(--device cpu --layers 1 --runs off:masks:2x32,off:free:2x32 --repeats 1)
    kl_args=(--device cpu --rows 64 --vocab 4096 --repeats 2)
    floor_args=(--device cpu --layers 1 --runs transformers:off:2x32,minimal:off:2x32 --repeats 1)
    klcheck_args=(--device cpu --sequences 4 --tokens 64)
    default_deadline=(throughput=150 evopress=60 ccds=240 evop=240 floor=60 klcheck=120)
    EXPORT_RESERVE_S=${SMOKE_EXPORT_RESERVE_S:-25}
else
    WORK=${WORK:-${EVO_DEV:-/tmp/evo-dev}/issue19}
    throughput_args=(--device cuda --generations 200 --population 16 --samples 64 --seq-len 512
                     --stages 2048,16384:16,32768:8 --evaluations 3000 --min-loop-s "$MIN_LOOP_S" --size-workers 16)
    EVALUATIONS=${EVALUATIONS:-20000}
    evopress_args=(--device cuda --compile "$COMPILE" --size-workers 16 --evaluations "$EVALUATIONS"
                   --population 64 --samples 64 --seq-len 512 --stages 2048,16384:16,32768:8)
    ccds_args=(--device cuda --space bits --seeds "$CCDS_SEEDS" --jobs 6 --threads 2 --size-workers 8
               --generations 16 --population 16 --samples 32 --seq-len 512 --reserve-s 100)
    evop_args=(--device cuda --seeds 0,1,2 --jobs 3 --threads 2 --size-workers 8 --drop 8 --generations 30
               --population 32 --samples 64 --seq-len 512 --stages 2048,16384:16,32768:8 --reserve-s 80)
    paths_args=(--device cuda --compile-need-s 40 --profile
                --runs reduce-overhead:free:64x512,reduce-overhead:trees:64x512,reduce-overhead:free:4x512,reduce-overhead:trees:4x512)
    floor_args=(--device cuda --compile-need-s 90 --profile)
    kl_args=(--device cuda)
    klcheck_args=(--device cuda)
    default_deadline=(throughput=520 evopress=520 ccds=480 evop=480 floor=480 klcheck=300)
fi
mkdir -p "$WORK" "$OUT"

deadline_of() {  # DEADLINE_S, else the phase's default
    local phase=$1 pair
    [ -n "${DEADLINE_S:-}" ] && { echo "$DEADLINE_S"; return; }
    for pair in "${default_deadline[@]}"; do [ "${pair%%=*}" = "$phase" ] && echo "${pair#*=}"; done
}

throughput() {  # every variant with its own search loop (--full-only none: cuda_graphs too)
    local deadline; deadline=$(deadline_of throughput)
    echo "== throughput: variants $VARIANTS, deadline $deadline s ($(date -u +%T))"
    rm -rf "$WORK/throughput"
    timeout $(( deadline + 60 )) "$PY" benchmarks/search_throughput.py "${throughput_args[@]}" --variants "$VARIANTS" \
        --full-only none --deadline-s "$deadline" --out "$WORK/throughput" ${THROUGHPUT_EXTRA:-}
    echo "search_throughput exit $? at $SECONDS s"
    bash scripts/device/collect.sh throughput "$WORK"/throughput/throughput.{md,json}
    cat "$WORK/throughput/throughput.md" 2> /dev/null
}

evopress_call() {  # one call of evopress_scale.py: $1 = export (1) or search only (0)
    local deadline=$1 export=$2 extra=()
    [ "$export" = 1 ] && extra=(--export-partial --reserve-s "$EXPORT_RESERVE_S") || extra=(--reserve-s 20)
    echo "-- evopress_scale ($([ "$export" = 1 ] && echo "search, then export" || echo "search only")), deadline $deadline s, compile $COMPILE ($(date -u +%T))"
    timeout $(( deadline + 60 )) "$PY" benchmarks/evopress_scale.py "${evopress_args[@]}" --deadline-s "$deadline" \
        "${extra[@]}" --out "$WORK/evopress"
    echo "evopress_scale exit $? at $SECONDS s"
}

evopress() {  # first call: search only; second call (calls.json there): resume and export
    local deadline export; deadline=$(deadline_of evopress)
    echo "== evopress: $EVALUATIONS evaluations, deadline $deadline s ($(date -u +%T))"
    export=$EXPORT
    if [ "$export" = auto ]; then
        if [ -f "$WORK/evopress/calls.json" ]; then export=1
        elif [ "$SMOKE" = 1 ]; then evopress_call "$deadline" 0; export=1  # both calls here: stop, then resume
        else export=0; fi
    fi
    evopress_call "$deadline" "$export"
    local d=$WORK/evopress parts=() p
    for p in "$d"/*.md "$d"/*.json "$d"/report "$d"/search/{spec.json,best.toml} "$d"/artifacts/*/manifest.json; do
        [ -e "$p" ] && parts+=("$p")
    done
    [ ${#parts[@]} -gt 0 ] && bash scripts/device/collect.sh evopress "${parts[@]}"
    # the journal (~1 kB an evaluation: ~20 MB at 20,000) on its own, compressed: over collect's 4 MB
    [ -f "$d/search/journal.jsonl" ] && gzip -c "$d/search/journal.jsonl" > "$OUT/evopress_journal.jsonl.gz" && \
        echo "$OUT/evopress_journal.jsonl.gz: $(stat -c %s "$OUT/evopress_journal.jsonl.gz") bytes"
    cat "$d/calls.json" 2> /dev/null; cat "$d/evopress_scale.md" 2> /dev/null
}

experiment() {  # ccds or evop: tables, results and logs under $WORK/NAME (bulky files in $WORK/NAME-work)
    local name=$1 script=$2 deadline; shift 2
    deadline=$(deadline_of "$name")
    echo "== $name: $script, deadline $deadline s ($(date -u +%T))"
    timeout $(( deadline + 60 )) "$PY" "benchmarks/$script" "$@" --deadline-s "$deadline" --out "$WORK/$name" \
        --work-dir "$WORK/$name-work"
    echo "$script exit $? at $SECONDS s"
    bash scripts/device/collect.sh "$name" "$WORK/$name"
    cat "$WORK/$name/${script%.py}.md" 2> /dev/null
}

floor() {  # kl_kernel.py, attention_paths.py, forward_floor.py, one after the other (timings want the GPU alone)
    local deadline first second; deadline=$(deadline_of floor)
    echo "== floor: deadline $deadline s ($(date -u +%T))"
    rm -rf "$WORK/floor"
    timeout 150 "$PY" benchmarks/kl_kernel.py "${kl_args[@]}" --out "$WORK/floor/kl_kernel"
    echo "kl_kernel exit $? at $SECONDS s"
    first=$(( (deadline - SECONDS) / 2 ))
    timeout $(( first + 60 )) "$PY" benchmarks/attention_paths.py "${paths_args[@]}" --deadline-s "$first" \
        --out "$WORK/floor/attention_paths"
    echo "attention_paths exit $? at $SECONDS s"
    second=$(( deadline - SECONDS ))
    timeout $(( second + 60 )) "$PY" benchmarks/forward_floor.py "${floor_args[@]}" --deadline-s "$second" \
        --out "$WORK/floor/forward_floor"
    echo "forward_floor exit $? at $SECONDS s"
    bash scripts/device/collect.sh floor "$WORK/floor"
    cat "$WORK/floor/kl_kernel/kl_kernel.md" "$WORK/floor/attention_paths/attention_paths.md" \
        "$WORK/floor/forward_floor/forward_floor.md" 2> /dev/null
}

klcheck() {  # the KL estimate through each path on the same weights, against the exact KL
    local deadline; deadline=$(deadline_of klcheck)
    echo "== klcheck: deadline $deadline s ($(date -u +%T))"
    rm -rf "$WORK/klcheck"
    timeout "$deadline" "$PY" benchmarks/kl_paths_real.py "${klcheck_args[@]}" --out "$WORK/klcheck"
    echo "kl_paths_real exit $? at $SECONDS s"
    bash scripts/device/collect.sh klcheck "$WORK/klcheck"
}

run_phase() {
    case "$1" in
        throughput) throughput ;;
        evopress) evopress ;;
        ccds) experiment ccds ccds_vs_random.py "${ccds_args[@]}" ${CCDS_EXTRA:-} ;;
        evop) experiment evop evop_vs_shortgpt.py "${evop_args[@]}" ${EVOP_EXTRA:-} ;;
        floor) floor ;;
        klcheck) klcheck ;;
        *) echo "PHASE: unknown phase '$1' (give throughput, evopress, ccds, evop, floor, klcheck or a comma list)"; return 2 ;;
    esac
}

monitor=
if command -v nvidia-smi > /dev/null; then  # GPU utilisation and memory every 5 s
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 > "$OUT/gpu.csv" 2>&1 &
    monitor=$!
fi
IFS=',' read -r -a phases <<< "$PHASE"
for phase in "${phases[@]}"; do  # validate before anything runs
    case "$phase" in throughput|evopress|ccds|evop|floor|klcheck) ;; *) run_phase "$phase"; exit 2 ;; esac
done
pids=()
for phase in "${phases[@]}"; do
    run_phase "$phase" > "$OUT/$phase.log" 2>&1 &
    pids+=($!)
done
status=0
for i in "${!phases[@]}"; do
    wait "${pids[$i]}" || status=1
    echo "=== ${phases[$i]} ended at $SECONDS s: last lines of $OUT/${phases[$i]}.log"
    tail -30 "$OUT/${phases[$i]}.log"
done
[ -n "$monitor" ] && kill "$monitor"
exit $status
