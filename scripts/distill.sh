#!/usr/bin/env bash
# Guidance distillation of the shipped default (issue 13): the teacher's guided outputs on
# SynthMeL training records, then the student fitted to them, then the model folder with the
# student beside the teacher. Every step resumes where it stopped: run this same command again.
#   nohup nice scripts/distill.sh > runs/logs/distill.log 2>&1 &
# CLIPS, VAL_CLIPS, STEPS, SYNAPSE_LR (the synapse's own rate; the shipped student used 1e-3),
# MODEL (default: the shipped default) and OUT override the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/link_state.sh
bin/setup >/dev/null
py=.venv/bin/python
manifest=data/synthmel-2000/manifest.jsonl
[ -f "$manifest" ] || .venv/bin/melfusion data synth --n 2000 --out data/synthmel-2000 --seed 0 --quiet
out=${OUT:-runs/distill/default}
model=()
[ -n "${MODEL:-}" ] && model=(--model "$MODEL")
# Training records for the student; validation records after the first 96 (those the quality
# tables of docs/speed.md judge) for its validation loss.
$py -m melfusion.training.distill collect "${model[@]}" --manifest $manifest --split train \
  --clips "${CLIPS:-720}" --out "$out/teacher-train" --quiet
$py -m melfusion.training.distill collect "${model[@]}" --manifest $manifest --split val --skip 96 \
  --clips "${VAL_CLIPS:-48}" --out "$out/teacher-val" --quiet
$py -m melfusion.training.distill train "${model[@]}" --data "$out/teacher-train" --val "$out/teacher-val" \
  --steps "${STEPS:-600}" ${SYNAPSE_LR:+--synapse-lr "$SYNAPSE_LR"} --out "$out/run" --quiet
$py -m melfusion.training.distill export "${model[@]}" --run "$out/run" --out "$out/model"
