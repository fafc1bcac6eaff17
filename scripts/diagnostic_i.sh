#!/usr/bin/env bash
# Issue 12's diagnostic I, end to end and resumable: diagnostic A (can the music follow a mode it
# is told in words?) repeated on the finished keyed pretrain, which follows the tonic it is given.
# configs/small/diag-i-modecap-keyed.toml (300 steps on the captions that state the mode), then 96
# validation clips of SynthMeL 10,000 on those captions, each in its record's own tonic, judged by
# the SynthMeL judges and the independent listeners. The reference is the pretrain itself on the
# same records (runs/eval/pretrain-key-4000: plain captions, mode at chance by construction).
# THREADS (default 1) sets the training's threads, so it can run beside the fine-tunes.
#
#   scripts/diagnostic_i.sh          # results in runs/eval/diag-i/*.json
source "$(dirname "${BASH_SOURCE[0]}")/diag_start.sh"
out=runs/eval/diag-i
mkdir -p "$out"
m=data/synthmel-10000-modecap/manifest.jsonl
[ -f $m ] || $py scripts/mode_captions.py data/synthmel-10000/manifest.jsonl data/synthmel-10000-modecap
[ -f runs/small/music-pretrain-key/model/model_index.json ] \
  || { echo "error: the keyed pretrain has not finished: run scripts/train_small.sh first" >&2; exit 2; }
model=runs/small/diag-i-modecap-keyed/model
[ -f $model/model_index.json ] \
  || OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1} $mf train --config configs/small/diag-i-modecap-keyed.toml --resume --quiet
OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1} judge "$out/modecap" $m "$out/modecap" --model $model --keys record --quiet
