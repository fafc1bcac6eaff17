"""How much the text encoder's token states change when only a caption's mode word flips (issue 12).

    .venv/bin/python scripts/mode_word_states.py    # reads runs/small/diag-e-plain/model, SynthMeL 2,000 modecap

It checks whether a caption's "in a minor key" reaches the music UNet as something it could tell
apart from "in a major key". For the first 40 captions that state the mode, it compares the
encoder's token states with those of the same caption with the mode word flipped, and then with
those of another caption.
"""
import json, torch
from melfusion.loading import load_model
pipe = load_model("runs/small/diag-e-plain/model")
enc = pipe.text_encoder
rows = [json.loads(l) for l in open("data/synthmel-2000-modecap/manifest.jsonl")][:40]
caps = [r["caption"] for r in rows]
flip = [c.replace("in a minor key", "in a major key") if "minor key" in c else c.replace("in a major key", "in a minor key") for c in caps]
with torch.no_grad():
    a, ma = enc.encode(caps); b, mb = enc.encode(flip)
print(a.shape)
d_flip = [(a[i] - b[i]).norm(dim=-1)[ma[i].bool()] for i in range(len(caps))]
d_other = [(a[i] - a[(i + 1) % len(caps)]).norm(dim=-1)[(ma[i] * ma[(i+1) % len(caps)]).bool()] for i in range(len(caps))]
print("token-state change, mode flipped: mean %.3f max %.3f" % (torch.cat(d_flip).mean(), torch.stack([d.max() for d in d_flip]).mean()))
print("token-state change, another caption: mean %.3f" % torch.cat(d_other).mean())
print("norm of states %.3f" % a[ma.bool()].norm(dim=-1).mean())
