#!/usr/bin/env bash
# collect.sh NAME PATH...: one $OUT/NAME.tar.gz of the given files and folders, leaving out files over
# ${COLLECT_MAX_MB:-4} MB (caches: size_cache/, *.safetensors of a run are rebuilt by --resume), so
# that it comes back from the device (at most 8 files of 16 MiB each).
set -euo pipefail
name=$1; shift
list=$(mktemp)
max_k=$(( ${COLLECT_MAX_MB:-4} * 1024 ))
find "$@" -type f -size -"$max_k"k > "$list"
tar -czf "$OUT/$name.tar.gz" -T "$list"
skipped=$(find "$@" -type f -size +"$(( max_k - 1 ))"k | wc -l)
echo "$OUT/$name.tar.gz: $(stat -c %s "$OUT/$name.tar.gz") bytes, $(wc -l < "$list") files ($skipped large ones left out)"
