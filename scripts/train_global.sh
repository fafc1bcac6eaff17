#!/usr/bin/env bash
# Issue 12, after diagnostic J (session 18): the shipped fine-tune continued for 1,000 steps with the
# synapse's global path (configs/small/music-global.toml) and, beside it, without it (its baseline,
# music-keep.toml), one thread each (about 1.5-2 hours on the two cores). Resumable: rerun the same
# command after a stop. With EVAL=1 it then judges both on the first 96 validation records (diag_start.sh's `judge`) (the
# teacher's three passes at the shipped settings: a trained model carries no distilled network) and
# runs the held-out pictures and photographs through both (runs/eval/global/, runs/heldout/global-*).
#
#   EVAL=1 nohup nice scripts/train_global.sh > runs/logs/train_global.log 2>&1 &
source "$(dirname "${BASH_SOURCE[0]}")/diag_start.sh"
m=data/synthmel-2000/manifest.jsonl
[ -f $m ] || { echo "error: $m is missing: .venv/bin/melfusion data synth --n 2000 --out data/synthmel-2000" >&2; exit 2; }
done_model() { [ -f "runs/small/$1/model/model_index.json" ]; }
pids=()
for run in music-global music-keep; do
  if ! done_model $run; then
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $mf train --config configs/small/$run.toml --resume --quiet &
    pids+=($!)
  fi
done
trap 'kill -TERM ${pids[*]} 2>/dev/null' INT TERM
rc=0
for p in "${pids[@]}"; do wait $p || rc=$?; done
trap - INT TERM
[ $rc = 0 ] || { echo "error: a training run failed (exit $rc)" >&2; exit $rc; }
if [ "${EVAL:-0}" = 1 ]; then
  mkdir -p runs/eval/global
  for run in music-global music-keep; do
    judge runs/eval/global/$run $m runs/eval/global/$run --model runs/small/$run/model --quiet
    [ -f runs/heldout/global-$run/report.json ] || \
      $py scripts/heldout_listen.py --model runs/small/$run/model --out runs/heldout/global-$run
  done
fi
