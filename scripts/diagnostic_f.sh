#!/usr/bin/env bash
# Issue 12's diagnostic F, end to end and resumable: is the random tonic what keeps the mode out of
# the music's reach? Both arms continue the text-only pretrain's checkpoint at step 1,700 for 300
# steps, side by side at one thread each, alike but for the captions: the key arm's state the whole
# key ("In Eb minor. ..."), the mode arm's the mode alone (diagnostic A's). 96 validation clips
# each (SynthMeL 10,000's val split), judged by the SynthMeL judges and the independent listeners.
# About 50 min of both cores.
#
#   scripts/diagnostic_f.sh          # results in runs/eval/diag-f/*.json
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/link_state.sh
mf=.venv/bin/melfusion
py=.venv/bin/python
N=${N:-96}
out=runs/eval/diag-f
mkdir -p "$out" runs/logs
src=data/synthmel-10000/manifest.jsonl
[ -f data/synthmel-10000-keycap/manifest.jsonl ] || $py scripts/mode_captions.py $src data/synthmel-10000-keycap --key
[ -f data/synthmel-10000-modecap/manifest.jsonl ] || $py scripts/mode_captions.py $src data/synthmel-10000-modecap
snap=runs/small/music-pretrain/snapshot-1700
# The snapshot is made once, when step 1,700 is the pretrain's latest checkpoint:
#   melfusion train --config configs/small/music-pretrain.toml --export-checkpoint runs/small/music-pretrain/snapshot-1700
[ -f $snap/model_index.json ] \
  || { echo "error: $snap is missing: export the pretrain when step 1700 is its latest checkpoint" >&2; exit 2; }
pids=""
for arm in key mode; do
  [ -f "runs/small/diag-f-$arm/model/model_index.json" ] && continue
  OMP_NUM_THREADS=1 $mf train --config "configs/small/diag-f-$arm.toml" --resume --quiet \
    > "runs/logs/diag-f-$arm.log" 2>&1 &
  pids="$pids $!"
done
for p in $pids; do wait "$p"; done
for arm in key mode; do
  m=data/synthmel-10000-${arm}cap/manifest.jsonl
  [ -f "$out/$arm-listeners.json" ] && continue
  $mf generate-set --manifest $m --split val --limit "$N" --model "runs/small/diag-f-$arm/model" --out "$out/$arm"
  $mf evaluate --generated "$out/$arm" --reference $m --split val --subset --out "$out/$arm-judges.json"
  $py scripts/listen_set.py "$out/$arm" --manifest $m --split val --out "$out/$arm-listeners.json"
done
