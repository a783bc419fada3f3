#!/usr/bin/env bash
# Installs tconst from the project's build BUILD_DIR (its tconst::precompiled already built) into a
# temporary prefix and builds tests/consumer against the installed package with find_package:
# header-only, and against tconst::precompiled with a unit compiled without OpenMP beside it; runs
# both on MODEL and checks that they print the same tokens and logits' bits. Then builds it with
# tconst as a subdirectory (header-only). The three builds run side by side.
# Usage: run_consumer_test.sh SOURCE_DIR BUILD_DIR WORK_DIR MODEL
set -euo pipefail
src=$1 build=$2 work=$3 model=$4
jobs=${TCONST_JOBS:-2}
rm -rf "$work" && mkdir -p "$work"
cmake --install "$build" --prefix "$work/prefix" >/dev/null
test -f "$work/prefix/include/tconst/tconst.hpp"
test -n "$(find "$work/prefix" -name libtconst_precompiled.a)"
# build NAME CMAKE_ARGS...: configures and builds the consumer in $work/NAME, output in NAME.log.
build() {
  local name=$1
  shift
  { cmake -S "$src/tests/consumer" -B "$work/$name" -G Ninja "$@" &&
    cmake --build "$work/$name" -j "$jobs"; } >"$work/$name.log" 2>&1 ||
    { cat "$work/$name.log"; return 1; }
}
pids=()
for link in tconst precompiled; do
  build "app-$link" -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_BUILD_TYPE=Release \
    -DCONSUMER_LINK="$link" -DCONSUMER_MIXED="$([ "$link" = precompiled ] && echo ON || echo OFF)" &
  pids+=($!)
done
# tconst as a subdirectory: none of tconst's tests, tools or its compiled part get built.
# Unoptimised: what is checked here is the build, and -O0 compiles fastest.
build sub -DTCONST_SOURCE_DIR="$src" -DCMAKE_BUILD_TYPE=Debug -DCONSUMER_MIXED=OFF &
pids+=($!)
for pid in "${pids[@]}"; do wait "$pid"; done
for link in tconst precompiled; do
  "$work/app-$link/consumer" "$model" | tee "$work/$link.out"
done
# Header-only and precompiled: the same tokens and the same bits of every logit they chose by.
head -n 2 "$work/tconst.out" > "$work/a" && head -n 2 "$work/precompiled.out" > "$work/b"
cmp "$work/a" "$work/b"
test ! -e "$work/sub/tconst/examples/tconst"
test ! -e "$work/sub/tconst/libtconst_precompiled.a"
"$work/sub/consumer" "$model"
echo "consumer: header-only and precompiled builds agree"
