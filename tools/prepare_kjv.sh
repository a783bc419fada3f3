#!/bin/sh
# Build the byte-level KJV corpus used to train the bundled demo models.
#
# Needs the Debian package bible-kjv (`apt-get install bible-kjv`), which
# provides the `bible` program. Output, all plain ASCII:
#   OUTDIR/kjv.txt        the whole text (default OUTDIR: build/kjv)
#   OUTDIR/kjv_train.txt  the first ~95 % (cut at a line boundary)
#   OUTDIR/kjv_val.txt    the last ~5 %, also copied to models/kjv_val.txt
# Format: a "Book N" heading line per chapter (a blank line before every
# heading but the first), then one verse per line with the verse number and
# the program's hard line wraps removed. The output is deterministic.
set -eu

outdir=${1:-build/kjv}
root=$(cd "$(dirname "$0")/.." && pwd)
command -v bible >/dev/null 2>&1 || {
  echo "prepare_kjv.sh: 'bible' not found; apt-get install bible-kjv" >&2
  exit 1
}
mkdir -p "$outdir"

bible gen1:1-rev22:21 | awk '
  function flush() { if (verse != "") { print verse; verse = "" } }
  /^[ \t]*$/ { flush(); blank = 1; next }
  /^  [0-9]+ / { flush(); sub(/^  [0-9]+ /, ""); verse = $0; blank = 0; next }
  blank {                      # a non-verse line after a blank is a heading
    flush()
    if (nhead++) print ""
    print
    blank = 0
    next
  }
  { verse = verse " " $0 }     # continuation of a hard-wrapped verse
  END { flush() }
' > "$outdir/kjv.txt"

# Hold out the last 5 % of bytes, starting at the first line after the cut.
total=$(wc -c < "$outdir/kjv.txt")
cut=$((total * 95 / 100))
head -c "$cut" "$outdir/kjv.txt" | wc -l > "$outdir/.lines"
lines=$(cat "$outdir/.lines"); rm -f "$outdir/.lines"
head -n "$lines" "$outdir/kjv.txt" > "$outdir/kjv_train.txt"
tail -n +"$((lines + 1))" "$outdir/kjv.txt" > "$outdir/kjv_val.txt"
mkdir -p "$root/models"
cp "$outdir/kjv_val.txt" "$root/models/kjv_val.txt"

wc -c "$outdir/kjv.txt" "$outdir/kjv_train.txt" "$outdir/kjv_val.txt"
