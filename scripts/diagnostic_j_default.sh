#!/usr/bin/env bash
# Issue 12's diagnostic J from the shipped default (configs/small/diag-j-default.toml explains why
# not from the keyed pretrain), end to end and resumable: 1,000 steps on SynthMeL 2,000's training
# split (about an hour on the two cores), then 96 validation clips of SynthMeL 2,000 told their
# record's key with its mode ("Ab minor"), and the same clips told the tonic with the other mode
# (the label flipped: if the label works, the judge's mode follows the label, not the record),
# judged by the SynthMeL judges and the independent listeners.
#
#   nohup nice scripts/diagnostic_j_default.sh > runs/logs/diag-j-default.log 2>&1 &
#   # results: runs/eval/diag-j-default/*.json ; rerun the same command to resume after a stop
source "$(dirname "${BASH_SOURCE[0]}")/diag_start.sh"
out=runs/eval/diag-j-default
mkdir -p "$out"
m=data/synthmel-2000/manifest.jsonl
[ -f $m ] || { echo "error: $m is missing: melfusion data synth --n 2000 --out data/synthmel-2000" >&2; exit 2; }
export OMP_NUM_THREADS=${THREADS:-2} MKL_NUM_THREADS=${THREADS:-2}
model=runs/small/diag-j-default/model
[ -f $model/model_index.json ] || $mf train --config configs/small/diag-j-default.toml --resume --quiet
judge "$out/told" $m "$out/told" --model $model --keys record --key-guidance on --quiet
# The same records told the other mode: a manifest whose keys have their modes swapped.
flipped=$out/flipped-manifest.jsonl
[ -f $flipped ] || $py - "$m" "$flipped" <<'PY'
import json, sys
from pathlib import Path
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
rows = []
for line in src.read_text().splitlines():
    r = json.loads(line)
    tonic, mode = r["key"].split()
    r["key"] = f"{tonic} {'major' if mode == 'minor' else 'minor'}"
    for k in ("image", "audio"):
        r[k] = str((src.parent / r[k]).resolve())
    rows.append(r)
dst.write_text("".join(json.dumps(r) + "\n" for r in rows))
PY
# judged against the true records: the judge's mode accuracy there is the share that kept the
# record's mode (low = the label moved the mode)
if [ ! -f "$out/flipped-judges.json" ]; then
  $mf generate-set --manifest $flipped --split val --limit "$N" --out "$out/flipped" --model $model \
    --keys record --key-guidance on --quiet
  $mf evaluate --generated "$out/flipped" --reference $m --split val --subset --out "$out/flipped-judges.json"
  $py scripts/listen_set.py "$out/flipped" --manifest $m --split val --out "$out/flipped-listeners.json"
fi
echo "diagnostic J (default) done: $out"
