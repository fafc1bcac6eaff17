#!/usr/bin/env bash
# Issue 12, session 21: the shipped student with its first N denoising steps run by the teacher
# (`teacher_steps`, generate's --teacher-steps) instead of its one pass. For each N in $STEPS
# (default "2 1"): a copy of the shipped default with `teacher_steps: N` in its defaults
# (runs/hybrid/tsN), the held-out pictures and photographs (runs/heldout/student-tsN), then the
# first 300 test records, judged and listened (runs/eval/student-tsN-test300). Each part is
# skipped when its output is there (rerun to resume). Nothing here touches melfusion/assets/default.
#   nohup nice scripts/ship_hybrid.sh > runs/logs/ship_hybrid.log 2>&1 &
source "$(dirname "${BASH_SOURCE[0]}")/diag_start.sh"
m=data/synthmel-2000/manifest.jsonl
[ -f $m ] || $mf data synth --n 2000 --out data/synthmel-2000 --seed 0 --quiet
for n in ${STEPS:-2 1}; do
  model=runs/hybrid/ts$n
  if [ ! -f $model/model_index.json ]; then
    mkdir -p runs/hybrid && rm -rf $model.part && cp -r melfusion/assets/default $model.part
    $py scripts/set_defaults.py $model.part teacher_steps=$n && mv $model.part $model
  fi
  [ -f runs/heldout/student-ts$n/report.json ] || \
    $py scripts/heldout_listen.py --model $model --out runs/heldout/student-ts$n
done
for n in ${STEPS:-2 1}; do
  out=runs/eval/student-ts$n-test300
  SPLIT=test N=300 judge $out $m $out --model runs/hybrid/ts$n --quiet
done
