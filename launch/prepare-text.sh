#!/usr/bin/env bash
# Builds byte-level token shards of real English text for the GPT-2 configs.
#
# Source: the Debian package `fortunes` (with its dependency `fortunes-min`), installed by launch/setup.sh:
# the plain-text fortune files in /usr/share/games/fortunes/ that dpkg lists for those two packages
# (42 files: quotations, jokes, short stories, poems, definitions; entries separated by "%" lines), minus
# the index files (*.dat), the *.u8 links and `ascii-art` (drawings, not prose). Files other packages put
# in the same directory are not used. Each file is one document.
# Size: 2,570,797 bytes -> 2,570,839 tokens (vocabulary 257), of which 2,442,298 train (train-00000.bin)
# and 128,541 validation (val-00000.bin, the last 5%), for fortunes 1:1.99.1-7.3 (Debian 12).
#
# usage: launch/prepare-text.sh [OUT_DIR]     (default .data/text)
# Uses $MPTRAIN, else build/mptrain. Does nothing when the shards are already there.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-.data/text}"
MPTRAIN="${MPTRAIN:-build/mptrain}"
FORTUNE_DIR=/usr/share/games/fortunes

# val is written after train, so its presence means an earlier run finished.
if [ -f "$OUT/train-00000.bin" ] && [ -f "$OUT/val-00000.bin" ]; then
  echo "prepare-text: shards already in $OUT"
  exit 0
fi
if [ ! -x "$MPTRAIN" ]; then
  echo "prepare-text: no mptrain binary at $MPTRAIN (run launch/build.sh, or set MPTRAIN)" >&2
  exit 1
fi
if ! dpkg-query -W -f='${Status}' fortunes 2>/dev/null | grep -q "install ok installed"; then
  echo "prepare-text: the Debian package 'fortunes' is not installed (run launch/setup.sh)" >&2
  exit 1
fi

files=()
while IFS= read -r f; do
  case "$f" in
    "$FORTUNE_DIR"/*.dat | "$FORTUNE_DIR"/*.u8 | "$FORTUNE_DIR"/ascii-art) continue ;;
  esac
  # dpkg also lists directories and the *.u8 symbolic links; keep regular files only.
  [ -f "$f" ] && [ ! -L "$f" ] && files+=("$f")
done < <(dpkg -L fortunes fortunes-min | grep "^$FORTUNE_DIR/[^/]*\$" | LC_ALL=C sort)
if [ "${#files[@]}" -eq 0 ]; then
  echo "prepare-text: no text files found under $FORTUNE_DIR" >&2
  exit 1
fi

mkdir -p "$OUT"
"$MPTRAIN" tokenize --out "$OUT" --val-fraction 0.05 "${files[@]}"
