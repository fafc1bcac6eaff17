"""Hostile input, fuzzed: mutated image files and odd captions against every place that takes them.

    .venv/bin/python benchmarks/fuzz_inputs.py [--images 500] [--captions 500] [--seed 0] [--no-server]

Makes IMAGES image files (truncated, bit-flipped and spliced PNG/JPEG/WebP/GIF/BMP/TIFF, lying
headers, declared sizes far past the limit, animated GIF and WebP, CMYK, 16-bit and 32-bit
images, EXIF rotations, files that are no image at all) and CAPTIONS captions (control
characters, NUL bytes, right-to-left text, emoji, combining marks, lone surrogates, 10,000
characters, ...), all from SEED, and drives:

  load_image          every image: accepted (an RGB picture, upright as EXIF says) or refused
                      with a one-line MelFusionError; nothing else
  check_prompt        every caption, the same way; accepted ones through the tiny text encoder
  pipeline            a sample of accepted pairs through the tiny model (1 step, 1 s)
  cli                 `melfusion generate` in-process on a sample: exit 0 with the .wav, or exit 2
                      with one `error:` line and no output or temporary file left
  demo (handlers)     the demo's upload preview for every image, the composer on a sample, and its
                      settings with odd values: a result or a message, no half-written folder
  demo (server)       a live demo on loopback: uploads with hostile files and names, the preview
                      route, the queue with odd captions and settings, odd request bodies: no 500
  study (forms)       the study app via Starlette's TestClient: every caption in every form field
                      (start, rate, admin, create), raw hostile bodies, and a create from a
                      manifest whose images are hostile files: no 500, no half-built study

Prints counts per stage (accepted / refused / failures) and each failure. Exit status 1 on any.
The same functions run, smaller, in tests/test_fuzz_inputs.py.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import re
import shutil
import struct
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SLOW_S = 10.0  # any one input taking longer than this is a failure (a decoder that hangs)


@dataclass
class Tally:
    """Counts and failures of one stage."""

    name: str
    accepted: int = 0
    refused: int = 0
    failures: list = field(default_factory=list)
    seconds: float = 0.0
    notes: dict = field(default_factory=dict)

    def fail(self, case: str, what: str) -> None:
        self.failures.append(f"{case}: {what}")

    def line(self) -> str:
        extra = "".join(f", {k} {v}" for k, v in self.notes.items())
        return (f"{self.name:<18} accepted {self.accepted:>4}  refused {self.refused:>4}  failures "
                f"{len(self.failures):>3}  ({self.seconds:.1f} s{extra})")


# -- images --------------------------------------------------------------------------------------

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, raw: bytes, bit_depth: int = 8, color_type: int = 2,
              extra: list[tuple[bytes, bytes]] = ()) -> bytes:
    """A PNG written by hand, so headers can lie with valid CRCs (PIL's verify checks them)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + b"".join(_chunk(k, d) for k, d in extra)
            + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b""))


def picture(w: int = 48, h: int = 32, seed: int = 0) -> Image.Image:
    """An asymmetric RGB picture (distinct corners), so any turn or mirror shows."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 255 // (w + h)], -1)
    arr[: h // 4, : w // 4] = (255, 0, 0)
    arr = np.clip(arr + rng.integers(-8, 8, arr.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def with_orientation(img: Image.Image, orientation: int, fmt: str) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format=fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


# What a viewer shows for each EXIF orientation, from the stored pixels `s` (rows, columns, ...),
# written from the tag's definition (not from PIL's table).
VIEWED = {1: lambda s: s, 2: np.fliplr, 3: lambda s: np.rot90(s, 2), 4: np.flipud,
          5: lambda s: np.rot90(np.fliplr(s), 1), 6: lambda s: np.rot90(s, -1),
          7: lambda s: np.rot90(np.fliplr(s), -1), 8: lambda s: np.rot90(s, 1)}


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def base_images() -> dict[str, bytes]:
    """Well-formed files of every kind the fuzz starts from (small, so thousands decode quickly)."""
    p = picture()
    rgba = p.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(p.size))
    frames = [picture(seed=s) for s in range(3)]
    gray16 = (np.linspace(0, 65535, 48 * 32).reshape(32, 48)).astype(np.uint16)
    rgb16 = np.repeat(gray16[..., None], 3, -1).astype(">u2")
    raw16 = b"".join(b"\x00" + row.tobytes() for row in rgb16)
    out = {
        "rgb.png": _save(p, "PNG"), "rgba.png": _save(rgba, "PNG"), "la.png": _save(rgba.convert("LA"), "PNG"),
        "l.png": _save(p.convert("L"), "PNG"), "p.png": _save(p.quantize(16), "PNG"),
        "p-trns.png": _save(p.quantize(16), "PNG", transparency=0), "1bit.png": _save(p.convert("1"), "PNG"),
        "gray16.png": _save(Image.fromarray(gray16), "PNG"),
        "rgb16.png": png_bytes(48, 32, raw16, bit_depth=16, color_type=2),
        "rgb.jpg": _save(p, "JPEG", quality=90), "gray.jpg": _save(p.convert("L"), "JPEG"),
        "cmyk.jpg": _save(p.convert("CMYK"), "JPEG"), "progressive.jpg": _save(p, "JPEG", progressive=True),
        "rgb.webp": _save(p, "WEBP", quality=80), "rgba.webp": _save(rgba, "WEBP", lossless=True),
        "anim.webp": _save(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100),
        "anim.gif": _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0),
        "trns.gif": _save(p.quantize(16), "GIF", transparency=0),
        "rgb.bmp": _save(p, "BMP"), "rgb.tif": _save(p, "TIFF"), "cmyk.tif": _save(p.convert("CMYK"), "TIFF"),
        "lzw.tif": _save(p, "TIFF", compression="tiff_lzw"),
        "gray16.tif": _save(Image.fromarray(gray16), "TIFF"),
        "i32.tif": _save(Image.fromarray(gray16.astype(np.int32) * 3), "TIFF"),
        "f32.tif": _save(Image.fromarray(gray16.astype(np.float32) / 65535), "TIFF"),
        "mpo.jpg": _save(frames[0], "MPO", save_all=True, append_images=frames[1:2]),
    }
    for o in range(1, 9):
        out[f"exif{o}.jpg"] = with_orientation(p, o, "JPEG")
        out[f"exif{o}.png"] = with_orientation(p, o, "PNG")
    out["exif6.webp"] = with_orientation(p, 6, "WEBP")
    for o in (0, 9, 65535):
        out[f"exif-bad{o}.jpg"] = with_orientation(p, o, "JPEG")
    jpg = out["rgb.jpg"]
    junk_exif = b"\xff\xe1" + struct.pack(">H", 2 + 6 + 40) + b"Exif\x00\x00" + bytes(range(200, 240))
    out["exif-junk.jpg"] = jpg[:2] + junk_exif + jpg[2:]
    return out


def lying_images() -> dict[str, bytes]:
    """Headers that lie: sizes far past any limit, sizes the data does not fill, and bombs."""
    small = b"".join(b"\x00" + bytes(48 * 3) for _ in range(32))
    out = {}
    for w, h in [(100_000, 100_000), (65_535, 65_535), (2**31 - 1, 2**31 - 1), (1, 2**31 - 1), (7_000, 6_000),
                 (6_000, 6_000), (0, 0), (0, 10), (48, 0)]:
        out[f"lie-png-{w}x{h}.png"] = png_bytes(w, h, small)
    out["lie-png-depth3.png"] = png_bytes(48, 32, small, bit_depth=3)
    out["lie-png-color7.png"] = png_bytes(48, 32, small, color_type=7)
    # A text chunk that inflates to 64 MB, and an ICC profile that does.
    bomb = zlib.compress(b"\x00" * (64 << 20), 9)
    out["ztxt-bomb.png"] = png_bytes(48, 32, small, extra=[(b"zTXt", b"Comment\x00\x00" + bomb)])
    out["iccp-bomb.png"] = png_bytes(48, 32, small, extra=[(b"iCCP", b"icc\x00\x00" + bomb)])
    # A real 50-megapixel image in a few kilobytes (refused by size before decoding).
    out["bomb-50mp.png"] = _save(Image.new("1", (10_000, 5_000)), "PNG")
    jpg = _save(picture(), "JPEG")
    i = jpg.find(b"\xff\xc0")
    for w, h in [(65_500, 65_500), (9_000, 9_000), (0, 0)]:
        out[f"lie-jpeg-{w}x{h}.jpg"] = jpg[:i + 5] + struct.pack(">HH", h, w) + jpg[i + 9:]
    gif = _save(picture().quantize(16), "GIF")
    out["lie-gif-65535.gif"] = gif[:6] + struct.pack("<HH", 65_535, 65_535) + gif[10:]
    out["lie-gif-0.gif"] = gif[:6] + struct.pack("<HH", 0, 0) + gif[10:]
    bmp = _save(picture(), "BMP")
    for tag, (w, h) in {"huge": (1_000_000, 1_000_000), "neg": (48, -32), "minint": (48, -2**31)}.items():
        out[f"lie-bmp-{tag}.bmp"] = bmp[:18] + struct.pack("<ii", w, h) + bmp[26:]
    webp = _save(picture(), "WEBP", lossless=True)
    # VP8X canvas of 16384 x 16384 (the format's largest): a header on its own.
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + (16383).to_bytes(3, "little") * 2
    out["lie-webp-canvas.webp"] = b"RIFF" + struct.pack("<I", 4 + len(vp8x) + len(webp) - 12) + b"WEBP" + vp8x \
        + webp[12:]
    tif = _save(Image.new("L", (8, 8)), "TIFF")  # ImageWidth and ImageLength entries patched
    out["lie-tiff-huge.tif"] = tif.replace(struct.pack("<HHII", 256, 4, 1, 8), struct.pack("<HHII", 256, 4, 1, 2**30))
    out["lie-tiff-tall.tif"] = tif.replace(struct.pack("<HHII", 257, 4, 1, 8), struct.pack("<HHII", 257, 4, 1, 6_000))
    # Things that are not images at all, or not in a format the checks accept.
    out.update({
        "text.png": b"this is not an image\n", "html.jpg": b"<html><script>alert(1)</script></html>",
        "svg.png": b'<svg xmlns="http://www.w3.org/2000/svg" width="9e9" height="9e9"/>',
        "eps.png": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nshowpage\n",
        "pdf.png": b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF",
        "zip.png": b"PK\x03\x04" + bytes(40), "ico.ico": _save(picture(), "ICO"),
        "ppm.png": _save(picture(), "PPM"), "nul.png": bytes(4096), "ff.png": b"\xff" * 4096,
        "magic-only.png": b"\x89PNG\r\n\x1a\n", "magic-only.jpg": b"\xff\xd8\xff", "gif-header.gif": b"GIF89a",
        "riff.webp": b"RIFF\xff\xff\xff\xffWEBPVP8 ",
    })
    return out


def mutate(data: bytes, rng: random.Random, others: list[bytes]) -> tuple[bytes, str]:
    """One to three random damages to a file, and their names."""
    ops = []
    buf = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.choice(["truncate", "flip", "flip-head", "zero", "delete", "insert", "duplicate", "splice"])
        n = len(buf)
        if n < 2:
            break
        a = rng.randrange(n)
        b = min(n, a + rng.randint(1, max(1, n // 8)))
        if op == "truncate":
            buf = buf[:max(1, rng.randrange(n))]
        elif op == "flip":
            for _ in range(rng.randint(1, 16)):
                buf[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif op == "flip-head":
            for _ in range(rng.randint(1, 4)):
                buf[rng.randrange(min(n, 64))] = rng.randrange(256)
        elif op == "zero":
            buf[a:b] = bytes(b - a)
        elif op == "delete":
            del buf[a:b]
        elif op == "insert":
            buf[a:a] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        elif op == "duplicate":
            buf[b:b] = buf[a:b]
        elif op == "splice":
            other = rng.choice(others)
            buf = buf[:a] + other[rng.randrange(len(other)):]
        ops.append(op)
    return bytes(buf) or b"\x00", "+".join(ops) or "none"


def make_images(folder: Path, n: int, seed: int = 0, big: bool = True) -> list[tuple[str, Path]]:
    """`n` image files in `folder` (at least every base and lying file once, then mutations)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    base, lying = base_images(), lying_images()
    cases = list(base.items()) + list(lying.items())
    if big:  # the largest picture under the limit, compressed to almost nothing: decodes to ~100 MB
        cases.append(("near-limit-36mp.png", _save(Image.new("L", (6_000, 6_000), 128), "PNG")))
    if n < len(cases):
        cases = _spread(cases, n, len(base))
    i = 0
    while len(cases) < n:
        name = rng.choice(list(base))
        data, ops = mutate(base[name], rng, list(base.values()))
        stem, ext = name.rsplit(".", 1)
        if rng.random() < 0.1:
            ext = rng.choice(["png", "jpg", "webp", "gif", "txt", ""])
        cases.append((f"m{i:04d}-{stem}-{ops}.{ext}".rstrip("."), data))
        i += 1
    out = []
    for name, data in cases:
        path = folder / name
        path.write_bytes(data)
        out.append((name, path))
    return out


def _spread(cases, n, n_base):
    """For a small run: the base files first (EXIF and bit depths matter most), then a spread of the rest."""
    head = cases[:min(n_base, n)]
    rest = cases[n_base:]
    step = max(1, len(rest) // max(1, n - len(head)))
    return (head + rest[::step])[:n]


def check_image_outcome(tally: Tally, name: str, path: Path, load) -> Image.Image | None:
    """Run `load(path)`; count it; a failure is anything but an RGB picture or a one-line refusal."""
    from melfusion.errors import MelFusionError

    t0 = time.perf_counter()
    try:
        img = load(path)
    except MelFusionError as exc:
        tally.refused += 1
        msg = str(exc)
        if "\n" in msg or not msg:
            tally.fail(name, f"refusal is not one line: {msg!r}")
        return None
    except BaseException as exc:  # noqa: BLE001 - exactly what the fuzz is for
        tally.fail(name, f"{type(exc).__name__}: {str(exc)[:160]}")
        return None
    finally:
        if time.perf_counter() - t0 > SLOW_S:
            tally.fail(name, f"took {time.perf_counter() - t0:.1f} s")
    tally.accepted += 1
    if not isinstance(img, Image.Image) or img.mode != "RGB" or 0 in img.size:
        tally.fail(name, f"accepted as {getattr(img, 'mode', type(img).__name__)} {getattr(img, 'size', '')}")
        return None
    return img


def fuzz_load_image(images) -> tuple[Tally, dict]:
    from melfusion.images import image_to_tensor, load_image

    tally, accepted = Tally("load_image"), {}
    t0 = time.perf_counter()
    for name, path in images:
        img = check_image_outcome(tally, name, path, load_image)
        if img is None:
            continue
        accepted[name] = path
        x = image_to_tensor(img, 32)
        if x.shape != (3, 32, 32) or not bool(((x >= 0) & (x <= 1)).all()):
            tally.fail(name, "image_to_tensor out of [0, 1] or misshapen")
        check_semantics(tally, name, img)
    tally.seconds = time.perf_counter() - t0
    return tally, accepted


def check_semantics(tally: Tally, name: str, img: Image.Image) -> None:
    """The intact base files must load as a viewer shows them."""
    ref = np.asarray(picture()).astype(int)
    m = re.fullmatch(r"exif(\d)\.(png|jpg|webp)", name)
    if m:
        want = VIEWED[int(m.group(1))](ref)
        got = np.asarray(img).astype(int)
        tol = 1 if m.group(2) == "png" else 40
        if got.shape != want.shape or np.abs(got - want).mean() > tol:
            tally.fail(name, f"not upright: got {got.shape}, want {want.shape} (as EXIF orientation {m.group(1)})")
    elif name in ("gray16.png", "gray16.tif", "rgb16.png"):
        arr = np.asarray(img.convert("L")).astype(int)
        if not (arr[0, 0] < 10 and arr[-1, -1] > 245 and 100 < arr.mean() < 155):
            tally.fail(name, f"16-bit levels lost: corners {arr[0, 0]}, {arr[-1, -1]}, mean {arr.mean():.0f}")
    elif name in ("cmyk.jpg", "cmyk.tif", "rgb.png", "rgb.bmp", "rgb.tif", "mpo.jpg", "exif-junk.jpg") \
            or name.startswith("exif-bad"):
        got = np.asarray(img).astype(int)
        if got.shape != ref.shape or np.abs(got - ref).mean() > 40:
            tally.fail(name, "colours or orientation differ from the picture")


# -- captions ------------------------------------------------------------------------------------

CONTROLS = [chr(c) for c in (*range(0x20), *range(0x7F, 0xA0))]
SPACES = ["\u00a0", "\u2028", "\u2029", "\u3000", "\u200b", "\ufeff", "\u180e", "\u2060", "\x85", "\u1680"]
RTL = ["שיר ערש שקט לפסנתר", "موسيقى هادئة على العود", "\u202eonaip mlac\u202c", "\u200f\u05e9\u200e", "\u202b",
       "\u2067", "\u061c"]
EMOJI = ["🎹", "🎸🔥", "👩🏽‍🎤", "🏳️‍🌈", "🇯🇵", "❤️", "🫠", "\U0001f9d1\u200d\U0001f3a4", "🎵" * 50]
COMBINING = ["e\u0301", "Z\u0336\u0337\u0338" * 20, "a" + "\u0300" * 200, "\u0915\u094d\u0937"]
SURROGATES = ["\ud800", "\udfff", "\udcff", "\ud83c"]
ODD = ["\uffff", "\ufffe", "\U0010ffff", "\ue000", "\ufffd", "\U000e0041", "ǅ", "ﬃ", "²", "١٢٣", "Ⅻ",
       "<script>alert(1)</script>", "{{7*7}}", "${jndi:ldap://x}", "%s%n%x", "'; DROP TABLE items; --",
       "../../etc/passwd", "C:\\con\\aux", "\\x00", "null", "None", "0", "-1", "1e309", "NaN", "\x1b[2J\x1b[31m"]
WORDS = ["calm", "piano", "jazz", "folk", "guitar", "by", "the", "sea", "lo-fi", "drums", "nocturne", "ambient"]


def make_captions(n: int, seed: int = 0) -> list[tuple[str, object]]:
    """`n` captions: hand-picked hostile ones first, then random mixtures."""
    rng = random.Random(seed)
    fixed: list[tuple[str, object]] = [
        ("empty", ""), ("spaces", "   \t\n  "), ("nul-only", "\x00" * 10), ("nul-inside", "calm\x00piano"),
        ("controls-only", "".join(CONTROLS)), ("controls-around", "\x07\x1b[31mred jazz\x1b[0m\x7f"),
        ("bidi-override", "\u202ejazz piano\u202c"), ("rtl-hebrew", RTL[0]), ("rtl-arabic", RTL[1]),
        ("emoji-only", "🎹🎸🎺"), ("emoji-zwj", "👩🏽‍🎤 singing folk"), ("zero-width-only", "\u200b\u200c\u200d\ufeff"),
        ("combining-zalgo", COMBINING[1] + " piano"), ("lone-surrogate", "piano \ud800 jazz"),
        ("lone-surrogate-only", "\udcff"), ("10k-letters", "a" * 10_000), ("10k-emoji", "🎹" * 10_000),
        ("10k-words", " ".join(rng.choice(WORDS) for _ in range(2_000))[:10_000]),
        ("10k-spaces-one-word", " " * 9_995 + "piano"), ("1000-chars", "p" * 1000), ("1001-chars", "p" * 1001),
        ("200k-chars", "piano " * 40_000), ("line-separators", "calm\u2028piano\u2029jazz"),
        ("superscript-digit", "²"), ("arabic-digits", "١٢٣"), ("noncharacter", "\uffff\ufffe"),
        ("tag-chars", "\U000e0041\U000e0042 piano"), ("private-use", "\ue000 piano"), ("markup", ODD[11]),
        ("template", ODD[12]), ("sql", ODD[16]), ("path", ODD[17]), ("ansi-clear", ODD[-1] + "piano"),
        ("not-text-none", None), ("not-text-bytes", b"piano"), ("not-text-int", 42), ("not-text-list", ["piano"]),
    ]
    pools = [CONTROLS, SPACES, RTL, EMOJI, COMBINING, SURROGATES, ODD]
    out = fixed[:n]
    i = 0
    while len(out) < n:
        words = [rng.choice(WORDS) for _ in range(rng.randint(0, 8))]
        for _ in range(rng.randint(1, 6)):
            pool = rng.choice(pools)
            words.insert(rng.randint(0, len(words)), rng.choice(pool) * rng.choice([1, 1, 1, 3, 50]))
        sep = rng.choice([" ", "", "\x00", "\t", "\u3000"])
        text = sep.join(words)
        if rng.random() < 0.05:
            text = text * rng.randint(100, 2_000)
        out.append((f"r{i:04d}", text))
        i += 1
    return out


def fuzz_check_prompt(captions, pipe=None) -> tuple[Tally, dict]:
    """check_prompt on each caption; accepted ones must be clean text and must encode."""
    from melfusion.errors import MelFusionError
    from melfusion.pipeline import MAX_CAPTION_CHARS, check_prompt

    tally, accepted = Tally("check_prompt"), {}
    t0 = time.perf_counter()
    for name, caption in captions:
        try:
            text = check_prompt(caption)
        except MelFusionError as exc:
            tally.refused += 1
            if "\n" in str(exc):
                tally.fail(name, f"refusal is not one line: {str(exc)!r}")
            continue
        except BaseException as exc:  # noqa: BLE001
            tally.fail(name, f"{type(exc).__name__}: {str(exc)[:160]}")
            continue
        tally.accepted += 1
        accepted[name] = text
        problems = []
        if len(text) > MAX_CAPTION_CHARS:
            problems.append(f"{len(text)} characters")
        if text != text.strip() or "  " in text:
            problems.append("untrimmed")
        if any(c in text for c in CONTROLS):
            problems.append("control characters kept")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            problems.append("not valid UTF-8")
        if problems:
            tally.fail(name, ", ".join(problems))
        elif pipe is not None:
            try:
                emb, _ = pipe.text_encoder.encode([text])
                if not bool(np.isfinite(emb.numpy()).all()):
                    tally.fail(name, "text encoder gave non-finite values")
            except BaseException as exc:  # noqa: BLE001
                tally.fail(name, f"text encoder: {type(exc).__name__}: {str(exc)[:160]}")
    tally.seconds = time.perf_counter() - t0
    return tally, accepted


def pairs(images: dict, captions: dict, k: int, seed: int = 0) -> list[tuple[str, Path, str, str]]:
    rng = random.Random(seed)
    im, cap = sorted(images.items()), sorted(captions.items())
    if not im or not cap:
        return []
    return [(*rng.choice(im), *rng.choice(cap)) for _ in range(k)]


def fuzz_pipeline(pipe, chosen) -> Tally:
    import torch

    from melfusion.errors import MelFusionError

    tally = Tally("pipeline (tiny)")
    t0 = time.perf_counter()
    for iname, path, cname, caption in chosen:
        case = f"{iname} + {cname}"
        try:
            out = pipe(image=str(path), prompt=caption, duration_s=1.0, num_inference_steps=1,
                       generator=torch.Generator().manual_seed(0), progress=False)
        except MelFusionError:
            tally.refused += 1
            continue
        except BaseException as exc:  # noqa: BLE001
            tally.fail(case, f"{type(exc).__name__}: {str(exc)[:160]}")
            continue
        tally.accepted += 1
        if not np.isfinite(out.audio).all() or out.audio.size == 0:
            tally.fail(case, "audio empty or not finite")
    tally.seconds = time.perf_counter() - t0
    return tally


def fuzz_cli(pipe, images, captions, work: Path) -> Tally:
    """`melfusion generate` in-process (its model load handed the one tiny pipeline): exit 0 and a
    .wav, or exit 2, one `error:` line, nothing left in the output folder."""
    import melfusion.cli as cli

    tally = Tally("cli generate")
    t0 = time.perf_counter()
    out_dir = work / "cli-out"
    out_dir.mkdir(parents=True, exist_ok=True)
    real_load = cli.load_model
    cli.load_model = lambda spec, seed=0: pipe
    try:
        for iname, path, cname, caption in chosen_for_cli(images, captions):
            case = f"{iname} + {cname}"
            out = out_dir / "song.wav"
            err = io.StringIO()
            argv = ["generate", "--image", str(path), "--text", caption, "--out", str(out), "--model", "tiny",
                    "--steps", "1", "--duration", "1", "--quiet"]
            try:
                with contextlib.redirect_stderr(err):
                    rc = cli.main(argv)
            except SystemExit as exc:  # argparse: a value it cannot take (a caption starting with '-')
                rc = exc.code
            except BaseException as exc:  # noqa: BLE001
                tally.fail(case, f"raised {type(exc).__name__}: {str(exc)[:160]}")
                continue
            text = err.getvalue().strip()
            left = sorted(p.name for p in out_dir.iterdir())
            if rc == 0:
                tally.accepted += 1
                if left != ["song.wav"]:
                    tally.fail(case, f"exit 0 but the folder holds {left}")
            elif rc == 2:
                tally.refused += 1
                if left:
                    tally.fail(case, f"refused but left {left}")
                lines = [ln for ln in text.splitlines() if ln.strip()]
                usage = lines and lines[0].startswith("usage:")
                if not usage and (len(lines) != 1 or not lines[0].startswith("error:")):
                    tally.fail(case, f"stderr is not one error line: {text[:200]!r}")
                if "Traceback" in text:
                    tally.fail(case, "a traceback")
            else:
                tally.fail(case, f"exit {rc}: {text[:200]!r}")
            for p in out_dir.iterdir():
                p.unlink()
    finally:
        cli.load_model = real_load
    tally.seconds = time.perf_counter() - t0
    return tally


def chosen_for_cli(images, captions):
    """(image name, path, caption name, caption) for the CLI: each sampled image with a good caption,
    each sampled caption with a good image."""
    good_image = ("rgb.png", ROOT / "examples" / "beach-post.png")
    for name, path in images:
        yield name, path, "plain", "calm piano by the sea"
    for name, caption in captions:
        if isinstance(caption, str):
            yield (*good_image, name, caption)


def fuzz_demo_handlers(pipe, images, captions, composed: int, work: Path) -> Tally:
    """The demo's upload preview on every image, the whole composer on a sample, odd settings."""
    from melfusion.apps.demo import PREVIEW_SIDE, Composer
    from melfusion.errors import MelFusionError

    tally = Tally("demo handlers")
    t0 = time.perf_counter()
    out_root = work / "demo-out"
    c = Composer(pipe, out_root=out_root)
    ok_images = []
    for name, path in images:
        try:
            shown, message = c.preview(str(path))
        except BaseException as exc:  # noqa: BLE001
            tally.fail(name, f"preview raised {type(exc).__name__}: {str(exc)[:160]}")
            continue
        try:
            c.check_image(str(path))  # what a generation would decode (JPEG previews are drafts)
            full = True
        except MelFusionError:
            full = False
        if (shown is not None) != full:
            tally.fail(name, f"the preview {'shows' if shown is not None else 'refuses'} what a generation "
                             f"{'accepts' if full else 'refuses'}")
        if shown is None:
            tally.refused += 1
            if not message.startswith("**Cannot use this file:**") or str(path) in message or "\n" in message:
                tally.fail(name, f"preview message {message[:120]!r}")
        else:
            tally.accepted += 1
            ok_images.append((name, path))
            if max(shown.size) > PREVIEW_SIDE:
                tally.fail(name, f"preview of {shown.size} not reduced")
    rng = random.Random(1)
    settings = [(1.0, 0, 1, 1.0)] * 6 + [
        (None, 0, 1, 1.0), ("abc", 0, 1, 1.0), (float("nan"), 0, 1, 1.0), (float("inf"), 0, 1, 1.0), (0.0, 0, 1, 1.0),
        (1e9, 0, 1, 1.0), (1.0, -1, 1, 1.0), (1.0, 1e30, 1, 1.0), (1.0, 2**64, 1, 1.0), (1.0, 0.5, 1, 1.0),
        (1.0, "7", 1, 1.0), (1.0, None, 1, 1.0), (1.0, 0, 0, 1.0), (1.0, 0, 10**9, 1.0), (1.0, 0, 2.5, 1.0),
        (1.0, 0, None, 1.0), (1.0, 0, 1, float("nan")), (1.0, 0, 1, -1.0), (1.0, 0, 1, 1e9), (1.0, 0, 1, None),
        (1.0, [], 1, 1.0), (True, 0, 1, 1.0)]
    cases = []
    for k in range(composed):
        iname, path = rng.choice(ok_images or [("none", None)])
        cname, caption = rng.choice(captions)
        cases.append((f"{iname} + {cname}", str(path) if path else None, caption, settings[k % len(settings)]))
    tally.notes["previews shown"] = tally.accepted
    composed = refused = 0
    for case, path, caption, (duration, seed, steps, guidance) in cases:
        case = f"{case} + settings {duration!r},{seed!r},{steps!r},{guidance!r}"[:200]
        before = set(out_root.glob("result-*"))
        try:
            result = c(path, caption, duration, seed, steps, guidance)
        except MelFusionError as exc:
            tally.refused += 1
            refused += 1
            if set(out_root.glob("result-*")) != before:
                tally.fail(case, "a refusal left a result folder")
            if "\n" in str(exc):
                tally.fail(case, f"refusal is not one line: {str(exc)!r}")
            continue
        except BaseException as exc:  # noqa: BLE001 - the page would say "something went wrong"
            tally.fail(case, f"composer raised {type(exc).__name__}: {str(exc)[:160]}")
            continue
        tally.accepted += 1
        composed += 1
        new = set(out_root.glob("result-*")) - before
        if len(new) != 1 or sorted(p.name for p in next(iter(new)).iterdir()) != \
                ["melfusion.mp4", "melfusion.wav", "spectrogram.png"]:
            tally.fail(case, "the result folder is not complete")
        if not result[-1].startswith("Composed"):
            tally.fail(case, f"status {result[-1]!r}")
    tally.notes["composer"] = f"{composed} composed, {refused} refused"
    leftovers = [p for p in out_root.rglob("*") if p.name.startswith(".tmp-") or p.suffix == ".part"]
    if leftovers:
        tally.fail("demo out folder", f"temporary files left: {leftovers[:3]}")
    tally.seconds = time.perf_counter() - t0
    return tally


# -- the demo server over HTTP -------------------------------------------------------------------

HOSTILE_NAMES = ["../../etc/passwd", "..\\..\\boot.ini", "a" * 300 + ".png", "\u202egnp.exe", "🎹.png", "nul\x00.png",
                 "con.png", ".htaccess", "x.png; rm -rf /", "<img src=x onerror=alert(1)>.png", "", " ", "a/b/c.png"]


def fuzz_demo_server(pipe, images, captions, n_generate: int) -> Tally:
    """A live demo: uploads of hostile files under hostile names, the preview route on each, the queue
    with odd captions and settings, and malformed requests. Any 5xx (or a hung request) fails."""
    import socket
    import warnings

    import httpx

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_demo_load import API, DemoClient

    from melfusion.apps.demo import build_demo, launch

    warnings.filterwarnings("ignore")
    tally = Tally("demo server")
    t0 = time.perf_counter()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = launch(build_demo(pipe), "127.0.0.1", port, block=False)
    url = f"http://127.0.0.1:{port}"
    statuses: dict[int, int] = {}

    def seen(case: str, status: int):
        statuses[status] = statuses.get(status, 0) + 1
        if status >= 500:
            tally.fail(case, f"HTTP {status}")

    c = DemoClient(url, timeout=120)
    rng = random.Random(2)
    try:
        uploaded = []
        for k, (name, path) in enumerate(images):
            upload_name = HOSTILE_NAMES[k % len(HOSTILE_NAMES)] if k % 3 == 0 else name
            try:
                r = c.http.post(url + API + "/upload", files=[("files", (upload_name, path.read_bytes(),
                                                                          rng.choice(["image/png", "text/html", ""])))])
            except (httpx.HTTPError, UnicodeError, ValueError) as exc:  # the client itself would not send it
                tally.notes["not sent"] = tally.notes.get("not sent", 0) + 1
                continue
            seen(f"upload {name} as {upload_name!r}", r.status_code)
            if r.status_code != 200:
                tally.refused += 1
                continue
            f = {"path": r.json()[0], "orig_name": upload_name, "meta": {"_type": "gradio.FileData"}}
            status, answer = c.preview(f)
            seen(f"preview {name}", status)
            if status == 200:
                data = answer.get("data") or [None, ""]
                if data[0] is None:
                    tally.refused += 1
                    if not str(data[1]).startswith("**Cannot use this file:**"):
                        tally.fail(name, f"preview without a reason: {str(data)[:120]}")
                else:
                    tally.accepted += 1
                    uploaded.append((name, f))
        # A request naming a file on the server that nobody uploaded must not be read.
        secret = ROOT / "examples" / "beach-post.png"
        for path in [str(secret), "/etc/passwd", "/proc/self/environ", "../../../../etc/passwd"]:
            status, answer = c.preview({"path": path, "meta": {"_type": "gradio.FileData"}})
            seen(f"preview of a server path {path}", status)
            if status == 200 and (answer.get("data") or [None])[0] is not None:
                tally.fail(f"preview of {path}", "a file the client never uploaded was read")
        # The queue: odd captions with good images, odd settings.
        good = [f for n, f in uploaded if n in ("rgb.png", "rgb.jpg")] or [f for _, f in uploaded[:1]]
        odd = [(1.0, 0, 1, 1.0)] * 4 + [(0.5, 0, 1, 1.0), (1.0, -5, 1, 1.0), (1.0, 1e30, 1, 1.0), (1.0, 0, 5000, 1.0),
                                       (1.0, 0, 1, 99.0), ("x", 0, 1, 1.0), (None, None, None, None)]
        outcomes: dict[str, int] = {}
        for k in range(n_generate if good else 0):
            cname, caption = captions[k % len(captions)]
            if not isinstance(caption, str):
                continue
            settings = odd[k % len(odd)]
            case = f"generate {cname} {settings}"
            try:
                res = c.generate(good[k % len(good)], caption, *settings)
            except (httpx.HTTPError, ValueError) as exc:
                tally.fail(case, f"{type(exc).__name__}: {exc}")
                continue
            outcomes[res["outcome"]] = outcomes.get(res["outcome"], 0) + 1
            if res["outcome"] == "music":
                tally.accepted += 1
            elif res["outcome"] in ("refused", "error"):
                # "error": Gradio's own check of a slider's range, before the app sees the request.
                tally.refused += 1
                if res["outcome"] == "error" and settings == (1.0, 0, 1, 1.0):
                    tally.fail(case, f"error for plain settings: {res['message'][:120]}")
                if "Traceback" in res["message"] or "something went wrong" in res["message"]:
                    tally.fail(case, res["message"][:160])
            else:
                tally.fail(case, f"{res['outcome']}: {res['message'][:160]}")
        tally.notes["queue"] = ", ".join(f"{v} {k}" for k, v in sorted(outcomes.items()))
        # Raw requests a browser would never send.
        raw = [("POST", API + "/upload", b"garbage", {"content-type": "multipart/form-data; boundary=x"}),
               ("POST", API + "/upload",
                b"--x\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a\"\r\n\r\n",
                {"content-type": "multipart/form-data; boundary=x"}),
               ("POST", API + "/upload", b"", {"content-type": "text/plain"}),
               ("POST", API + "/queue/join", b"{not json", {"content-type": "application/json"}),
               ("POST", API + "/queue/join", b'{"data": 5, "fn_index": 2, "session_hash": "x"}', {}),
               ("POST", API + "/queue/join", b'{"data": [], "fn_index": 999, "session_hash": "x"}', {}),
               ("POST", API + "/queue/join", b'{"data": [null, "\\ud800", 1, 0, 1, 1], "fn_index": 2, '
                                             b'"session_hash": "y"}', {"content-type": "application/json"}),
               ("POST", API + "/run/preview", b'{"data": [{"path": 5}], "fn_index": 1}', {}),
               ("POST", API + "/run/preview", b'{"data": ["\\u0000"], "fn_index": 1}', {}),
               ("GET", API + "/queue/data?session_hash=" + "%00" * 10, b"", {}),
               ("GET", "/gradio_api/file=%00", b"", {})]
        for method, path, body, headers in raw:
            try:
                r = c.http.request(method, url + path, content=body, headers=headers, timeout=20)
                seen(f"raw {method} {path[:60]}", r.status_code)
            except httpx.HTTPError as exc:  # Gradio cuts the event stream of an unknown session
                tally.notes["cut off"] = tally.notes.get("cut off", 0) + 1
                if "queue/data" not in path:
                    tally.fail(f"raw {method} {path[:60]}", f"{type(exc).__name__}: {exc}")
    finally:
        c.close()
        demo.close()
    tally.notes["HTTP"] = " ".join(f"{k}x{v}" for k, v in sorted(statuses.items()))
    tally.seconds = time.perf_counter() - t0
    return tally


# -- the study app -------------------------------------------------------------------------------

def make_sets_root(root: Path, bad_images: list[Path]) -> Path:
    """root/manifest.jsonl (4 records) with two systems' clips, and root/bad.jsonl whose records'
    images are hostile files (each built on its own through /admin/create)."""
    import soundfile as sf

    (root / "images").mkdir(parents=True)
    records = []
    for i in range(4):
        Image.new("RGB", (64, 48), (40 * i, 120, 200)).save(root / "images" / f"r{i}.png")
        records.append({"id": f"r{i}", "image": f"images/r{i}.png", "caption": f"a calm piano piece {i}"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for k, system in enumerate(("one", "two")):
        (root / system).mkdir()
        for r in records:
            t = np.arange(4000) / 16000
            sf.write(root / system / f"{r['id']}.wav", (0.2 * np.sin(2 * np.pi * (220 + 110 * k) * t)).astype(
                np.float32), 16000)
    for j, bad in enumerate(bad_images):
        shutil.copyfile(bad, root / "images" / f"bad{j}{bad.suffix}")
        rec = {"id": "r0", "image": f"images/bad{j}{bad.suffix}", "caption": "a calm piano piece"}
        (root / f"bad{j}.jsonl").write_text(json.dumps(rec) + "\n")
    return root


def fuzz_study(captions, bad_images: list[Path], work: Path, create_every: int = 8, raw: int = 60) -> Tally:
    """Every caption in every form field of the study app; raw hostile bodies; hostile images in a
    manifest built through the create page. Any 500 fails, as does a half-built study folder."""
    import warnings

    from starlette.testclient import TestClient

    from melfusion.apps.study.app import StudyApp
    from melfusion.apps.study.build import create_study

    warnings.filterwarnings("ignore")
    tally = Tally("study forms")
    t0 = time.perf_counter()
    root = make_sets_root(work / "sets", bad_images)
    res = create_study(root / "manifest.jsonl", {"one": str(root / "one"), "two": str(root / "two")},
                       work / "served" / "study")
    studies = work / "studies"
    studies.mkdir()
    study = StudyApp(work / "served" / "study", sets_root=root, studies_root=studies)
    statuses: dict[int, int] = {}

    def seen(case: str, r, ok=(200, 201, 303, 400, 403, 404, 405, 409, 413)):
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        if r.status_code >= 500 or r.status_code not in ok:
            text = re.sub(r"<[^>]+>|\s+", " ", r.text)[:160]
            tally.fail(case, f"HTTP {r.status_code}: {text}")
        if "Traceback" in r.text:
            tally.fail(case, "a traceback in the page")
        if r.status_code in (200, 201, 303):
            tally.accepted += 1
        else:
            tally.refused += 1

    token = res["token"]
    rng = random.Random(3)
    with TestClient(study.application(), raise_server_exceptions=False, follow_redirects=False) as client:
        seen("start", client.post("/start"))
        body = client.get("/rate").text
        item = re.search(r"name='item' value='([0-9a-f]{16})'", body).group(1)
        texts = [c if isinstance(c, str) else repr(c) for _, c in captions]
        texts = [t.encode("utf-8", "surrogatepass").decode("utf-8", "replace") for t in texts]  # what a form carries
        for k, (name, text) in enumerate(zip([n for n, _ in captions], texts)):
            short = text[:5000]
            seen(f"rate item={name}", client.post("/rate", data={"item": short, "OVL": short, "REL": short}))
            seen(f"rate score={name}", client.post("/rate", data={"item": item, "OVL": short, "REL": "5",
                                                                  "IMSM": short}))
            seen(f"rate page ?{name}", client.get("/rate", params={"x": short}))
            seen(f"media {name}", client.get("/media/" + _quote(short[:200])))
            seen(f"admin token={name}", client.get("/admin", params={"token": short}))
            seen(f"admin bearer {name}", client.get("/admin", headers={"authorization": "Bearer " + _header(short)}))
            seen(f"cookie {name}", client.get("/rate", headers={"cookie": "melfusion_rater=" + _header(short)}))
            for field_name in ("name", "title", "system", "limit", "split", "manifest", "set", "task", "nonce"):
                if field_name == "title" and k % create_every:
                    continue  # a good title builds a study: only every few
                form = {"token": token, "nonce": study.nonce, "name": f"s{k}-{field_name}",
                        "manifest": "manifest.jsonl", "set": ["one", "two"], "system:one": "one", "system:two": "two", "task": "ovl_rel",
                        "title": "t"}
                form["system:one" if field_name == "system" else field_name] = text[:MAX_FORM_FIELD]
                seen(f"create {field_name}={name}", client.post("/admin/create", data=form))
        for j in range(len(bad_images)):
            form = {"token": token, "nonce": study.nonce, "name": f"bad{j}", "manifest": f"bad{j}.jsonl",
                    "set": ["one", "two"], "system:one": "one", "system:two": "two", "task": "ovl_rel"}
            seen(f"create from hostile image {bad_images[j].name}", client.post("/admin/create", data=form))
        for j in range(raw):
            path = rng.choice(["/start", "/rate", "/admin/create"])
            ctype = rng.choice(["application/x-www-form-urlencoded", "multipart/form-data",
                                "multipart/form-data; boundary=zz", "text/plain", None, "application/json"])
            body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 2000)))
            if rng.random() < 0.3:
                body = b"--zz\r\nContent-Disposition: form-data; name=\"item\"; filename=\"x.png\"\r\n\r\n" + body
            if rng.random() < 0.3:
                body = b"item=%ff%fe%00&OVL=" + body.replace(b"&", b"%26")
            headers = {"content-type": ctype} if ctype else {}
            seen(f"raw {path} {ctype} #{j}", client.post(path, content=body, headers=headers))
        seen("oversized", client.post("/rate", content=b"a=" + b"x" * 20_000,
                                      headers={"content-type": "application/x-www-form-urlencoded"}))
    half_built = [p.name for p in studies.iterdir() if p.name.startswith(".") or not (p / "study.json").is_file()]
    if half_built:
        tally.fail("studies root", f"half-built or temporary folders left: {half_built[:5]}")
    tally.notes["HTTP"] = " ".join(f"{k}x{v}" for k, v in sorted(statuses.items()))
    tally.notes["studies built"] = sum(1 for _ in studies.iterdir())
    tally.seconds = time.perf_counter() - t0
    return tally


MAX_FORM_FIELD = 20_000  # the create form's body limit is 256 KB


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def _header(text: str) -> str:
    """A header value carries latin-1 at most; anything else becomes '?' (as a client would refuse it)."""
    return "".join(c if 0x20 <= ord(c) < 0x7F else "?" for c in text)[:4000]


# -- all together --------------------------------------------------------------------------------

def quietly(fn, *args):
    """Run a stage with its progress bars and library chatter (stdout, stderr) kept off the report."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def run(n_images: int, n_captions: int, seed: int = 0, work: Path | None = None, server: bool = True,
        sample: int = 60, big: bool = True, log=print) -> list[Tally]:
    import torch

    from melfusion import presets

    torch.set_num_threads(1)
    own = work is None
    work = Path(work or tempfile.mkdtemp(prefix="fuzz-inputs-"))
    try:
        images = make_images(work / "images", n_images, seed, big=big)
        captions = make_captions(n_captions, seed)
        log(f"{len(images)} image files, {len(captions)} captions (seed {seed}) in {work}")
        pipe = presets.build("tiny", seed=0)
        tallies = []
        t, ok_images = fuzz_load_image(images)
        tallies.append(t)
        log(t.line())
        t, ok_captions = fuzz_check_prompt(captions, pipe)
        tallies.append(t)
        log(t.line())
        rng = random.Random(seed)
        tallies.append(fuzz_pipeline(pipe, pairs(ok_images, ok_captions, sample, seed)))
        log(tallies[-1].line())
        cli_images = rng.sample(images, min(sample, len(images)))
        cli_captions = rng.sample(captions, min(sample, len(captions)))
        tallies.append(quietly(fuzz_cli, pipe, cli_images, cli_captions, work))
        log(tallies[-1].line())
        tallies.append(quietly(fuzz_demo_handlers, pipe, images, captions, max(sample // 2, 10), work))
        log(tallies[-1].line())
        if server:
            tallies.append(quietly(fuzz_demo_server, pipe, rng.sample(images, min(sample, len(images))), captions,
                                   max(sample // 2, 10)))
            log(tallies[-1].line())
        bad = [p for n, p in images if n not in ok_images][:8] + [p for n, p in images if n in ok_images][:2]
        tallies.append(quietly(fuzz_study, captions, bad, work / "study"))
        log(tallies[-1].line())
        return tallies
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--captions", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample", type=int, default=60, help="pairs through the pipeline, the CLI and the demo")
    ap.add_argument("--no-server", action="store_true", help="skip the live demo server")
    ap.add_argument("--keep", type=Path, default=None, help="keep the generated files in this folder")
    args = ap.parse_args()
    tallies = run(args.images, args.captions, args.seed, work=args.keep, server=not args.no_server,
                  sample=args.sample)
    failures = [(t.name, f) for t in tallies for f in t.failures]
    print(f"\n{len(failures)} failure(s)")
    for stage, f in failures[:100]:
        print(f"  [{stage}] {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
