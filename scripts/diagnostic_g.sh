#!/usr/bin/env bash
# Issue 12's diagnostic G, end to end and resumable: does the picture reach the music through the
# fixed synapse? configs/small/diag-g-synapse.toml (the music-finetune recipe, 300 steps from the
# text-only pretrain's checkpoint at step 1,700), then 96 validation clips of SynthMeL 10,000 with
# their own pictures and with the pictures shuffled among the records (appendix E.5's control),
# judged by the SynthMeL judges and the independent listeners. THREADS (default 1) sets the
# training's threads, so it can run beside the pretrain.
#
#   scripts/diagnostic_g.sh          # results in runs/eval/diag-g/*.json
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/link_state.sh
mf=.venv/bin/melfusion
py=.venv/bin/python
N=${N:-96}
out=runs/eval/diag-g
mkdir -p "$out" runs/logs
m=data/synthmel-10000/manifest.jsonl
snap=runs/small/music-pretrain/snapshot-1700
[ -f $snap/model_index.json ] || { echo "error: $snap is missing (see scripts/diagnostic_f.sh)" >&2; exit 2; }
model=runs/small/diag-g-synapse/model
[ -f $model/model_index.json ] \
  || OMP_NUM_THREADS=${THREADS:-1} $mf train --config configs/small/diag-g-synapse.toml --resume --quiet
for arm in own shuffled; do
  [ -f "$out/$arm-listeners.json" ] && continue
  extra=""
  [ $arm = shuffled ] && extra="--shuffle-images 1"
  $mf generate-set --manifest $m --split val --limit "$N" --model $model --out "$out/$arm" $extra
  $mf evaluate --generated "$out/$arm" --reference $m --split val --subset --out "$out/$arm-judges.json"
  $py scripts/listen_set.py "$out/$arm" --manifest $m --split val --out "$out/$arm-listeners.json"
done
