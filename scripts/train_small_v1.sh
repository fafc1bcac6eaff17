#!/usr/bin/env bash
# The first recipe of the embedded default model (shipped until issue 12), from data to weights:
# its stages 1-3 made the T2I model and the audio VAE that scripts/train_small.sh starts from.
# Every stage resumes from its last checkpoint, so rerunning this script continues where an
# interrupted run stopped. About 4 hours of CPU on 2 cores.
#
#   scripts/train_small.sh            # all stages, then export to melfusion/assets/default
#   STAGES="audio_vae image_vae" scripts/train_small.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin/setup --test
mf=.venv/bin/melfusion
# 1. The data: 2,000 SynthMeL triplets (byte-identical for seed 0; resumable).
$mf data synth --n 2000 --out data/synthmel-2000 --seed 0
$mf data check data/synthmel-2000/manifest.jsonl --headers-only
# 2. The stages, in order; each starts from the previous stage's saved model.
for stage in ${STAGES:-audio_vae image_vae t2i music music-text-only}; do
  $mf train --config "configs/small/$stage.toml" --resume
done
.venv/bin/python scripts/export_default.py runs/small/music/model
