#!/usr/bin/env bash
# A copy of a saved model with its audio VAE taken from another saved model (the music stage's init
# when the audio VAE was trained further after the T2I stage: configs/small/audio_vae-long.toml).
#
#   scripts/with_audio_vae.sh runs/small/t2i/model runs/small/audio_vae-long/model runs/small/t2i-vaelong/model
set -euo pipefail
src=$1 vae=$2 out=$3
for d in "$src" "$vae"; do
  [ -f "$d/model_index.json" ] || { echo "error: not a saved model: $d" >&2; exit 2; }
done
[ ! -e "$out" ] || { echo "error: $out exists" >&2; exit 2; }
mkdir -p "$(dirname "$out")"
tmp=$(mktemp -d "$(dirname "$out")/.tmp-XXXXXX")
cp -r "$src"/. "$tmp"/
rm -rf "$tmp/audio_vae"
cp -r "$vae/audio_vae" "$tmp/audio_vae"
mv "$tmp" "$out"
echo "$out: $src with the audio VAE of $vae"
