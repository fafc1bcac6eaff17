#!/usr/bin/env bash
# Issue 12's diagnostic E, end to end and resumable: with the mode stated in the caption, does a
# frozen mode reader of latents (melfusion.music.reader) make the music follow it where the
# diffusion loss alone (diagnostic A, D's plain arm) and a pitch-class loss (D) did not? Both
# arms continue D's plain model (scripts/diagnostic_d.sh makes it) for 400 steps, alike but for
# reader_weight, side by side at one thread each; 96 validation clips each, judged by the SynthMeL
# judges and the independent listeners. About 1 h of both cores once D's model is there.
#
#   scripts/diagnostic_e.sh          # results in runs/eval/diag-e/*.json
source "$(dirname "${BASH_SOURCE[0]}")/modecap_2000.sh"
out=runs/eval/diag-e
mkdir -p "$out"
$mf train --config configs/small/diag-d-plain.toml --resume --quiet  # D's plain arm, the start
[ -f runs/small/reader/reader.safetensors ] \
  || $py scripts/train_reader.py configs/small/diag-e-plain.toml runs/small/reader
pids=""
for arm in plain reader; do
  [ -f "runs/small/diag-e-$arm/model/model_index.json" ] && continue
  OMP_NUM_THREADS=1 $mf train --config "configs/small/diag-e-$arm.toml" --resume --quiet \
    > "runs/logs/diag-e-$arm.log" 2>&1 &
  pids="$pids $!"
done
for p in $pids; do wait "$p"; done
m=data/synthmel-2000-modecap/manifest.jsonl
for arm in plain reader; do
  [ -f "$out/$arm-listeners.json" ] && continue
  $mf generate-set --manifest $m --split val --limit "$N" --model "runs/small/diag-e-$arm/model" --out "$out/$arm"
  $mf evaluate --generated "$out/$arm" --reference $m --split val --subset --out "$out/$arm-judges.json"
  $py scripts/listen_set.py "$out/$arm" --manifest $m --split val --out "$out/$arm-listeners.json"
done
# What the reader itself hears in both arms' clips (beside the judges and listeners above).
$py scripts/reader_on_clips.py "$out/plain" "$out/reader" --reader runs/small/reader \
  --audio-vae runs/small/audio_vae-long/model --manifest $m > "$out/reader-on-clips.json"
