#!/usr/bin/env bash
# Issue 12, session 20: after scripts/train_keep.sh has trained music-keep-1500, the steps towards
# shipping it, cheapest verdict first, each skipped when its output is there (rerun to resume):
#   1. the held-out pictures and photographs through the teacher (runs/heldout/music-keep-1500);
#   2. the guidance-distilled student as the shipped one was made (scripts/distill.sh: 480 training
#      clips, 800 steps, the synapse on 1e-3), exported as a float16 default-style folder;
#   3. the student on the held-out pictures, and on the first 300 test records, judged and listened.
# Nothing here touches melfusion/assets/default: scripts/export_default.py does, by hand.
#   nohup nice scripts/ship_keep.sh > runs/logs/ship_keep.log 2>&1 &
source "$(dirname "${BASH_SOURCE[0]}")/diag_start.sh"
m=data/synthmel-2000/manifest.jsonl
teacher=runs/small/music-keep-1500/model
[ -f $teacher/model_index.json ] || { echo "error: $teacher is missing: run scripts/train_keep.sh first" >&2; exit 2; }
[ -f runs/heldout/music-keep-1500/report.json ] || \
  $py scripts/heldout_listen.py --model $teacher --out runs/heldout/music-keep-1500
d=runs/distill/keep1500
MODEL=$teacher OUT=$d CLIPS=480 STEPS=800 SYNAPSE_LR=1e-3 scripts/distill.sh
student=$d/shipped
[ -f $student/model_index.json ] || $py scripts/export_default.py $d/model --out $student
[ -f runs/heldout/keep1500-student/report.json ] || \
  $py scripts/heldout_listen.py --model $student --out runs/heldout/keep1500-student
out=runs/eval/keep1500-student-test300
SPLIT=test N=300 judge $out $m $out --model $student --quiet
