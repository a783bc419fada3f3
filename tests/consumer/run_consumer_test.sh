#!/usr/bin/env bash
# Installs tconst from the project's build BUILD_DIR (its tconst::precompiled already built) into a
# temporary prefix and builds tests/consumer against the installed package with find_package:
# header-only, and against tconst::precompiled with a unit compiled without OpenMP beside it; runs
# both on MODEL and checks that they print the same tokens and logits' bits. Then builds it with
# tconst as a subdirectory (header-only).
# Usage: run_consumer_test.sh SOURCE_DIR BUILD_DIR WORK_DIR MODEL
set -euo pipefail
src=$1 build=$2 work=$3 model=$4
jobs=${TCONST_JOBS:-2}
rm -rf "$work" && mkdir -p "$work"
cmake --install "$build" --prefix "$work/prefix" >/dev/null
test -f "$work/prefix/include/tconst/tconst.hpp"
test -n "$(find "$work/prefix" -name libtconst_precompiled.a)"
for link in tconst precompiled; do
  cmake -S "$src/tests/consumer" -B "$work/app-$link" -G Ninja -DCMAKE_PREFIX_PATH="$work/prefix" \
    -DCMAKE_BUILD_TYPE=Release -DCONSUMER_LINK="$link" \
    -DCONSUMER_MIXED="$([ "$link" = precompiled ] && echo ON || echo OFF)" >/dev/null
  cmake --build "$work/app-$link" -j "$jobs" >/dev/null
  "$work/app-$link/consumer" "$model" | tee "$work/$link.out"
done
# Header-only and precompiled: the same tokens and the same bits of every logit they chose by.
head -n 2 "$work/tconst.out" > "$work/a" && head -n 2 "$work/precompiled.out" > "$work/b"
cmp "$work/a" "$work/b"
# The same program with tconst as a subdirectory: none of tconst's tests, tools or its compiled
# part get built.
cmake -S "$src/tests/consumer" -B "$work/sub" -G Ninja -DTCONST_SOURCE_DIR="$src" \
  -DCMAKE_BUILD_TYPE=Release -DCONSUMER_MIXED=OFF >/dev/null
cmake --build "$work/sub" -j "$jobs" >/dev/null
test ! -e "$work/sub/tconst/examples/tconst"
test ! -e "$work/sub/tconst/libtconst_precompiled.a"
"$work/sub/consumer" "$model"
echo "consumer: header-only and precompiled builds agree"
