"""Statistics of a labelled manifest, and the evidence that its images carry mode and energy.

`python -m melfusion.data.stats MANIFEST [--audio]` prints Markdown tables: counts per genre, image
kind, mode and energy, and the test-split accuracy of a logistic regression trained on the
train split's image colour statistics alone (mean RGB, hue, saturation, luminance, contrast,
edge density), against chance (the majority class of the test split).
"""
from __future__ import annotations

import sys
from collections import Counter

import numpy as np
from PIL import Image

from melfusion.data.manifest import read_manifest
from melfusion.errors import MelFusionError
from melfusion.metrics.listeners import KEYS, MAJOR_PROFILE, MINOR_PROFILE

LUMA = np.array([0.299, 0.587, 0.114])
FEATURES = ("mean R", "mean G", "mean B", "hue cos", "hue sin", "saturation", "luminance", "contrast", "edge density")


def image_features(path) -> np.ndarray:
    """Nine colour statistics of an image (no learned features, no spatial layout)."""
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB").resize((128, 128), Image.Resampling.BILINEAR), dtype=np.float64) / 255.0
        hsv = np.asarray(im.convert("RGB").resize((128, 128)).convert("HSV"), dtype=np.float64) / 255.0
    lum = rgb @ LUMA
    ang = 2 * np.pi * hsv[..., 0]
    w = hsv[..., 1] + 1e-6  # hue weighted by saturation: grey pixels have no hue
    grad = np.abs(np.diff(lum, axis=0))[:, :-1] + np.abs(np.diff(lum, axis=1))[:-1, :]
    return np.array([
        *rgb.reshape(-1, 3).mean(axis=0), (w * np.cos(ang)).sum() / w.sum(), (w * np.sin(ang)).sum() / w.sum(),
        hsv[..., 1].mean(), lum.mean(), lum.std(), (grad > 0.1).mean(),
    ])


def logistic_regression(x: np.ndarray, y: np.ndarray, steps: int = 2000, lr: float = 0.5, l2: float = 1e-3):
    """Binary logistic regression by gradient descent on standardised features; returns predict(x)."""
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = (x - mu) / sd
    w, b = np.zeros(z.shape[1]), 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(z @ w + b)))
        w -= lr * (z.T @ (p - y) / len(y) + l2 * w)
        b -= lr * float(np.mean(p - y))
    return lambda xq: (((xq - mu) / sd) @ w + b) > 0


def image_evidence(entries) -> dict[str, tuple[float, float, int]]:
    """{label: (test accuracy, chance, test size)} for mode and energy from image colour statistics."""
    feats = {e.id: image_features(e.image_path) for e in entries}
    out = {}
    for label, positive in (("mode", "major"), ("energy", "driving")):
        train = [e for e in entries if e.record["split"] == "train" and label in e.record]
        test = [e for e in entries if e.record["split"] == "test" and label in e.record]
        if not train or not test:
            continue
        xtr = np.stack([feats[e.id] for e in train])
        ytr = np.array([e.record[label] == positive for e in train], dtype=np.float64)
        xte = np.stack([feats[e.id] for e in test])
        yte = np.array([e.record[label] == positive for e in test])
        predict = logistic_regression(xtr, ytr)
        acc = float(np.mean(predict(xte) == yte))
        chance = float(max(yte.mean(), 1 - yte.mean()))
        out[label] = (acc, chance, len(test))
    return out


def audio_evidence(entries) -> dict[str, tuple[float, float, int]]:
    """Sanity checks that the audio carries the labels (needs librosa):
    mode: chroma against Krumhansl's major/minor profiles at the labelled tonic (no training);
    energy: logistic regression on onset rate and loudness variation with the genre one-hot,
    train split -> test split."""
    import librosa
    import soundfile as sf

    genres = sorted({str(e.record.get("genre")) for e in entries})
    rows = {}
    for e in entries:
        if e.record["split"] not in ("train", "test") or "key" not in e.record:
            continue
        y, sr = sf.read(str(e.audio_path), dtype="float32")
        chroma = librosa.feature.chroma_stft(y=y, sr=sr, n_fft=4096).mean(axis=1)
        chroma = np.roll(chroma, -KEYS.index(e.record["key"].split()[0]))
        major = np.corrcoef(chroma, MAJOR_PROFILE)[0, 1] > np.corrcoef(chroma, MINOR_PROFILE)[0, 1]
        onsets = librosa.onset.onset_detect(y=y, sr=sr, units="time")
        rms = librosa.feature.rms(y=y)[0]
        onehot = [float(e.record.get("genre") == g) for g in genres]
        rows[e.id] = (major, np.array([len(onsets) / (len(y) / sr), rms.std() / (rms.mean() + 1e-9), *onehot]))
    out = {}
    test = [e for e in entries if e.id in rows and e.record["split"] == "test"]
    train = [e for e in entries if e.id in rows and e.record["split"] == "train"]
    if test:
        y = np.array([e.record["mode"] == "major" for e in test])
        out["mode (audio chroma, no training)"] = (float(np.mean([rows[e.id][0] for e in test] == y)),
                                                   float(max(y.mean(), 1 - y.mean())), len(test))
    if train and test:
        predict = logistic_regression(np.stack([rows[e.id][1] for e in train]),
                                      np.array([e.record["energy"] == "driving" for e in train], dtype=np.float64))
        y = np.array([e.record["energy"] == "driving" for e in test])
        out["energy (audio onset rate + genre)"] = (float(np.mean(predict(np.stack([rows[e.id][1] for e in test])) == y)),
                                                    float(max(y.mean(), 1 - y.mean())), len(test))
    return out


def _table(title: str, counts: Counter, total: int) -> list[str]:
    rows = [f"| {title} | records | share |", "| --- | ---: | ---: |"]
    rows += [f"| {k} | {v} | {100 * v / total:.1f}% |" for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))]
    return rows


def report(manifest, audio: bool = False) -> str:
    entries, problems = read_manifest(manifest)
    if problems:
        raise MelFusionError(f"{manifest}: {len(problems)} broken lines (first: {problems[0]}); run `data check`")
    n = len(entries)
    lines = [f"{n} records in {manifest}", ""]
    per_genre: dict[str, Counter] = {}
    for e in entries:
        per_genre.setdefault(str(e.record.get("genre")), Counter())[e.record["split"]] += 1
    lines += ["| genre | records | train | val | test | bpm range | drums |", "| --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for g in sorted(per_genre):
        recs = [e.record for e in entries if str(e.record.get("genre")) == g]
        bpms = [r["bpm"] for r in recs if "bpm" in r]
        c = per_genre[g]
        lines.append(f"| {g} | {sum(c.values())} | {c['train']} | {c['val']} | {c['test']} | "
                     f"{min(bpms) if bpms else '-'}-{max(bpms) if bpms else '-'} | {'yes' if recs[0].get('drums') else 'no'} |")
    for label in ("split", "image_kind", "mode", "energy"):
        lines += [""] + _table(label, Counter(str(e.record.get(label)) for e in entries), n)
    both = Counter(f"{e.record.get('mode')} / {e.record.get('energy')}" for e in entries)
    lines += [""] + _table("mode / energy", both, n)
    ev = image_evidence(entries)
    if ev:
        lines += ["", "Image colour statistics alone (logistic regression, train split -> test split):", "",
                  "| label | test accuracy | chance | test records |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {k} | {100 * a:.1f}% | {100 * c:.1f}% | {m} |" for k, (a, c, m) in ev.items()]
    if audio:
        ev = audio_evidence(entries)
        lines += ["", "Audio sanity checks (test split):", "", "| label | test accuracy | chance | test records |",
                  "| --- | ---: | ---: | ---: |"]
        lines += [f"| {k} | {100 * a:.1f}% | {100 * c:.1f}% | {m} |" for k, (a, c, m) in ev.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        print(report(sys.argv[1], audio="--audio" in sys.argv[2:]))
    except (MelFusionError, IndexError) as exc:
        print(f"error: {exc if isinstance(exc, MelFusionError) else 'usage: python -m melfusion.data.stats MANIFEST'}",
              file=sys.stderr)
        sys.exit(2)
