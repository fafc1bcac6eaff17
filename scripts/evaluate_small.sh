#!/usr/bin/env bash
# The measurements of issue 5's bars: the small model, the text-only baseline trained on the same
# data for the same steps, and the shuffled-image control (appendix E.5), on the first 300 of
# SynthMeL's 399 test records, judged by the shipped SynthMeL judges. Resumable (generate-set
# skips finished clips). About 3 x 300 x 4-7 s of CPU.
#
#   scripts/evaluate_small.sh          # after scripts/train_small.sh
#   N=399 scripts/evaluate_small.sh    # the whole test split
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mf=.venv/bin/melfusion
M=data/synthmel-2000/manifest.jsonl
N=${N:-300}
mkdir -p runs/eval
$mf generate-set --manifest $M --split test --limit "$N" --model runs/small/music/model --out runs/eval/melfusion
$mf generate-set --manifest $M --split test --limit "$N" --model runs/small/music-text-only/model --out runs/eval/text-only
$mf generate-set --manifest $M --split test --limit "$N" --model runs/small/music/model --shuffle-images 0 \
  --out runs/eval/shuffled-images
for name in melfusion text-only shuffled-images; do
  $mf evaluate --generated runs/eval/$name --reference $M --split test --subset --name $name \
    --out runs/eval/$name.json
done
cat runs/eval/*.md
.venv/bin/python scripts/bars_small.py runs/eval
