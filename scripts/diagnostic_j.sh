#!/usr/bin/env bash
# Issue 12's diagnostic J, end to end and resumable: the mode as a label. The keyed pretrain with
# its key label widened to tonic x mode (configs/small/diag-j-modelabel.toml, 1,000 steps on the
# plain captions, about 40 minutes on the two cores alone), then 96 validation clips of SynthMeL
# 10,000, each told its record's key with the mode ("Ab minor"), key guidance on, judged by the
# SynthMeL judges and the independent listeners, and the third's contrast (third_clarity.py). The
# reference is the keyed pretrain on the same records (runs/eval/pretrain-key-4000, mode at chance).
# THREADS (default 2) sets the threads.
#
#   scripts/diagnostic_j.sh          # results in runs/eval/diag-j/*.json
source "$(dirname "${BASH_SOURCE[0]}")/diag_start.sh"
out=runs/eval/diag-j
mkdir -p "$out"
m=data/synthmel-10000/manifest.jsonl
[ -f runs/small/music-pretrain-key/model/model_index.json ] \
  || { echo "error: the keyed pretrain has not finished: run scripts/train_small.sh first" >&2; exit 2; }
export OMP_NUM_THREADS=${THREADS:-2} MKL_NUM_THREADS=${THREADS:-2}
model=runs/small/diag-j-modelabel/model
[ -f $model/model_index.json ] || $mf train --config configs/small/diag-j-modelabel.toml --resume --quiet
judge "$out/modelabel" $m "$out/modelabel" --model $model --keys record --key-guidance on --quiet
[ -f "$out/third.txt" ] || $py scripts/third_clarity.py --manifest $m --split val "$out/modelabel" | tee "$out/third.txt"
