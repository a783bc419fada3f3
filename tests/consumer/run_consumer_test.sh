#!/usr/bin/env bash
# Installs tconst from SOURCE_DIR into a temporary prefix, builds tests/consumer against the
# installed package with find_package, and runs it on MODEL.
# Usage: run_consumer_test.sh SOURCE_DIR WORK_DIR MODEL
set -euo pipefail
src=$1 work=$2 model=$3
rm -rf "$work" && mkdir -p "$work"
cmake -S "$src" -B "$work/lib" -DTCONST_BUILD_TESTS=OFF -DTCONST_BUILD_EXAMPLES=OFF \
  -DTCONST_BUILD_BENCHMARKS=OFF -DTCONST_INSTALL=ON >/dev/null
cmake --install "$work/lib" --prefix "$work/prefix" >/dev/null
test -f "$work/prefix/include/tconst/tconst.hpp"
cmake -S "$src/tests/consumer" -B "$work/app" -DCMAKE_PREFIX_PATH="$work/prefix" \
  -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$work/app" >/dev/null
"$work/app/consumer" "$model"
# The same program with tconst as a subdirectory: none of tconst's tests or tools get built.
cmake -S "$src/tests/consumer" -B "$work/sub" -DTCONST_SOURCE_DIR="$src" \
  -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$work/sub" >/dev/null
test ! -e "$work/sub/tconst/examples/tconst"
"$work/sub/consumer" "$model"
