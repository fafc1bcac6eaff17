#!/usr/bin/env bash
# Issue 12's diagnostic A, end to end and resumable: can the music follow a mode it is told in
# words? The text-only pretrain's latest checkpoint, fine-tuned 300 steps on captions stating the
# mode, against the same 300 steps on plain captions; 96 validation clips each, judged by the
# SynthMeL judges and the independent listeners. About 40 min of both cores.
#
#   scripts/diagnostic_a.sh          # results in runs/eval/diag-a/*.json
source "$(dirname "${BASH_SOURCE[0]}")/diag_start.sh"
out=runs/eval/diag-a
mkdir -p "$out"
[ -f data/synthmel-10000-modecap/manifest.jsonl ] \
  || $py scripts/mode_captions.py data/synthmel-10000/manifest.jsonl data/synthmel-10000-modecap
[ -f runs/small/music-pretrain/snapshot/model_index.json ] \
  || $mf train --config configs/small/music-pretrain.toml --export-checkpoint runs/small/music-pretrain/snapshot --quiet
for n in mode plain; do
  $mf train --config "configs/small/diag-$n-caption.toml" --resume --quiet
done
for n in mode plain; do
  m=data/synthmel-10000/manifest.jsonl; [ $n = mode ] && m=data/synthmel-10000-modecap/manifest.jsonl
  $mf generate-set --manifest $m --split val --limit "$N" --model "runs/small/diag-$n-caption/model" --out "$out/$n"
  $mf evaluate --generated "$out/$n" --reference $m --split val --subset --out "$out/$n-judges.json"
  $py scripts/listen_set.py "$out/$n" --manifest $m --split val --out "$out/$n-listeners.json"
done
