"""Pictures the model never saw: drawn in styles SynthMeL never uses, and real photographs graded
warm or cool, each with the labels an independent listener checks the music against.

SynthMeL draws genre scenes (skylines, hills, stages, ...) in five kinds, with warm-light and
blue/violet-dark palettes. The styles here are abstract patterns it never draws (stripes, bokeh,
mosaics, rings, line art, value-noise clouds), with palettes it never uses (pinks and golds for
warm, teals and sea greens beside the blues for cool) and luminance bands that overlap less
tightly with its own. Within a group the geometry is drawn once: the warm and the cool picture
differ only in colour, so a difference in the music's mode is the picture's colour and nothing
else; the busy and the calm picture share the palette.

Labels follow SynthMeL's convention: warm and bright means major, cool and dark minor; busy
(many small, hard-edged, high-contrast elements) means driving, calm (few large soft ones) calm.

The photographs are scikit-image's bundled colour photos (astronaut, cat, coffee, rocket, the
Hubble deep field, a retina, a motorcycle), graded warm/bright or cool/dark, and kept sharp
(busy) or blurred with lowered contrast (calm).
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 256
LUMA = np.array([0.299, 0.587, 0.114])
STYLES = ("stripes", "bokeh", "mosaic", "rings", "lines", "clouds")
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "motorcycle_left")
# mean luminance bands: wider than SynthMeL's (0.58-0.78 major, 0.14-0.34 minor)
WARM_LUMA, COOL_LUMA = (0.50, 0.72), (0.18, 0.40)


@dataclass(frozen=True)
class Picture:
    name: str
    image: Image.Image
    warm: bool          # warm/bright (major) or cool/dark (minor)
    busy: bool          # busy (driving) or calm
    group: str          # pictures of a group share geometry or photo, caption and seed
    source: str         # "drawn" or "photo"


def _palette(rng: np.random.Generator, warm: bool, k: int = 5) -> list[tuple[int, int, int]]:
    cols = []
    for _ in range(k):
        if warm:
            h = rng.choice([rng.uniform(330, 360), rng.uniform(0, 50)])  # pinks, reds, oranges, golds
            s, v = rng.uniform(0.35, 0.85), rng.uniform(0.7, 1.0)
        else:
            h = rng.uniform(160, 245)  # sea greens, teals, blues
            s, v = rng.uniform(0.3, 0.8), rng.uniform(0.15, 0.55)
        r, g, b = colorsys.hsv_to_rgb((h % 360) / 360.0, s, v)
        cols.append((int(r * 255), int(g * 255), int(b * 255)))
    return cols


def _stripes(d, rng, pal, busy):
    n = int(rng.integers(24, 40)) if busy else int(rng.integers(2, 4))
    angle = rng.uniform(0, math.pi)
    cx, cy = SIZE / 2, SIZE / 2
    L = SIZE * 1.5
    ux, uy = math.cos(angle), math.sin(angle)
    for i in range(n):
        a0 = -L / 2 + i * L / n
        pts = []
        for off, along in ((a0, -L), (a0, L), (a0 + L / n, L), (a0 + L / n, -L)):
            pts.append((cx + ux * off - uy * along, cy + uy * off + ux * along))
        d.polygon(pts, fill=pal[i % len(pal)] if busy else pal[int(rng.integers(len(pal)))])


def _bokeh(d, rng, pal, busy):
    for _ in range(int(rng.integers(140, 220)) if busy else int(rng.integers(3, 6))):
        r = rng.uniform(3, 12) if busy else rng.uniform(50, 110)
        x, y = rng.uniform(0, SIZE, 2)
        d.ellipse([x - r, y - r, x + r, y + r], fill=pal[int(rng.integers(len(pal)))])


def _mosaic(img, rng, pal, busy):
    n = int(rng.integers(150, 250)) if busy else int(rng.integers(4, 7))
    seeds = rng.uniform(0, SIZE, (n, 2))
    colours = np.array([pal[int(rng.integers(len(pal)))] for _ in range(n)], dtype=np.float64)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    dist = (xx[..., None] - seeds[:, 0]) ** 2 + (yy[..., None] - seeds[:, 1]) ** 2
    near = np.argsort(dist, axis=-1)[..., :2]
    arr = colours[near[..., 0]]
    if busy:  # dark grout between cells
        d0 = np.take_along_axis(dist, near[..., :1], -1)[..., 0]
        d1 = np.take_along_axis(dist, near[..., 1:2], -1)[..., 0]
        arr[(np.sqrt(d1) - np.sqrt(d0)) < 1.5] *= 0.25
    img.paste(Image.fromarray(arr.astype(np.uint8)))


def _rings(d, rng, pal, busy):
    cx, cy = rng.uniform(0.2, 0.8, 2) * SIZE
    step = rng.uniform(3, 6) if busy else rng.uniform(60, 90)
    r = SIZE * 1.5
    i = 0
    while r > 0:
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=pal[i % len(pal)])
        r -= step
        i += 1


def _lines(d, rng, pal, busy):
    for _ in range(int(rng.integers(250, 400)) if busy else int(rng.integers(3, 5))):
        if busy:
            x, y = rng.uniform(0, SIZE, 2)
            a = rng.uniform(0, 2 * math.pi)
            ln = rng.uniform(10, 40)
            d.line([x, y, x + ln * math.cos(a), y + ln * math.sin(a)], fill=pal[int(rng.integers(len(pal)))], width=2)
        else:
            pts = [(x, SIZE / 2 + rng.uniform(-90, 90) * math.sin(x / SIZE * math.pi * rng.uniform(0.5, 1.5)))
                   for x in np.linspace(-10, SIZE + 10, 24)]
            d.line(pts, fill=pal[int(rng.integers(len(pal)))], width=int(rng.integers(30, 60)))


def _clouds(img, rng, pal, busy):
    """Value noise summed over octaves, mapped through the palette as a gradient."""
    octaves = (32, 64, 128) if busy else (2, 3)
    field = np.zeros((SIZE, SIZE))
    for i, cells in enumerate(octaves):
        grid = rng.random((cells + 1, cells + 1))
        small = Image.fromarray((grid * 255).astype(np.uint8)).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
        field += np.asarray(small, dtype=np.float64) / 255.0 * (1.0 if busy else 0.5 ** i)
    field = (field - field.min()) / (np.ptp(field) + 1e-9)
    stops = np.array(sorted(pal, key=lambda c: sum(c)), dtype=np.float64)
    pos = field * (len(stops) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(stops) - 2)
    t = (pos - lo)[..., None]
    arr = stops[lo] * (1 - t) + stops[lo + 1] * t
    img.paste(Image.fromarray(arr.astype(np.uint8)))


def _luma_normalise(arr: np.ndarray, mean: float, std: float | None) -> np.ndarray:
    """Pull the luminance mean (and spread, when given) to targets, keeping the hues."""
    lum = arr @ LUMA
    s = lum.std()
    target = lum if std is None else (lum - lum.mean()) * (std / max(s, 1e-6)) + lum.mean()
    target = target - target.mean() + mean
    scale = (target / np.maximum(lum, 1e-3))[..., None]
    return np.clip(arr * scale, 0, 1)


def draw(style: str, warm: bool, busy: bool, seed: int) -> Image.Image:
    """One abstract picture; the geometry depends on (style, seed, busy), the colours on warm too."""
    geometry = np.random.default_rng([seed, STYLES.index(style), int(busy)])
    colours = np.random.default_rng([seed, STYLES.index(style), 7])
    pal = _palette(colours, warm)
    # The geometry draws palette indices only, so warm and cool share it exactly.
    img = Image.new("RGB", (SIZE, SIZE), pal[0])
    if style in ("mosaic", "clouds"):
        {"mosaic": _mosaic, "clouds": _clouds}[style](img, geometry, pal, busy)
    else:
        {"stripes": _stripes, "bokeh": _bokeh, "rings": _rings, "lines": _lines}[style](
            ImageDraw.Draw(img), geometry, pal, busy)
    if not busy:
        img = img.filter(ImageFilter.GaussianBlur(10))
    arr = np.asarray(img, dtype=np.float64) / 255.0
    lo, hi = WARM_LUMA if warm else COOL_LUMA
    mean = lo + (hi - lo) * np.random.default_rng([seed, STYLES.index(style), 9]).random()
    arr = _luma_normalise(arr, mean, 0.22 if busy else 0.06)
    return Image.fromarray((arr * 255).round().astype(np.uint8))


def photo(name: str) -> Image.Image:
    """One of scikit-image's bundled photographs, centre-cropped square, SIZE x SIZE."""
    from pathlib import Path

    import skimage

    folder = Path(skimage.__file__).parent / "data"
    path = next((p for p in (folder / f"{name}.png", folder / f"{name}.jpg") if p.is_file()), None)
    if path is None:
        from melfusion.errors import MelFusionError

        raise MelFusionError(f"scikit-image carries no photograph {name!r} in {folder}")
    with Image.open(path) as im:
        img = im.convert("RGB")
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return img.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def grade(img: Image.Image, warm: bool, busy: bool) -> Image.Image:
    """A photograph graded warm and bright or cool and dark; calm: blurred, contrast lowered."""
    if not busy:
        img = img.filter(ImageFilter.GaussianBlur(6))
    arr = np.asarray(img, dtype=np.float64) / 255.0
    # Half the picture's own colour, half its luminance in the grade's colour: even a red-orange
    # photograph turns blue-green when graded cool.
    tint = np.array([1.25, 0.95, 0.6]) if warm else np.array([0.55, 0.95, 1.4])
    arr = np.clip(0.5 * arr + 0.5 * (arr @ LUMA)[..., None] * tint, 0, 1)
    lum = arr @ LUMA
    arr = _luma_normalise(arr, 0.62 if warm else 0.26, None if busy else 0.5 * lum.std())
    return Image.fromarray((arr * 255).round().astype(np.uint8))


def pictures(seeds: int = 2, photos: bool = True) -> list[Picture]:
    """The held-out set: `seeds` groups of four per style (warm/cool x busy/calm), then the photos."""
    out = []
    for seed in range(seeds):
        for style in STYLES:
            group = f"{style}-{seed}"
            for warm in (True, False):
                for busy in (True, False):
                    name = f"{group}-{'warm' if warm else 'cool'}-{'busy' if busy else 'calm'}"
                    out.append(Picture(name, draw(style, warm, busy, seed), warm, busy, group, "drawn"))
    if photos:
        try:
            import skimage  # noqa: F401
        except ImportError:
            from melfusion.errors import MelFusionError

            raise MelFusionError("the photographs need scikit-image (pip install scikit-image)") from None
        for name in PHOTOS:
            base = photo(name)
            for warm in (True, False):
                for busy in (True, False):
                    tag = f"photo-{name}-{'warm' if warm else 'cool'}-{'busy' if busy else 'calm'}"
                    out.append(Picture(tag, grade(base, warm, busy), warm, busy, f"photo-{name}", "photo"))
    return out
