"""SynthMeL: determinism, resume, audio and image properties, labels, splits and captions."""
import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from melfusion.data import captions, music
from melfusion.data.genres import GENRE_NAMES, GENRES, IMAGE_KIND_WEIGHTS, IMAGE_KINDS
from melfusion.data.synth import SynthConfig, compose_record, plan, synthesize
from melfusion.errors import MelFusionError

N = 30
LUMA = np.array([0.299, 0.587, 0.114])


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "a"
    synthesize(N, out, SynthConfig(seed=7), workers=2, progress=False)
    return out


def records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]


def tree_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_the_same_seed_gives_byte_identical_files_and_another_seed_differs(made, tmp_path):
    again = tmp_path / "b"
    synthesize(N, again, SynthConfig(seed=7), workers=1, progress=False)  # one process, not two
    a, b = tree_bytes(made), tree_bytes(again)
    assert a.keys() == b.keys() and len(a) == 2 * N + 2
    assert all(a[k] == b[k] for k in a)
    other = tmp_path / "c"
    synthesize(N, other, SynthConfig(seed=8), workers=2, progress=False)
    c = tree_bytes(other)
    differing = [k for k in a if k.startswith("audio/") and a[k] != c.get(k)]
    assert len(differing) == N


def test_resume_makes_only_the_missing_records_and_extends(made, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(made, out)
    recs = records(out)
    (out / recs[3]["audio"]).unlink()
    (out / recs[5]["audio"]).unlink()
    (out / recs[9]["image"]).unlink()
    (out / "audio" / ".tmp-killed.wav").write_bytes(b"half")  # what a killed run leaves
    res = synthesize(N, out, SynthConfig(seed=7), workers=1, progress=False)
    assert res["made"] == 3 and res["kept"] == N - 3
    assert tree_bytes(out) == tree_bytes(made)
    res = synthesize(N + 5, out, SynthConfig(seed=7), workers=1, progress=False)
    assert res["made"] == 5
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert lines[:N] == (made / "manifest.jsonl").read_text().splitlines()


def test_resume_refuses_a_folder_made_with_another_seed_or_foreign_files(made, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(made, out)
    with pytest.raises(MelFusionError, match="seed 7"):
        synthesize(5, out, SynthConfig(seed=1), progress=False)
    foreign = tmp_path / "f"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(MelFusionError, match="not empty"):
        synthesize(5, foreign, SynthConfig(seed=1), progress=False)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_audio_is_16k_mono_ten_seconds_loudness_normalised_never_silent_or_clipped(made):
    for r in records(made):
        info = sf.info(str(made / r["audio"]))
        assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", 160000)
        y, _ = sf.read(str(made / r["audio"]))
        rms_db = 20 * np.log10(np.sqrt(np.mean(y ** 2)))
        assert -24.0 < rms_db < -17.5, r["id"]
        assert np.max(np.abs(y)) < 0.9
        # sound through the whole clip, not just at the start
        assert min(np.sqrt(np.mean(seg ** 2)) for seg in np.array_split(y[: 150000], 10)) > 1e-3


def test_duration_is_configurable(tmp_path):
    synthesize(2, tmp_path / "d", SynthConfig(seed=1, duration_s=4.0), progress=False)
    assert sf.info(str(tmp_path / "d" / "audio" / "synthmel-000001.wav")).frames == 64000


def image_stats(path: Path) -> tuple[float, float, float, float]:
    arr = np.asarray(Image.open(path), dtype=np.float64) / 255.0
    lum = arr @ LUMA
    edges = np.mean(np.abs(np.diff(lum, axis=0)) > 0.08) + np.mean(np.abs(np.diff(lum, axis=1)) > 0.08)
    return lum.mean(), lum.std(), edges, (arr[..., 0] - arr[..., 2]).mean()


def test_images_carry_mode_in_luminance_and_hue_and_energy_in_contrast_and_edges(made):
    stats = defaultdict(list)
    for r in records(made):
        im = Image.open(made / r["image"])
        assert im.size == (256, 256) and im.mode == "RGB"
        stats[r["mode"]].append(image_stats(made / r["image"]))
        stats[r["energy"]].append(image_stats(made / r["image"]))
    major, minor = np.array(stats["major"]), np.array(stats["minor"])
    driving, calm = np.array(stats["driving"]), np.array(stats["calm"])
    assert major[:, 0].min() > minor[:, 0].max()              # every major image is lighter
    assert major[:, 3].mean() > 0.1 > -0.05 > minor[:, 3].mean()  # warm (red over blue) vs cool
    assert driving[:, 1].min() > calm[:, 1].max()             # contrast
    assert driving[:, 2].mean() > 3 * calm[:, 2].mean()       # hard edges


def test_every_record_carries_its_labels(made):
    for r in records(made):
        assert r["genre"] in GENRE_NAMES
        assert r["mode"] in ("major", "minor") and r["energy"] in ("driving", "calm")
        assert r["key"].endswith(r["mode"]) and r["image_kind"] in IMAGE_KINDS
        g = next(g for g in GENRES if g.name == r["genre"])
        assert r["subgenre"] in g.subgenres and r["scene"] in g.scenes
        assert r["instruments"][-1] == g.lead.name and r["drums"] == ("drums" in r["instruments"])
        assert g.tempo[0] <= r["bpm"] <= g.tempo[1] and r["melody_id"]


def test_genres_have_three_or_more_subgenres_and_distinct_instrumentation():
    assert len(GENRES) == 15 and all(len(g.subgenres) >= 3 for g in GENRES)
    sounds = {(g.lead.program, g.chords.program, g.bass.program if g.bass else None, g.drums) for g in GENRES}
    assert len(sounds) == 15
    assert len({g.lead.program for g in GENRES}) == 15


PLANNED = 600


@pytest.fixture(scope="module")
def composed():
    cfg = SynthConfig(seed=0)
    return [compose_record(cfg, i)[:2] for i in range(PLANNED)]


def test_splits_are_60_20_20_balanced_by_genre_with_no_melody_in_two_splits(composed):
    counts = Counter(plan(0, i)["genre"].name for i in range(2000))
    assert max(counts.values()) - min(counts.values()) <= 1
    per_genre = defaultdict(Counter)
    for i in range(2000):
        p = plan(0, i)
        per_genre[p["genre"].name][p["split"]] += 1
    for c in per_genre.values():
        n = sum(c.values())
        assert abs(c["train"] / n - 0.6) < 0.03 and abs(c["test"] / n - 0.2) < 0.03
    seen = {}
    for rec, _ in composed:
        assert seen.setdefault(rec["melody_id"], rec["split"]) == rec["split"]
    assert sum(not m.startswith("gen/") for m in seen) > 100  # real tunes from the corpus are used


def test_image_kinds_follow_melbench_proportions(composed):
    c = Counter(rec["image_kind"] for rec, _ in composed)
    for kind, w in zip(IMAGE_KINDS, IMAGE_KIND_WEIGHTS):
        assert abs(c[kind] / PLANNED - w) < 0.05


def test_energy_means_faster_denser_music_within_each_genre(composed):
    by = defaultdict(lambda: defaultdict(list))
    for rec, piece in composed:
        notes_per_s = len(piece.notes) / 10.0
        by[rec["genre"]][rec["energy"]].append((rec["bpm"], notes_per_s))
    for genre, d in by.items():
        calm, driving = np.array(d["calm"]), np.array(d["driving"])
        assert calm[:, 0].max() < driving[:, 0].min(), genre
        assert driving[:, 1].mean() > 1.4 * calm[:, 1].mean(), genre


def test_mode_is_in_the_notes_the_third_above_the_tonic(composed):
    for rec, piece in composed[:200]:
        pcs = Counter((n.pitch - piece.tonic) % 12 for n in piece.notes if n.channel != music.DRUM_CHANNEL)
        if rec["mode"] == "major":
            assert pcs[4] > pcs[3], rec["id"]
        else:
            assert pcs[3] > pcs[4], rec["id"]


def test_captions_name_the_subgenre_vary_and_never_leak_mode_or_mood(composed):
    caps = [rec["caption"] for rec, _ in composed]
    for (rec, _), cap in zip(composed, caps):
        assert not captions.leaked_words(cap), cap
        assert rec["subgenre"] in cap
    tempo = sum("BPM" in c or "beats per minute" in c for c in caps)
    assert tempo / len(caps) <= 0.3
    assert len(set(caps)) == len(caps)
    assert len({" ".join(c.split()[:3]) for c in caps}) >= 15  # many openings, not one sentence with slots


def test_mode_is_audible_in_the_rendered_audio(made):
    librosa = pytest.importorskip("librosa")
    major_profile = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
    minor_profile = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
    right = 0
    for r in records(made):
        y, sr = sf.read(str(made / r["audio"]))
        chroma = np.roll(librosa.feature.chroma_stft(y=y, sr=sr, n_fft=4096).mean(axis=1),
                         -music.KEY_NAMES.index(r["key"].split()[0]))
        guess = "major" if np.corrcoef(chroma, major_profile)[0, 1] > np.corrcoef(chroma, minor_profile)[0, 1] else "minor"
        right += guess == r["mode"]
    assert right / N >= 0.8


def test_stats_report_counts_and_image_colour_classifier_beats_chance(made):
    from melfusion.data.stats import image_evidence, report
    from melfusion.data.manifest import read_manifest

    text = report(made / "manifest.jsonl")
    assert f"{N} records" in text and "| mode / energy |" in text
    entries, _ = read_manifest(made / "manifest.jsonl")
    for e in entries:  # put every record in train or test so the tiny set has both
        e.record["split"] = "test" if int(e.id[-2:]) % 3 == 0 else "train"
    ev = image_evidence(entries)
    for label in ("mode", "energy"):
        acc, chance, n = ev[label]
        assert n == 10 and acc >= 0.9 and acc > chance



def test_a_hung_render_is_retried_and_a_render_that_always_hangs_fails_in_one_line(monkeypatch):
    import subprocess

    from melfusion.data import render

    _, piece, _ = compose_record(SynthConfig(seed=0, duration_s=1.0), 0)
    midi = music.midi_bytes(piece)
    real_run, calls = subprocess.run, []

    def hangs_first(cmd, **kw):
        calls.append(kw["timeout"])
        if len(calls) == 1:
            raise subprocess.TimeoutExpired(cmd, kw["timeout"])
        return real_run(cmd, **kw)

    monkeypatch.setattr(render.subprocess, "run", hangs_first)
    wave = render.render_midi(midi, 16000)
    assert len(calls) == 2 and calls[0] == render.RENDER_TIMEOUT_S
    assert wave.size > 8000 and np.abs(wave).max() > 1e-3

    def always_hangs(cmd, **kw):
        calls.append(kw["timeout"])
        raise subprocess.TimeoutExpired(cmd, kw["timeout"])

    calls.clear()
    monkeypatch.setattr(render.subprocess, "run", always_hangs)
    with pytest.raises(MelFusionError, match="did not finish") as err:
        render.render_midi(midi, 16000)
    assert len(calls) == render.RENDER_TRIES and "\n" not in str(err.value)
