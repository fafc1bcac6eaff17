"""How much the text encoder's token states change when only a caption's mode word flips (issue 12).

    .venv/bin/python scripts/mode_word_states.py    # reads runs/small/diag-e-plain/model, SynthMeL 2,000 modecap

It checks whether a caption's "in a minor key" reaches the music UNet as something it could tell
apart from "in a major key". For the first 40 captions that state the mode, it compares the
encoder's token states with those of the same caption with the mode word flipped, and then with
those of another caption.
"""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from melfusion.loading import load_model  # noqa: E402

MODEL, MANIFEST, N = "runs/small/diag-e-plain/model", "data/synthmel-2000-modecap/manifest.jsonl", 40


def flipped(caption: str) -> str:
    if "in a minor key" in caption:
        return caption.replace("in a minor key", "in a major key")
    return caption.replace("in a major key", "in a minor key")


def main() -> int:
    enc = load_model(MODEL).text_encoder
    captions = [json.loads(line)["caption"] for line in open(MANIFEST) if line.strip()][:N]
    with torch.no_grad():
        states, mask = enc.encode(captions)
        flips, _ = enc.encode([flipped(c) for c in captions])
    mask = mask.bool()
    flip = [(states[i] - flips[i]).norm(dim=-1)[mask[i]] for i in range(N)]
    other = [(states[i] - states[(i + 1) % N]).norm(dim=-1)[mask[i] & mask[(i + 1) % N]] for i in range(N)]
    print(f"token-state change, mode flipped: mean {torch.cat(flip).mean():.3f} "
          f"max {torch.stack([d.max() for d in flip]).mean():.3f}")
    print(f"token-state change, another caption: mean {torch.cat(other).mean():.3f}")
    print(f"norm of states {states[mask].norm(dim=-1).mean():.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
