#!/usr/bin/env bash
# Issue 12, after session 13's ship: the shipped fine-tune and its text-only baseline each continued
# for 2,000 more steps at half the learning rates (configs/small/music-finetune-more.toml,
# music-finetune-text-only-more.toml), side by side at one thread each (about 3 hours on the two
# cores); when the baseline is done the fine-tune is stopped politely and finishes on both threads.
# Resumable: rerun the same command after a stop. With EVAL=1 it then measures the pair against
# the shipped default (scripts/evaluate_issue12.sh, results in runs/eval/issue12-more).
#
#   EVAL=1 nohup nice scripts/train_more.sh > runs/logs/train_more.log 2>&1 &
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/link_state.sh
mf=.venv/bin/melfusion
mkdir -p runs/logs
for m in runs/small/music-finetune/model runs/small/music-finetune-text-only/model; do
  [ -f "$m/model_index.json" ] || { echo "error: $m is missing: run scripts/train_small.sh first" >&2; exit 2; }
done
done_model() { [ -f "runs/small/$1/model/model_index.json" ]; }
if ! done_model music-finetune-text-only-more; then
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $mf train --config configs/small/music-finetune-text-only-more.toml --resume --quiet &
  baseline=$!
  pid=
  if ! done_model music-finetune-more; then
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $mf train --config configs/small/music-finetune-more.toml --resume --quiet &
    pid=$!
  fi
  trap 'kill -TERM $baseline $pid 2>/dev/null' INT TERM
  rc=0
  wait $baseline || rc=$?
  [ -n "$pid" ] && { kill -TERM $pid 2>/dev/null || true; wait $pid || true; }
  trap - INT TERM
  [ $rc = 0 ] || { echo "error: the baseline's training failed (exit $rc)" >&2; exit $rc; }
fi
done_model music-finetune-more || $mf train --config configs/small/music-finetune-more.toml --resume --quiet
if [ "${EVAL:-0}" = 1 ]; then
  MODEL=runs/small/music-finetune-more/model BASELINE=runs/small/music-finetune-text-only-more/model \
    OUT=runs/eval/issue12-more SHIPPED=runs/eval/gs300-shipped-s13 scripts/evaluate_issue12.sh
fi
