"""The key a piece is composed in: its tonic, as an extra condition of the music UNet.

Why (issue 12, diagnostic H in docs/model-card.md): with the twelve tonics equally likely, the mean
clip of a major piece and of a minor one are the same to within 0.01% of the latents' variance,
while the tonic alone moves it by 4.6% (genre by 12%). So the mode, the thing the picture should
set, helps the denoiser only once the tonic is known. Given the tonic, major and minor are told
apart by which scale degrees sound, and a picture can say which.

The tonic enters as a class label added to the timestep embedding (diffusers' `num_class_embeds`:
13 entries, the twelve pitch classes and "none"), so it reaches every resnet block. Training
gives each clip its own tonic and drops it to "none" at `drop_key`; at composition a user names
one (`--key Eb`) or, by default, one is drawn from the seed, as SynthMeL's tonics are drawn.

Diagnostic J (a training option, `key_mode = true`; not shipped): the label also carries the mode,
25 entries, the twelve tonics (major), "none", then the twelve tonics again (minor). It asks
whether the music UNet can follow a mode at all once it is handed to it as a label, as the tonic
was followed once it became one. The minor entries start as copies of the tonic's, so the widened
network is the one it came from until training moves it.
"""
from __future__ import annotations

import torch

from melfusion.errors import MelFusionError

TONICS = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
NO_KEY = 12          # the label of "no key given"
KEY_EMBEDS = 13      # twelve tonics and NO_KEY
MODE_KEY_EMBEDS = 25  # diagnostic J: the twelve tonics (major), NO_KEY, the twelve tonics (minor)
MINOR = 13           # a minor key's label is its tonic's + MINOR
_LETTERS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def pitch_class(name: str) -> int:
    """0-11 for a tonic's name: "C", "F#", "Eb", "Bb" (sharps and flats alike; "Gb" == "F#")."""
    name = str(name).strip()
    if not name or name[0].upper() not in _LETTERS or any(c not in "#b" for c in name[1:]):
        raise MelFusionError(f"not a tonic name: {name!r} (one of {', '.join(TONICS)})")
    return (_LETTERS[name[0].upper()] + name.count("#") - name[1:].count("b")) % 12


def record_tonic(record: dict, with_mode: bool = False) -> int:
    """A manifest record's tonic label: the pitch class of its `key` ("Ab minor"), NO_KEY without one;
    `with_mode` (diagnostic J), + MINOR for a minor key."""
    key = record.get("key")
    if not key:
        return NO_KEY
    words = str(key).split()
    minor = with_mode and len(words) > 1 and words[1].lower() == "minor"
    return pitch_class(words[0]) + (MINOR if minor else 0)


def parse_key(value: str | int | None, with_mode: bool = False) -> int | None:
    """A user's key: a tonic name (a trailing "major"/"minor" is allowed and ignored: the picture
    sets the mode), "none" for NO_KEY, or None / "random" for one drawn from the seed. `with_mode`
    (a model of diagnostic J): "minor" gives the minor label, a bare tonic the major one."""
    if value is None:
        return None
    if isinstance(value, int):
        top = MODE_KEY_EMBEDS - 1 if with_mode else NO_KEY
        if not 0 <= value <= top:
            raise MelFusionError(f"a key label is 0-{top}, got {value}")
        return value
    text = str(value).strip()
    if text.lower() == "random":
        return None
    if text.lower() == "none":
        return NO_KEY
    words = text.split()
    minor = False
    if len(words) == 2 and words[1].lower() in ("major", "minor"):
        text, minor = words[0], words[1].lower() == "minor"
    elif len(words) != 1:
        raise MelFusionError(f"not a key: {value!r} (a tonic such as Eb or F#, 'random' or 'none')")
    return pitch_class(text) + (MINOR if minor and with_mode else 0)


def key_name(label: int) -> str:
    if label == NO_KEY:
        return "none"
    return TONICS[label - MINOR] + " minor" if label > NO_KEY else TONICS[label]


def has_key(unet) -> bool:
    """Whether a music UNet takes the tonic (it has the class embedding of KEY_EMBEDS entries, or
    MODE_KEY_EMBEDS for a model of diagnostic J)."""
    n = unet.config.get("num_class_embeds")
    if n is not None and n not in (KEY_EMBEDS, MODE_KEY_EMBEDS):
        raise MelFusionError(f"this music UNet has {n} class embeddings; melfusion's key conditioning uses "
                             f"{KEY_EMBEDS} ({MODE_KEY_EMBEDS} with the mode)")
    return n is not None


def takes_mode(unet) -> bool:
    """Whether a music UNet's key label also carries the mode (diagnostic J)."""
    return has_key(unet) and unet.config.get("num_class_embeds") == MODE_KEY_EMBEDS


def draw_keys(generators, batch: int) -> list[int]:
    """A tonic per clip, from the clip's seed (its generator's initial seed), so the same seed
    gives the same key; without generators, at random."""
    if generators is None:
        return torch.randint(0, 12, (batch,)).tolist()
    if isinstance(generators, (list, tuple)):
        seeds = [int(g.initial_seed()) * 1000003 for g in generators]
    else:
        seeds = [int(generators.initial_seed()) * 1000003 + i for i in range(batch)]
    return [int(torch.randint(0, 12, (1,), generator=torch.Generator().manual_seed(s % 2 ** 63))) for s in seeds]


def _with_class_embeds(unet, n: int, old_rows: torch.Tensor | None):
    """The same UNet rebuilt with `n` class embeddings: the rows `old_rows` ends up with
    (None: zeros), every other weight and the attention processors the original's."""
    from diffusers import UNet2DConditionModel

    if not isinstance(unet, UNet2DConditionModel):
        raise MelFusionError("key conditioning is added to a diffusers music UNet (train with the full runtime)")
    config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    config["num_class_embeds"] = n
    new = UNet2DConditionModel(**config)
    state = {k: v for k, v in unet.state_dict().items() if k != "class_embedding.weight"}
    missing, unexpected = new.load_state_dict(state, strict=False)
    if unexpected or missing != ["class_embedding.weight"]:
        raise MelFusionError(f"cannot set the key embedding: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        new.class_embedding.weight.copy_(old_rows if old_rows is not None else torch.zeros_like(new.class_embedding.weight))
    new.set_attn_processor(dict(unet.attn_processors))
    return new.to(unet.dtype).train(unet.training).requires_grad_(any(p.requires_grad for p in unet.parameters()))


def with_key_embedding(unet):
    """The same UNet with a zero-initialised key embedding added (`num_class_embeds` = KEY_EMBEDS):
    its output is bit-identical to the original's for every key until training moves it."""
    if has_key(unet):
        return unet
    return _with_class_embeds(unet, KEY_EMBEDS, None)


def with_mode_embedding(unet):
    """Diagnostic J: the keyed UNet with its key embedding widened to MODE_KEY_EMBEDS entries, the
    minor tonics' rows copies of the tonics' rows, so its output is bit-identical to the original's
    for every tonic, in either mode, until training moves it."""
    if takes_mode(unet):
        return unet
    if not has_key(unet):
        unet = with_key_embedding(unet)
    old = unet.class_embedding.weight.detach()
    return _with_class_embeds(unet, MODE_KEY_EMBEDS, torch.cat([old, old[:NO_KEY]]))
