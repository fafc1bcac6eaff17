#!/usr/bin/env bash
# The measurements of issue 5's bars: the small model, the text-only baseline trained on the same
# data for the same steps, and the shuffled-image control (appendix E.5), on the first 300 of
# SynthMeL's 399 test records, judged by the shipped SynthMeL judges. Resumable (generate-set
# skips finished clips). About 3 x 300 x 4-7 s of CPU.
#
#   scripts/evaluate_small.sh          # after scripts/train_small.sh
#   N=399 scripts/evaluate_small.sh    # the whole test split
#   CONTROL_N=150 scripts/evaluate_small.sh   # the shuffled control on the first 150 only; the
#                                             # model is then also reported on exactly those
#   MODEL=runs/small/music-vaelong/model BASELINE=runs/small/music-text-only-vaelong/model \
#     OUT=runs/eval/vaelong scripts/evaluate_small.sh   # another pair, in its own folder
#   JOBS=2 ...                         # each generate-set as 2 shards side by side, 1 thread each
#   ISSUE=12 ...                       # issue 12's bars instead of issue 5's
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mf=.venv/bin/melfusion
M=data/synthmel-2000/manifest.jsonl
N=${N:-300}
CONTROL_N=${CONTROL_N:-$N}
MODEL=${MODEL:-runs/small/music/model}
BASELINE=${BASELINE:-runs/small/music-text-only/model}
OUT=${OUT:-runs/eval}
JOBS=${JOBS:-1}
[ "$CONTROL_N" -le "$N" ] || { echo "error: CONTROL_N ($CONTROL_N) must be at most N ($N)" >&2; exit 2; }
mkdir -p "$OUT"

generate() {  # generate-set in JOBS shards side by side (one thread each when JOBS > 1)
  if [ "$JOBS" -le 1 ]; then
    $mf generate-set --manifest $M --split test "$@"
    return
  fi
  local pids=() k
  for ((k = 0; k < JOBS; k++)); do
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $mf generate-set --manifest $M --split test --shard "$k/$JOBS" "$@" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
}

generate --limit "$N" --model "$MODEL" --out "$OUT/melfusion"
generate --limit "$N" --model "$BASELINE" --out "$OUT/text-only"
generate --limit "$CONTROL_N" --model "$MODEL" --shuffle-images 0 --out "$OUT/shuffled-images"
for name in melfusion text-only shuffled-images; do
  $mf evaluate --generated "$OUT/$name" --reference $M --split test --subset --name $name \
    --out "$OUT/$name.json"
done
if [ "$CONTROL_N" != "$N" ]; then
  # The model on exactly the control's records: a folder of links to its clips for those records.
  rm -rf "$OUT/melfusion-control"
  mkdir "$OUT/melfusion-control"
  for f in "$OUT"/shuffled-images/*.wav; do
    ln -s "$(realpath "$OUT/melfusion/$(basename "$f")")" "$OUT/melfusion-control/"
  done
  $mf evaluate --generated "$OUT/melfusion-control" --reference $M --split test --subset \
    --name melfusion-control --out "$OUT/melfusion-control.json"
else
  rm -f "$OUT/melfusion-control.json"
fi
cat "$OUT"/*.md
.venv/bin/python scripts/bars_small.py "$OUT" --issue "${ISSUE:-5}"
