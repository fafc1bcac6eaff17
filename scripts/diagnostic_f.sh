#!/usr/bin/env bash
# Issue 12's diagnostic F, end to end and resumable: is the random tonic what keeps the mode out of
# the music's reach? Both arms continue the text-only pretrain's checkpoint at step 1,700 for 300
# steps, side by side at one thread each, alike but for the captions: the key arm's state the whole
# key ("In Eb minor. ..."), the mode arm's the mode alone (diagnostic A's). 96 validation clips
# each (SynthMeL 10,000's val split), judged by the SynthMeL judges and the independent listeners.
# About 50 min of both cores.
#
#   scripts/diagnostic_f.sh          # results in runs/eval/diag-f/*.json
source "$(dirname "${BASH_SOURCE[0]}")/diag_start.sh"
out=runs/eval/diag-f
mkdir -p "$out"
src=data/synthmel-10000/manifest.jsonl
[ -f data/synthmel-10000-keycap/manifest.jsonl ] || $py scripts/mode_captions.py $src data/synthmel-10000-keycap --key
[ -f data/synthmel-10000-modecap/manifest.jsonl ] || $py scripts/mode_captions.py $src data/synthmel-10000-modecap
need_snapshot 1700
pids=""
for arm in key mode; do
  [ -f "runs/small/diag-f-$arm/model/model_index.json" ] && continue
  OMP_NUM_THREADS=1 $mf train --config "configs/small/diag-f-$arm.toml" --resume --quiet \
    > "runs/logs/diag-f-$arm.log" 2>&1 &
  pids="$pids $!"
done
for p in $pids; do wait "$p"; done
for arm in key mode; do
  judge "$out/$arm" data/synthmel-10000-${arm}cap/manifest.jsonl "$out/$arm" --model "runs/small/diag-f-$arm/model"
done
