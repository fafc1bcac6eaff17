#!/usr/bin/env bash
# Issue 12's diagnostic D, end to end and resumable: with the mode stated in the caption, does a
# pitch-class loss on the predicted clean latent make the music follow it where the diffusion
# loss alone did not (diagnostic A)? Two text-only runs from fresh weights, alike but for
# harmony_weight, trained side by side at one thread each; 96 validation clips each, judged by the
# SynthMeL judges and the independent listeners. About 2 h of both cores with the data and the
# audio VAE stage.
#
#   scripts/diagnostic_d.sh          # results in runs/eval/diag-d/*.json
source "$(dirname "${BASH_SOURCE[0]}")/modecap_2000.sh"
out=runs/eval/diag-d
mkdir -p "$out"
# The second run starts once the first has built the shared caches (its config.json is written
# after them), so they are not built twice.
pids=""
for arm in plain harmony; do
  OMP_NUM_THREADS=1 $mf train --config "configs/small/diag-d-$arm.toml" --resume --quiet \
    > "runs/logs/diag-d-$arm.log" 2>&1 &
  pids="$pids $!"
  while [ $arm = plain ] && [ ! -f runs/small/diag-d-plain/config.json ] && kill -0 $! 2>/dev/null; do sleep 10; done
done
for p in $pids; do wait "$p"; done
m=data/synthmel-2000-modecap/manifest.jsonl
for arm in plain harmony; do
  $mf generate-set --manifest $m --split val --limit "$N" --model "runs/small/diag-d-$arm/model" --out "$out/$arm"
  $mf evaluate --generated "$out/$arm" --reference $m --split val --subset --out "$out/$arm-judges.json"
  $py scripts/listen_set.py "$out/$arm" --manifest $m --split val --out "$out/$arm-listeners.json"
done
