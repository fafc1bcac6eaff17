"""What a saved latent reader (melfusion.music.reader) hears in generated clips (issue 12, diagnostic E).

    .venv/bin/python scripts/reader_on_clips.py runs/eval/diag-e/plain runs/eval/diag-e/reader \\
        --reader runs/small/reader --audio-vae runs/small/audio_vae-long/model \\
        --manifest data/synthmel-2000-modecap/manifest.jsonl

Each WAV goes back through the mel and the audio VAE's encoder; the reader's accuracy against
the records' labels is printed per folder, for whole clips and for one random crop of each
(the training crop length, 64 latent frames). Set beside the judge and the independent
listeners, it shows whether a model learned the mode or only what the reader keys on.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+", help="folders of generated WAVs named by record id")
    ap.add_argument("--reader", required=True)
    ap.add_argument("--audio-vae", required=True, help="a saved model folder whose audio VAE and mel the reader reads")
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--crop", type=int, default=64, help="latent frames per crop")
    args = ap.parse_args(argv)
    import dataclasses

    import torch

    from melfusion.data.manifest import read_manifest
    from melfusion.errors import MelFusionError
    from melfusion.loading import quiet_libraries
    from melfusion.music.reader import LatentReader, accuracy, label_tensor
    from melfusion.pipeline import MelFusionPipeline
    from melfusion.training.caches import build_audio_latents, build_mels

    torch.set_grad_enabled(False)
    quiet_libraries()
    try:
        pipe = MelFusionPipeline.from_pretrained(args.audio_vae)
        reader = LatentReader.load(args.reader)
        entries = {e.id: e for e in read_manifest(args.manifest)[0]}
        frames = pipe.frames_for(pipe.defaults.get("duration_s", 10.0))
        out = {}
        for folder in args.folders:
            files = sorted(Path(folder).glob("*.wav"))
            missing = [f.stem for f in files if f.stem not in entries]
            if not files or missing:
                raise MelFusionError(f"{folder}: no WAVs, or WAVs of records not in the manifest ({missing[:1]})")
            # The generated clips in place of the records' own audio, read as the music stage reads audio.
            clips = [dataclasses.replace(entries[f.stem], audio_path=f) for f in files]
            z = build_audio_latents(build_mels(clips, pipe.mel, frames, progress=False), pipe.audio_vae, progress=False)
            y = label_tensor([e.record for e in clips], reader.config.heads)
            out[folder] = {"clips": len(files), "whole": accuracy(reader, z, y),
                           "crop": accuracy(reader, z, y, frames=args.crop)}
        print(json.dumps(out, indent=2))
    except MelFusionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
