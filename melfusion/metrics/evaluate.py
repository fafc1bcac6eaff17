"""Evaluate generated music against a reference manifest split: FAD, FD, KL, IMSM and the judge's accuracy.

`evaluate_features` is the core (it takes judge front-end features, so cached reference features
and synthetic sets can be scored without writing files); `evaluate_dir` reads a folder of
`<id>.wav` files and checks it against the manifest first. `markdown_table` lays rows out as the
paper's Table 1 (FD, KL, FAD, IMSM) with the judge's accuracies beside them.

On SynthMeL with the `synthmel` embedder (docs/evaluation.md):
- FAD: Frechet distance between the judge's penultimate-layer embeddings of 1 s windows, all
  windows of all clips pooled (the way FAD pools VGGish's 0.96 s frames);
- FD: the same on one clip-level embedding per clip (time pooled over the whole clip);
- KL: paired KL(reference || generated) of the judge's 15-way genre softmax (with audioldm_eval's
  1e-6 offset); `kl_sigmoid` the per-label Bernoulli KL of its mode/energy/drums/instrument sigmoids;
- IMSM: docs/metrics.md's formula over the whole set with the two contrastive judges (n = number of
  clips; chance is 1/n and the ceiling e / (e + n - 1)).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from melfusion.errors import MelFusionError
from melfusion.metrics.embedders import synthmel as sm
from melfusion.metrics.frechet import frechet_distance_embeddings
from melfusion.metrics.imsm import imsm_scores, similarity_logits
from melfusion.metrics.kl import kl_sigmoid_per_pair, paired_kl

LABELS = ("genre", "mode", "energy")


def evaluate_features(entries, reference: Sequence[torch.Tensor], generated: Sequence[torch.Tensor], judges,
                      images: np.ndarray | None = None, embedder=None, reference_waves=None,
                      generated_waves=None, memo: dict | None = None) -> dict:
    """Scores of `generated[i]` made for `entries[i]` against `reference[i]` (features `(frames, 76)`).

    `judges` is (AudioJudge, AudioTextJudge, ImageTextJudge); `images` `(n, 64, 64, 3)` in [0, 1]
    (read from the entries when None). `memo`, a dict kept between calls with the same entries and
    reference, saves recomputing the reference's outputs and the images' embeddings. `embedder`, when
    given, replaces the judge for FAD and FD (and for KL when it is an `AudioClassifier`); it needs the
    waves at 16 kHz.
    """
    audio, audio_text, image_text = judges
    n = len(entries)
    if not (n == len(reference) == len(generated)):
        raise MelFusionError(f"evaluation needs matched sets: {n} records, {len(reference)} reference and "
                             f"{len(generated)} generated clips")
    if n < 2:
        raise MelFusionError(f"a Frechet distance needs at least two clips per set, got {n}")
    ref = [sm._pad_min(f) for f in reference]
    gen = [sm._pad_min(f) for f in generated]
    memo = {} if memo is None else memo
    if "reference" not in memo:
        memo["reference"] = audio.outputs(None, feats=ref)
    ro, go = memo["reference"], audio.outputs(None, feats=gen)
    result: dict = {"n": n}
    if embedder is None:
        result["embedder"] = "synthmel"
        result["fad"] = frechet_distance_embeddings(np.concatenate(ro["frames"]), np.concatenate(go["frames"]))
        result["fd"] = frechet_distance_embeddings(ro["embed"], go["embed"])
        result["kl"] = paired_kl(ro["genre"], go["genre"])["kl_softmax"]
    else:
        from melfusion.metrics.frechet import frechet_audio_distance

        result["embedder"] = embedder.name
        result["fad"] = frechet_audio_distance(embedder, reference_waves, generated_waves, sm.SAMPLE_RATE, frames=True)
        result["fd"] = frechet_audio_distance(embedder, reference_waves, generated_waves, sm.SAMPLE_RATE, frames=False)
        if hasattr(embedder, "label_logits"):
            result["kl"] = paired_kl(embedder.label_logits(reference_waves, sm.SAMPLE_RATE),
                                     embedder.label_logits(generated_waves, sm.SAMPLE_RATE))["kl_softmax"]
        else:
            result["kl"] = paired_kl(ro["genre"], go["genre"])["kl_softmax"]
    result["kl_sigmoid"] = float(kl_sigmoid_per_pair(audio.multilabel(ro), audio.multilabel(go), bernoulli=True).mean())

    captions = [e.record["caption"] for e in entries]
    if "image_text" not in memo:
        if images is None:
            images = np.stack([sm.load_image_array(e.image_path) for e in entries])
        memo["image_text"] = similarity_logits(image_text.embed_arrays(images), image_text.embed_text(captions),
                                               image_text.logit_scale)
    it = memo["image_text"]
    at = similarity_logits(audio_text.embed_features(gen), audio_text.embed_text(captions), audio_text.logit_scale)
    result["imsm"] = float(imsm_scores(it, at).mean())
    result["imsm_chance"] = 1.0 / n
    result["imsm_ceiling"] = math.e / (math.e + n - 1)

    pred = audio.predict(go)
    result["accuracy"] = {k: float(np.mean([p == e.record.get(k) for p, e in zip(pred[k], entries)])) for k in LABELS}
    # Each clip's predicted labels, so two systems can be compared record by record (paired tests).
    result["predictions"] = {e.record["id"]: {k: pred[k][i] for k in LABELS} for i, e in enumerate(entries)}
    return result


def markdown_table(rows: dict[str, dict]) -> str:
    """Rows {method: result} in Table 1's column order (FD, KL, FAD, IMSM), then the judge's accuracies."""
    # IMSM x n beside IMSM: 1 is chance, e n / (e + n - 1) the ceiling; at n in the hundreds the
    # raw figure differs only in the fifth decimal (docs/metrics.md, "Caution").
    lines = ["| Method | FD ↓ | KL ↓ | FAD ↓ | IMSM ↑ | IMSM×n ↑ "
             "| genre acc ↑ | mode acc ↑ | energy acc ↑ |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    def num(x):  # no "-0.00" from round-off (KL's 1e-6 offset makes KL(p||p) slightly negative)
        return f"{0.0 if abs(x) < 5e-3 else x:.2f}"

    for name, r in rows.items():
        acc = r["accuracy"]
        lines.append(f"| {name} | {num(r['fd'])} | {num(r['kl'])} | {num(r['fad'])} | {r['imsm']:.6f} | "
                     f"{r['imsm'] * r['n']:.5f} | "
                     f"{acc['genre']:.1%} | {acc['mode']:.1%} | {acc['energy']:.1%} |")
    n = {r["n"] for r in rows.values()}
    if len(n) == 1:
        k = n.pop()
        lines.append("")
        lines.append(f"IMSM over n = {k} clips: chance 1/n = {1 / k:.4f}, ceiling e/(e+n-1) = "
                     f"{math.e / (math.e + k - 1):.4f} (docs/metrics.md).")
    return "\n".join(lines)


def read_generated(directory: str | Path, entries, subset: bool = False, log=None):
    """Match `<id>.wav` files in `directory` to `entries`; returns (entries, waves at 16 kHz, resampled count)."""
    import soundfile as sf

    from melfusion.audio.io import read_audio

    log = log or (lambda msg: print(msg, file=sys.stderr))
    d = Path(directory)
    if not d.is_dir():
        raise MelFusionError(f"generated folder not found: {d}")
    files = {p.stem: p for p in sorted(d.glob("*.wav"))}
    if not files:
        raise MelFusionError(f"no .wav files in {d}")
    by_id = {e.id: e for e in entries}
    unknown = sorted(set(files) - set(by_id))
    if unknown:
        raise MelFusionError(f"{len(unknown)} generated clip(s) have no reference record in the split, e.g. "
                             f"{unknown[0]}.wav")
    missing = [e.id for e in entries if e.id not in files]
    if missing and not subset:
        raise MelFusionError(f"{len(missing)} reference record(s) have no generated clip, e.g. {missing[0]}.wav "
                             f"(pass --subset to score only the clips present)")
    chosen = [e for e in entries if e.id in files]
    waves, rates = [], {}
    for e in chosen:
        try:
            rate = sf.info(str(files[e.id])).samplerate
        except Exception as exc:
            raise MelFusionError(f"cannot read {files[e.id]}: {str(exc).splitlines()[0]}") from None
        if rate != sm.SAMPLE_RATE:
            rates[rate] = rates.get(rate, 0) + 1
        waves.append(read_audio(files[e.id], sm.SAMPLE_RATE))
    for rate, count in sorted(rates.items()):
        log(f"note: {count} generated clip(s) at {rate} Hz resampled to {sm.SAMPLE_RATE} Hz")
    return chosen, waves, sum(rates.values())


def load_reference(manifest, split: str):
    from melfusion.data.manifest import read_manifest

    entries, problems = read_manifest(manifest)
    if problems:
        raise MelFusionError(f"{manifest}: {problems[0]}")
    entries = [e for e in entries if e.record.get("split") == split]
    if not entries:
        raise MelFusionError(f"{manifest} has no records in split {split!r}")
    return entries


def evaluate_dir(generated_dir, manifest, split: str = "test", embedder_spec: str = "synthmel",
                 judges_dir=None, subset: bool = False, log=None) -> dict:
    from melfusion.audio.io import read_audio
    from melfusion.metrics.embedders import load_embedder

    entries = load_reference(manifest, split)
    chosen, gen_waves, resampled = read_generated(generated_dir, entries, subset=subset, log=log)
    if len(chosen) < 2:
        raise MelFusionError(f"a Frechet distance needs at least two clips per set, got {len(chosen)}")
    kind, _, path = embedder_spec.partition(":")
    if kind == "synthmel" and path:
        judges_dir = judges_dir or path
    judges = sm.load_judges(judges_dir)
    embedder = None if kind == "synthmel" else load_embedder(embedder_spec)
    ref_waves = [read_audio(e.audio_path, sm.SAMPLE_RATE) for e in chosen]
    front = sm.JudgeFrontEnd()
    result = evaluate_features(chosen, sm.features_of(ref_waves, front), sm.features_of(gen_waves, front), judges,
                               embedder=embedder, reference_waves=ref_waves, generated_waves=gen_waves)
    result.update({"split": split, "reference": str(manifest), "generated": str(generated_dir),
                   "resampled_clips": resampled})
    return result
