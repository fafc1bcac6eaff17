#!/usr/bin/env bash
# Issue 12's diagnostic H, end to end and resumable: with the tonic handed to the network (key
# conditioning, melfusion.music.keys), does the mode stated in the caption come through?
# configs/small/diag-h-keyed.toml (diagnostic F's mode arm plus the key), then 96 validation clips
# of SynthMeL 10,000 composed in each record's own tonic, judged by the SynthMeL judges and the
# independent listeners (tonic heard, key heard, scale). THREADS (default 1) sets the training's
# threads, so it can run beside the pretrain.
#
#   scripts/diagnostic_h.sh          # results in runs/eval/diag-h/*.json
source "$(dirname "${BASH_SOURCE[0]}")/diag_start.sh"
out=runs/eval/diag-h
mkdir -p "$out"
m=data/synthmel-10000-modecap/manifest.jsonl
[ -f $m ] || $py scripts/mode_captions.py data/synthmel-10000/manifest.jsonl data/synthmel-10000-modecap
need_snapshot 1700
model=runs/small/diag-h-keyed/model
[ -f $model/model_index.json ] \
  || OMP_NUM_THREADS=${THREADS:-1} $mf train --config configs/small/diag-h-keyed.toml --resume --quiet
judge "$out/keyed" $m "$out/keyed" --model $model --keys record
