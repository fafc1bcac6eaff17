"""Procedural images whose colour and texture carry a piece's mode and energy.

- mode: major pieces get warm hues and a high mean luminance; minor pieces get blue, violet
  or grey hues and a low mean luminance.
- energy: driving pieces get many small elements, high contrast and hard edges; calm pieces
  get a few large soft shapes and low contrast.
- the scene (neon grid, stage, fields, ocean, ...) shows the genre; the kind (natural scene,
  animation, poster, painting or sketch) is drawn in MeLBench's proportions.

After drawing, the luminance mean and spread are pulled into the band of the image's
(mode, energy), so that the labels are always visible no matter what the scene draws.
"""
from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 256
LUMA = np.array([0.299, 0.587, 0.114])
# target (mean luminance range) per mode and (luminance std range) per energy, in [0, 1]
MEAN_BAND = {"major": (0.58, 0.78), "minor": (0.14, 0.34)}
STD_BAND = {"driving": (0.20, 0.28), "calm": (0.04, 0.09)}


def palette(rng: np.random.Generator, mode: str, k: int = 6) -> list[tuple[int, int, int]]:
    """k colours: warm and light for major, cool (blue/violet) or grey and dark for minor."""
    cols = []
    grey = mode == "minor" and rng.random() < 0.25
    for _ in range(k):
        if mode == "major":
            h = rng.uniform(-25, 58) % 360
            s, v = rng.uniform(0.45, 0.95), rng.uniform(0.65, 1.0)
        else:
            h = rng.uniform(195, 285)
            s = rng.uniform(0.03, 0.15) if grey else rng.uniform(0.35, 0.85)
            v = rng.uniform(0.15, 0.6)
        r, g, b = colorsys.hsv_to_rgb(h / 360.0, s, v)
        cols.append((int(r * 255), int(g * 255), int(b * 255)))
    return cols


def _jitter(c: tuple[int, int, int], rng: np.random.Generator, amount: int = 18) -> tuple[int, int, int]:
    return tuple(int(np.clip(x + rng.integers(-amount, amount + 1), 0, 255)) for x in c)


# ---------------------------------------------------------------- scene motifs

def _sky(img: Image.Image, top, bottom) -> None:
    w, h = img.size
    t = np.linspace(0, 1, h)[:, None, None]
    grad = (np.array(top)[None, None, :] * (1 - t) + np.array(bottom)[None, None, :] * t)
    img.paste(Image.fromarray(np.repeat(grad, w, axis=1).astype(np.uint8)))


def _skyline(d, w, h, rng, pal, n, base):
    for _ in range(n):
        bw = int(rng.integers(w // 14, w // 5))
        x = int(rng.integers(-bw // 2, w))
        top = int(rng.integers(h // 5, base - 10))
        d.rectangle([x, top, x + bw, base], fill=_jitter(pal[2], rng))
        for _ in range(int(n * 0.8)):
            wx, wy = x + int(rng.integers(0, max(1, bw - 4))), int(rng.integers(top, base))
            d.rectangle([wx, wy, wx + 3, wy + 4], fill=pal[4])


def _hills(d, w, h, rng, pal, n, base):
    for i in range(max(2, n // 3)):
        cy = base + i * 12 - int(rng.integers(0, h // 6))
        cx, rx = int(rng.integers(0, w)), int(rng.integers(w // 3, w))
        d.ellipse([cx - rx, cy - rx // 3, cx + rx, cy + rx], fill=_jitter(pal[2 + i % 3], rng))


def _grid(d, w, h, rng, pal, n, base):
    d.rectangle([0, base, w, h], fill=pal[1])
    for i in range(-n, n + 1):
        d.line([(w / 2 + i * 4, base), (w / 2 + i * w / max(n, 1) * 1.5, h)], fill=pal[4], width=2)
    for k in range(1, max(3, n // 2)):
        y = base + (h - base) * (k / max(3, n // 2)) ** 1.8
        d.line([(0, y), (w, y)], fill=pal[4], width=2)


def _stage(d, w, h, rng, pal, n, base):
    d.rectangle([0, base, w, h], fill=pal[2])
    for _ in range(max(2, n // 4)):
        x = int(rng.integers(0, w))
        d.polygon([(x, 0), (x - w // 6, base), (x + w // 6, base)], fill=_jitter(pal[4], rng, 10))
    for _ in range(max(1, n // 5)):
        x = int(rng.integers(10, w - 10))
        d.ellipse([x - 8, base - 60, x + 8, base - 44], fill=pal[0 if rng.random() < 0.5 else 3])
        d.rectangle([x - 10, base - 44, x + 10, base], fill=pal[3])


def _waves(d, w, h, rng, pal, n, base):
    for k in range(max(3, n // 2)):
        y0 = base + k * (h - base) / max(3, n // 2)
        amp, ph = rng.uniform(2, 8), rng.uniform(0, 6.28)
        pts = [(x, y0 + amp * math.sin(x / rng.uniform(8, 30) + ph)) for x in range(0, w + 8, 8)]
        d.line(pts, fill=_jitter(pal[2 + k % 3], rng), width=int(rng.integers(2, 6)))


def _columns(d, w, h, rng, pal, n, base):
    d.rectangle([0, base, w, h], fill=pal[2])
    m = max(3, n // 3)
    for i in range(m):
        x = (i + 0.5) * w / m
        d.rectangle([x - w / (4 * m), h // 5, x + w / (4 * m), base], fill=pal[3])
        d.pieslice([x - w / (2 * m), h // 5 - w / (2 * m), x + w / (2 * m), h // 5 + w / (2 * m)], 180, 360, fill=pal[4])


def _trees(d, w, h, rng, pal, n, base):
    for _ in range(n):
        x, s = int(rng.integers(0, w)), int(rng.integers(12, 50))
        y = base + int(rng.integers(-10, 20))
        d.polygon([(x, y - 2 * s), (x - s // 2, y), (x + s // 2, y)], fill=_jitter(pal[3], rng))


def _peaks(d, w, h, rng, pal, n, base):
    for k in range(max(2, n // 3)):
        x, s = int(rng.integers(-20, w + 20)), int(rng.integers(40, 120))
        d.polygon([(x, base - s), (x - s, base + 5), (x + s, base + 5)], fill=_jitter(pal[2 + k % 3], rng))


def _houses(d, w, h, rng, pal, n, base):
    for _ in range(max(2, n // 2)):
        x, s = int(rng.integers(0, w - 20)), int(rng.integers(18, 40))
        d.rectangle([x, base - s, x + s, base], fill=_jitter(pal[3], rng))
        d.polygon([(x - 4, base - s), (x + s // 2, base - s - s // 2), (x + s + 4, base - s)], fill=pal[4])


def _beams(d, w, h, rng, pal, n, base):
    for _ in range(max(2, n // 2)):
        x0 = int(rng.integers(0, w))
        d.line([(x0, h), (int(rng.integers(0, w)), 0)], fill=_jitter(pal[4], rng), width=int(rng.integers(2, 8)))
    cells = max(3, n // 3)
    for i in range(cells):
        for j in range(2):
            if rng.random() < 0.5:
                d.rectangle([i * w / cells, base + j * 20, (i + 1) * w / cells - 2, base + j * 20 + 18], fill=pal[3])


def _tables(d, w, h, rng, pal, n, base):
    d.rectangle([0, base, w, h], fill=pal[2])
    for _ in range(max(2, n // 3)):
        x, y = int(rng.integers(10, w - 10)), int(rng.integers(base, h - 10))
        d.ellipse([x - 18, y - 6, x + 18, y + 6], fill=pal[3])
        d.line([(x, y), (x, y - 30)], fill=pal[4], width=2)
        d.ellipse([x - 6, y - 38, x + 6, y - 28], fill=pal[0])


def _flowers(d, w, h, rng, pal, n, base):
    for _ in range(n):
        x, y = int(rng.integers(0, w)), int(rng.integers(base - 20, h))
        r = int(rng.integers(3, 12))
        d.line([(x, y), (x, y + 20)], fill=pal[3], width=2)
        d.ellipse([x - r, y - r, x + r, y + r], fill=_jitter(pal[int(rng.integers(0, len(pal)))], rng))


def _flames(d, w, h, rng, pal, n, base):
    for _ in range(n):
        x, s = int(rng.integers(0, w)), int(rng.integers(15, 70))
        d.polygon([(x, base - 2 * s), (x - s // 2, h), (x + s // 2, h)], fill=_jitter(pal[int(rng.integers(3, 6))], rng))


def _road(d, w, h, rng, pal, n, base):
    d.polygon([(w / 2 - 6, base), (w / 2 + 6, base), (w, h), (0, h)], fill=pal[2])
    for k in range(max(2, n // 3)):
        y = base + (h - base) * (k + 0.5) / max(2, n // 3)
        d.line([(w / 2, y), (w / 2, y + 6 + k * 2)], fill=pal[4], width=2 + k)


def _bunting(d, w, h, rng, pal, n, base):
    for row in range(max(1, n // 6)):
        y = 20 + row * 30
        for x in range(0, w, max(8, 60 - n)):
            d.polygon([(x, y), (x + 12, y), (x + 6, y + 14)], fill=_jitter(pal[int(rng.integers(0, len(pal)))], rng))


def _river(d, w, h, rng, pal, n, base):
    pts = [(w * 0.5 + 40 * math.sin(y / 30.0 + rng.uniform(0, 1)), y) for y in range(base, h + 10, 10)]
    d.line(pts, fill=pal[4], width=int(rng.integers(14, 30)))
    _trees(d, w, h, rng, pal, max(2, n // 2), base)


def _fence(d, w, h, rng, pal, n, base):
    _hills(d, w, h, rng, pal, max(2, n // 2), base)
    for x in range(0, w, max(10, 40 - n)):
        d.rectangle([x, base - 20, x + 4, base + 10], fill=pal[3])
    d.line([(0, base - 14), (w, base - 14)], fill=pal[3], width=3)
    d.rectangle([w * 0.6, base - 60, w * 0.85, base], fill=pal[4])


def _clouds(d, w, h, rng, pal, n, base):
    for _ in range(max(2, n // 2)):
        x, y, r = int(rng.integers(0, w)), int(rng.integers(0, base)), int(rng.integers(15, 60))
        d.ellipse([x - 2 * r, y - r, x + 2 * r, y + r], fill=_jitter(pal[4], rng, 10))


def _bricks(d, w, h, rng, pal, n, base):
    for y in range(0, h, 16):
        for x in range(-(y // 16 % 2) * 16, w, 32):
            d.rectangle([x, y, x + 30, y + 14], fill=_jitter(pal[2], rng, 12))
    for _ in range(max(2, n // 3)):
        x, y, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(10, 50))
        d.ellipse([x - r, y - r // 2, x + r, y + r // 2], fill=pal[int(rng.integers(3, 6))])


def _counter(d, w, h, rng, pal, n, base):
    d.rectangle([0, base, w, h], fill=pal[2])
    for _ in range(max(3, n // 2)):
        x = int(rng.integers(0, w - 8))
        d.rectangle([x, base - int(rng.integers(20, 45)), x + 8, base], fill=_jitter(pal[int(rng.integers(3, 6))], rng))


SCENES = {
    "city": _skyline, "night city": _skyline, "graffiti wall": _bricks, "stage": _stage, "neon grid": _grid,
    "club": _beams, "beach": _waves, "street festival": _bunting, "lounge": _tables, "garden": _flowers,
    "village": _houses, "mountains": _peaks, "jazz club": _tables, "highway": _road, "concert hall": _columns,
    "palace": _columns, "bar": _counter, "delta river": _river, "fire": _flames, "fields": _hills,
    "ranch": _fence, "forest": _trees, "ocean": _waves, "sky": _clouds,
}


# ---------------------------------------------------------------- the four kinds

def _scatter(d, w, h, rng, pal, n, hard: bool):
    """Extra elements: confetti, stars, dots for busy images; a few big soft blobs for calm ones."""
    for _ in range(n):
        c = _jitter(pal[int(rng.integers(0, len(pal)))], rng)
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        if hard:
            s = int(rng.integers(2, 9))
            shape = rng.integers(3)
            if shape == 0:
                d.rectangle([x, y, x + s, y + s], fill=c)
            elif shape == 1:
                d.line([(x, y), (x + int(rng.integers(-20, 21)), y + int(rng.integers(-20, 21)))], fill=c, width=2)
            else:
                d.polygon([(x, y - s), (x - s, y + s), (x + s, y + s)], fill=c)
        else:
            r = int(rng.integers(30, 90))
            d.ellipse([x - r, y - r, x + r, y + r], fill=c)


def _draw_scene(rng, scene, pal, n, w, h, flat: bool) -> Image.Image:
    img = Image.new("RGB", (w, h), pal[0])
    if not flat:
        _sky(img, pal[0], pal[1])
    d = ImageDraw.Draw(img)
    base = int(h * rng.uniform(0.55, 0.75))
    if not flat:
        d.rectangle([0, base, w, h], fill=_jitter(pal[1], rng, 10))
    SCENES[scene](d, w, h, rng, pal, n, base)
    return img


def _outline(img: Image.Image) -> Image.Image:
    """Cartoon ink: dark lines where flat colour regions meet."""
    edges = img.convert("L").filter(ImageFilter.FIND_EDGES).point(lambda v: 255 if v > 12 else 0)
    edges = edges.filter(ImageFilter.MaxFilter(3))
    ink = Image.new("RGB", img.size, (20, 20, 28))
    return Image.composite(ink, img, edges)


def _painterly(img: Image.Image, rng: np.random.Generator, strokes: int) -> Image.Image:
    """Brush strokes that pick up the colour under them, then a mode filter for paint blobs."""
    arr = np.asarray(img)
    d = ImageDraw.Draw(img)
    h, w = arr.shape[:2]
    for _ in range(strokes):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        ang, ln = rng.uniform(0, math.pi), rng.uniform(4, 14)
        c = _jitter(tuple(int(v) for v in arr[y, x]), rng, 22)
        d.line([(x, y), (x + ln * math.cos(ang), y + ln * math.sin(ang))], fill=c, width=int(rng.integers(2, 5)))
    return img.filter(ImageFilter.ModeFilter(3))


def _sketch(img: Image.Image, paper: tuple[int, int, int]) -> Image.Image:
    """Pencil lines of the scene's edges on toned paper."""
    edges = np.asarray(img.convert("L").filter(ImageFilter.FIND_EDGES), dtype=np.float32) / 255.0
    strength = np.clip(edges * 4.0, 0, 1)[..., None]
    paper_arr = np.array(paper, dtype=np.float32)[None, None, :]
    lead = np.array([40, 40, 48], dtype=np.float32)[None, None, :]
    out = paper_arr * (1 - strength) + lead * strength
    return Image.fromarray(out.astype(np.uint8))


def _poster(img: Image.Image, rng: np.random.Generator, pal, hard: bool) -> Image.Image:
    img = img.quantize(colors=5, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).convert("RGB")
    d = ImageDraw.Draw(img)
    w, h = img.size
    m = 10
    d.rectangle([m, m, w - m, h - m], outline=pal[5], width=6)
    # title and credit blocks, as on a gig poster (bars stand in for lettering)
    y = h - 52
    for k in range(3 if hard else 2):
        bw = int(rng.integers(w // 3, w - 40))
        d.rectangle([(w - bw) // 2, y + k * 13, (w + bw) // 2, y + k * 13 + (9 if k == 0 else 5)], fill=pal[4 - k])
    return img


def _normalise(arr: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Scale colour deviations so luminance has `std`, then shift so it has `mean`."""
    x = arr.astype(np.float64) / 255.0
    for _ in range(3):  # clipping moves the statistics a little; a few passes settle them
        lum = x @ LUMA
        m, s = lum.mean(), lum.std() + 1e-6
        x = m + (x - m) * (std / s)
        x = x + (mean - (x @ LUMA).mean())
        x = np.clip(x, 0.0, 1.0)
    return (x * 255.0 + 0.5).astype(np.uint8)


def make_image(rng: np.random.Generator, *, scene: str, mode: str, energy: str, kind: str) -> Image.Image:
    """A SIZE x SIZE RGB image of `scene` in the style of `kind` for a piece's mode and energy."""
    w = h = SIZE
    hard = energy == "driving"
    pal = palette(rng, mode)
    n = int(rng.integers(14, 26)) if hard else int(rng.integers(3, 6))
    flat = kind in ("animation", "poster")
    img = _draw_scene(rng, scene, pal, n, w, h, flat)
    d = ImageDraw.Draw(img)
    _scatter(d, w, h, rng, pal, int(rng.integers(40, 120)) if hard else int(rng.integers(2, 5)), hard)
    if kind == "natural":
        arr = np.asarray(img.filter(ImageFilter.GaussianBlur(0.8 if hard else 5.0)), dtype=np.float64)
        yy, xx = np.mgrid[0:h, 0:w]
        vignette = 1.0 - 0.35 * (((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / (w * w / 2))
        arr = arr * vignette[..., None] + rng.normal(0, 6.0 if hard else 3.0, arr.shape)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    elif kind == "animation":
        img = _outline(img) if hard else img.filter(ImageFilter.GaussianBlur(3.0))
    elif kind == "poster":
        img = _poster(img, rng, pal, hard)
        if not hard:
            img = img.filter(ImageFilter.GaussianBlur(2.5))
    else:  # painting or sketch
        if rng.random() < 0.3:
            img = _sketch(img, pal[0])
            if not hard:
                img = img.filter(ImageFilter.GaussianBlur(1.5))
        else:
            img = _painterly(img, rng, 1500 if hard else 300)
            if not hard:
                img = img.filter(ImageFilter.GaussianBlur(4.0))
    mean = rng.uniform(*MEAN_BAND[mode])
    std = rng.uniform(*STD_BAND[energy])
    return Image.fromarray(_normalise(np.asarray(img.convert("RGB")), mean, std))
