# Sourced by issue 12's diagnostics (scripts/diagnostic_*.sh, modecap_2000.sh): the shared start.
# Strict mode, the repository root, the state links, $mf, $py, $N (validation clips, 96 by
# default), runs/logs, and two helpers:
#   need_snapshot STEP        the text-only pretrain's model at STEP ($snap), or a clear error
#   judge DIR MANIFEST REPORT [generate-set options...]
#                             $N clips of MANIFEST's $SPLIT split (val by default) into DIR, then the SynthMeL judges
#                             (REPORT-judges.json) and the listeners (REPORT-listeners.json);
#                             skipped when REPORT-listeners.json is there (it resumes)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/link_state.sh
mf=.venv/bin/melfusion
py=.venv/bin/python
N=${N:-96}
mkdir -p runs/logs

need_snapshot() {
  snap=runs/small/music-pretrain/snapshot-$1
  # made once, when step $1 is the pretrain's latest checkpoint:
  #   melfusion train --config configs/small/music-pretrain.toml --export-checkpoint $snap
  [ -f "$snap/model_index.json" ] \
    || { echo "error: $snap is missing: export the pretrain when step $1 is its latest checkpoint" >&2; exit 2; }
}

judge() {
  local dir=$1 manifest=$2 report=$3
  shift 3
  [ -f "$report-listeners.json" ] && return 0
  local split=${SPLIT:-val}
  $mf generate-set --manifest "$manifest" --split "$split" --limit "$N" --out "$dir" "$@"
  $mf evaluate --generated "$dir" --reference "$manifest" --split "$split" --subset --out "$report-judges.json"
  $py scripts/listen_set.py "$dir" --manifest "$manifest" --split "$split" --out "$report-listeners.json"
}
