#!/bin/bash
# Copy the files of NVIDIA's public SANA code that bench/nvidia_native.py runs (the list in bench/nvidia_files.txt,
# about 1 MB) into DST, from a checkout SRC or from a git directory at a commit (GIT_DIR@COMMIT, through
# `git archive`). DST can then be passed as --nvidia-src. Lines of the list marked "? " exist at some commits only
# and are copied where present; any other missing file is an error that names it.
#   bash bench/nvidia_subset.sh ~/src/Sana nvidia_sana
#   bash bench/nvidia_subset.sh /path/to/Sana/.git@40151c8 nvidia_sana
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: bash bench/nvidia_subset.sh SRC|GIT_DIR@COMMIT DST" >&2
  exit 2
fi
SRC=$1
DST=$2
LIST=$(dirname "$0")/nvidia_files.txt
mapfile -t REQUIRED < <(grep -v -e '^#' -e '^?' -e '^$' "$LIST")
mapfile -t OPTIONAL < <(sed -n 's/^? //p' "$LIST")
mkdir -p "$DST"
if [[ "$SRC" == *@* ]]; then
  GIT=${SRC%@*}
  COMMIT=${SRC##*@}
  if ! git --git-dir="$GIT" rev-parse --verify -q "$COMMIT^{commit}" > /dev/null; then
    echo "error: $GIT has no commit $COMMIT (SRC must be a checkout or GIT_DIR@COMMIT)" >&2
    exit 1
  fi
  mapfile -t PRESENT < <(git --git-dir="$GIT" ls-tree -r --name-only "$COMMIT" -- "${REQUIRED[@]}" "${OPTIONAL[@]}")
  # git archive walks the whole tree; objects missing from a partial clone outside these paths are reported on
  # stderr without harm, so its messages are dropped and the files checked below instead.
  git --git-dir="$GIT" archive "$COMMIT" -- "${PRESENT[@]}" 2> /dev/null | tar -x -C "$DST"
else
  if [ ! -d "$SRC" ]; then
    echo "error: $SRC is not a directory (SRC must be a checkout or GIT_DIR@COMMIT)" >&2
    exit 1
  fi
  for f in "${REQUIRED[@]}" "${OPTIONAL[@]}"; do
    if [ -f "$SRC/$f" ]; then
      mkdir -p "$DST/$(dirname "$f")"
      cp "$SRC/$f" "$DST/$f"
    fi
  done
fi
missing=()
for f in "${REQUIRED[@]}"; do
  [ -f "$DST/$f" ] || missing+=("$f")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "error: $SRC lacks ${missing[*]} (bench/nvidia_native.py needs every file of $LIST not marked '? ')" >&2
  exit 1
fi
echo "copied $(find "$DST" -type f | wc -l) files, $(du -sb "$DST" | cut -f1) bytes, to $DST"
