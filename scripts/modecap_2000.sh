# Sourced by issue 12's diagnostics D and E (scripts/diagnostic_d.sh, diagnostic_e.sh): the shared
# start. Strict mode, the repository root, the state links, $mf, $py, $N (validation clips, 96 by
# default), the data (SynthMeL 2,000 and its captions stating the mode), and the further-trained
# audio VAE. All of it resumes.
source "$(dirname "${BASH_SOURCE[0]}")/diag_start.sh"
$mf data synth --n 2000 --out data/synthmel-2000 --seed 0 --quiet
[ -f data/synthmel-2000-modecap/manifest.jsonl ] \
  || $py scripts/mode_captions.py data/synthmel-2000/manifest.jsonl data/synthmel-2000-modecap
$mf train --config configs/small/audio_vae-long.toml --resume --quiet
