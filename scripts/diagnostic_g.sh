#!/usr/bin/env bash
# Issue 12's diagnostic G, end to end and resumable: does the picture reach the music through the
# fixed synapse? configs/small/diag-g-synapse.toml (the music-finetune recipe, 300 steps from the
# text-only pretrain's checkpoint at step 1,700), then 96 validation clips of SynthMeL 10,000 with
# their own pictures and with the pictures shuffled among the records (appendix E.5's control),
# judged by the SynthMeL judges and the independent listeners. THREADS (default 1) sets the
# training's threads, so it can run beside the pretrain.
#
#   scripts/diagnostic_g.sh          # results in runs/eval/diag-g/*.json
source "$(dirname "${BASH_SOURCE[0]}")/diag_start.sh"
out=runs/eval/diag-g
mkdir -p "$out"
m=data/synthmel-10000/manifest.jsonl
need_snapshot 1700
model=runs/small/diag-g-synapse/model
[ -f $model/model_index.json ] \
  || OMP_NUM_THREADS=${THREADS:-1} $mf train --config configs/small/diag-g-synapse.toml --resume --quiet
judge "$out/own" $m "$out/own" --model $model
judge "$out/shuffled" $m "$out/shuffled" --model $model --shuffle-images 1
