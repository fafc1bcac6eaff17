#!/usr/bin/env bash
# Issue 12, session 20: the shipped fine-tune continued with its synapse kept
# (configs/small/music-keep-1500.toml) on both threads, then (EVAL=1) the first 300 test records at
# the shipped settings (the teacher's three passes: a trained model carries no distilled network),
# judged and listened (diag_start.sh's `judge`), and the held-out pictures and photographs. Resumable: rerun the same command after a stop.
#
#   EVAL=1 nohup nice scripts/train_keep.sh > runs/logs/train_keep.log 2>&1 &
source "$(dirname "${BASH_SOURCE[0]}")/diag_start.sh"
m=data/synthmel-2000/manifest.jsonl
[ -f $m ] || $mf data synth --n 2000 --out data/synthmel-2000 --seed 0 --quiet
run=music-keep-1500
model=runs/small/$run/model
[ -f $model/model_index.json ] || $mf train --config configs/small/$run.toml --resume --quiet
if [ "${EVAL:-0}" = 1 ]; then
  out=runs/eval/$run-test300
  SPLIT=test N=300 judge $out $m $out --model $model --quiet
  [ -f runs/heldout/$run/report.json ] || $py scripts/heldout_listen.py --model $model --out runs/heldout/$run
fi
