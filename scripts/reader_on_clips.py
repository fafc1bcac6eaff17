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
    ap.add_argument("--audio-vae", required=True, help="a saved model folder with the audio VAE the reader reads")
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--crop", type=int, default=64, help="latent frames per crop")
    args = ap.parse_args(argv)
    import torch

    from melfusion.audio.io import read_audio
    from melfusion.audio.mel import MelSpectrogram, fit_frames
    from melfusion.audio.vae import AudioVAE
    from melfusion.errors import MelFusionError
    from melfusion.music.reader import LatentReader, accuracy, label_tensor

    torch.set_grad_enabled(False)
    try:
        vae = AudioVAE.from_pretrained(Path(args.audio_vae) / "audio_vae").eval()
        reader = LatentReader.load(args.reader)
        records = {}
        for line in open(args.manifest):
            if line.strip():
                r = json.loads(line)
                records[r["id"]] = r
        mel = MelSpectrogram(vae_mel_config(args.audio_vae))
        out = {}
        for folder in args.folders:
            files = sorted(Path(folder).glob("*.wav"))
            missing = [f.stem for f in files if f.stem not in records]
            if not files or missing:
                raise MelFusionError(f"{folder}: no WAVs, or WAVs of records not in the manifest ({missing[:1]})")
            frames = 1008
            m = torch.stack([fit_frames(mel(torch.from_numpy(read_audio(str(f), 16000))), frames)[0] for f in files])
            z = torch.cat([vae.encode(m[i:i + 16]) for i in range(0, len(m), 16)])
            y = label_tensor([records[f.stem] for f in files], reader.config.heads)
            out[folder] = {"clips": len(files), "whole": accuracy(reader, z, y),
                           "crop": accuracy(reader, z, y, frames=args.crop)}
        print(json.dumps(out, indent=2))
    except MelFusionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def vae_mel_config(model_dir):
    """The mel settings saved with the model (the default ones when the folder has none)."""
    from melfusion.audio.mel import MelConfig

    path = Path(model_dir) / "model_index.json"
    index = json.loads(path.read_text()) if path.is_file() else {}
    mel = index.get("mel")
    return MelConfig(**mel) if isinstance(mel, dict) else MelConfig()


if __name__ == "__main__":
    raise SystemExit(main())
