#!/usr/bin/env bash
# Issue 12's diagnostic H, end to end and resumable: with the tonic handed to the network (key
# conditioning, melfusion.music.keys), does the mode stated in the caption come through?
# configs/small/diag-h-keyed.toml (diagnostic F's mode arm plus the key), then 96 validation clips
# of SynthMeL 10,000 composed in each record's own tonic, judged by the SynthMeL judges and the
# independent listeners (tonic heard, key heard, scale). THREADS (default 1) sets the training's
# threads, so it can run beside the pretrain.
#
#   scripts/diagnostic_h.sh          # results in runs/eval/diag-h/*.json
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/link_state.sh
mf=.venv/bin/melfusion
py=.venv/bin/python
N=${N:-96}
out=runs/eval/diag-h
mkdir -p "$out" runs/logs
m=data/synthmel-10000-modecap/manifest.jsonl
[ -f $m ] || $py scripts/mode_captions.py data/synthmel-10000/manifest.jsonl data/synthmel-10000-modecap
snap=runs/small/music-pretrain/snapshot-1700
[ -f $snap/model_index.json ] || { echo "error: $snap is missing (see scripts/diagnostic_f.sh)" >&2; exit 2; }
model=runs/small/diag-h-keyed/model
[ -f $model/model_index.json ] \
  || OMP_NUM_THREADS=${THREADS:-1} $mf train --config configs/small/diag-h-keyed.toml --resume --quiet
if [ ! -f "$out/keyed-listeners.json" ]; then
  $mf generate-set --manifest $m --split val --limit "$N" --model $model --out "$out/keyed" --keys record
  $mf evaluate --generated "$out/keyed" --reference $m --split val --subset --out "$out/keyed-judges.json"
  $py scripts/listen_set.py "$out/keyed" --manifest $m --split val --out "$out/keyed-listeners.json"
fi
