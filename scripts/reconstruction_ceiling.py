"""What the audio path itself lets through: real test clips re-synthesised without any diffusion.

For each record the clip's log-mel is vocoded directly (`vocoder/`) and after a round trip through
the model's audio VAE (`vae/`), each written as `<id>.wav`; `melfusion evaluate` on those folders
gives the judge accuracies that a perfect music UNet could reach with this VAE and vocoder (the
ceiling for issue 5's genre, mode and energy bars).

    python scripts/reconstruction_ceiling.py --model runs/small/music/model --out runs/eval/recon --limit 300
    melfusion evaluate --generated runs/eval/recon/vae --reference data/synthmel-2000/manifest.jsonl \
        --split test --subset --name vae-roundtrip --out runs/eval/recon-vae.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tqdm import tqdm

from melfusion.audio.io import read_audio, write_wav
from melfusion.audio.mel import MelSpectrogram, fit_frames
from melfusion.metrics.evaluate import load_reference
from melfusion.pipeline import MelFusionPipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--manifest", default="data/synthmel-2000/manifest.jsonl")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    pipe = MelFusionPipeline.from_pretrained(args.model)
    mel = MelSpectrogram(pipe.mel)
    entries = load_reference(args.manifest, args.split)[: args.limit]
    out = Path(args.out)
    for sub in ("vocoder", "vae"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    errors = []
    for entry in tqdm(entries, desc="re-synthesising"):
        if (out / "vae" / f"{entry.id}.wav").exists():
            continue
        wave = torch.from_numpy(read_audio(entry.audio_path, pipe.sample_rate))
        n = wave.shape[-1]
        log_mel = fit_frames(mel(wave), pipe.frames_for(n / pipe.sample_rate))
        recon = pipe.audio_vae.decode(pipe.audio_vae.encode(log_mel))
        errors.append(float((recon - log_mel).abs().mean()))
        write_wav(out / "vocoder" / f"{entry.id}.wav", pipe.vocoder(log_mel)[0, :n].numpy(), pipe.sample_rate)
        write_wav(out / "vae" / f"{entry.id}.wav", pipe.vocoder(recon)[0, :n].numpy(), pipe.sample_rate)
    if errors:
        print(f"{len(errors)} clips; VAE round trip log-mel L1 {sum(errors) / len(errors):.4f}")


if __name__ == "__main__":
    main()
