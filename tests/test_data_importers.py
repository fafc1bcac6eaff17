"""Importers: small fixtures in MusicCaps' and MeLBench's published layouts become checked manifests."""
import csv
import json
from collections import Counter, defaultdict

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from melfusion.data.check import check_manifest
from melfusion.data.cli import main
from melfusion.data.importers import import_melbench, import_musiccaps
from melfusion.errors import MelFusionError

COLUMNS = ["ytid", "start_s", "end_s", "audioset_positive_labels", "aspect_list", "caption", "author_id",
           "is_balanced_subset", "is_audioset_eval"]


def tone(path, rate=44100, channels=2, seconds=10.0, freq=440.0):
    t = np.arange(int(rate * seconds)) / rate
    y = 0.3 * np.sin(2 * np.pi * freq * t)
    sf.write(str(path), np.stack([y] * channels, axis=1) if channels > 1 else y, rate)


def picture(path, size=(320, 240), colour=(200, 120, 40)):
    Image.new("RGB", size, colour).save(path)


@pytest.fixture
def musiccaps(tmp_path):
    root = tmp_path / "mc"
    clips, frames = root / "clips", root / "frames"
    clips.mkdir(parents=True)
    frames.mkdir()
    rows = [
        ["-0Gj8-vB1q4", "30", "40", "/m/0ggq0m", "['low quality', 'sustained strings', 'mellow piano']",
         "The low quality recording features a sustained strings melody.", "4", "False", "True"],
        ["abc123XYZ_0", "0", "10", "/m/02w4v", "['jazz', 'saxophone']", "A smooth jazz saxophone solo.", "1",
         "True", "True"],
        ["zzzzzzzzzzz", "10", "20", "/m/x", "[]", "Missing clip.", "2", "False", "False"],
        ["qqqqqqqqqqq", "20", "30", "/m/x", "[]", "Clip without frames.", "2", "False", "False"],
        ["rrrrrrrrrrr", "5", "15", "/m/x", "not a list", "One frame only.", "3", "False", "False"],
    ]
    with open(root / "musiccaps-public.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        w.writerows(rows)
    tone(clips / "-0Gj8-vB1q4.wav")                                     # <ytid>.wav, 44.1 kHz stereo
    tone(clips / "[abc123XYZ_0]-[0-10].flac", rate=48000, channels=1, freq=330.0)    # yt-dlp style name, FLAC
    tone(clips / "qqqqqqqqqqq_20.wav", rate=16000, channels=1)          # <ytid>_<start>.wav
    tone(clips / "rrrrrrrrrrr.wav", rate=22050, channels=1, freq=550.0)
    picture(frames / "-0Gj8-vB1q4_0.jpg")
    picture(frames / "-0Gj8-vB1q4_1.jpg", colour=(20, 30, 90))
    (frames / "abc123XYZ_0").mkdir()
    picture(frames / "abc123XYZ_0" / "frame_a.png")
    picture(frames / "abc123XYZ_0" / "frame_b.png")
    picture(frames / "rrrrrrrrrrr_0.jpg")
    return root


def test_musiccaps_layout_imports_two_frames_per_clip_in_one_split(musiccaps, tmp_path):
    out = tmp_path / "out"
    res = import_musiccaps(musiccaps / "musiccaps-public.csv", musiccaps / "clips", musiccaps / "frames", out)
    assert res.records == 5
    assert res.skipped == Counter({"clip not found": 1, "no frame found": 1})
    recs = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["id"] for r in recs] == ["-0Gj8-vB1q4-0", "-0Gj8-vB1q4-1", "abc123XYZ_0-0", "abc123XYZ_0-1", "rrrrrrrrrrr-0"]
    by_clip = defaultdict(set)
    for r in recs:
        by_clip[r["ytid"]].add((r["split"], r["audio"]))
    assert all(len(v) == 1 for v in by_clip.values())
    assert recs[0]["aspects"] == ["low quality", "sustained strings", "mellow piano"] and recs[4]["aspects"] == []
    assert recs[2]["caption"] == "A smooth jazz saxophone solo." and recs[2]["balanced_subset"] is True
    info = sf.info(str(out / recs[0]["audio"]))
    assert (info.samplerate, info.channels) == (16000, 1) and abs(info.duration - 10.0) < 0.01
    assert check_manifest(out / "manifest.jsonl").ok


def test_musiccaps_split_column_is_kept_and_strict_mode_names_the_csv_line(musiccaps, tmp_path):
    csv_path = musiccaps / "musiccaps-public.csv"
    rows = list(csv.DictReader(open(csv_path)))
    for r, s in zip(rows, ["train", "valid", "test", "train", "train"]):
        r["split"] = s
    with open(tmp_path / "split.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS + ["split"])
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "o"
    import_musiccaps(tmp_path / "split.csv", musiccaps / "clips", musiccaps / "frames", out, frames="first")
    recs = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(r["id"], r["split"]) for r in recs] == [("-0Gj8-vB1q4-0", "train"), ("abc123XYZ_0-0", "val"),
                                                       ("rrrrrrrrrrr-0", "train")]
    with pytest.raises(MelFusionError, match=r"line 4 \(ytid zzzzzzzzzzz\): clip not found"):
        import_musiccaps(csv_path, musiccaps / "clips", musiccaps / "frames", tmp_path / "s", strict=True)


def test_musiccaps_link_audio_points_at_the_original_clips(musiccaps, tmp_path):
    out = tmp_path / "linked"
    import_musiccaps(musiccaps / "musiccaps-public.csv", musiccaps / "clips", musiccaps / "frames", out, convert=False)
    recs = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert recs[0]["audio"] == "../mc/clips/-0Gj8-vB1q4.wav"
    rep = check_manifest(out / "manifest.jsonl")
    assert any("line 1 (id -0Gj8-vB1q4-0): sample rate 44100 Hz" in e for e in rep.errors)
    assert any("line 1 (id -0Gj8-vB1q4-0): 2 channels" in e for e in rep.errors)


@pytest.fixture
def melbench(tmp_path):
    root = tmp_path / "MeLBench"
    jazz = root / "Jazz"
    jazz.mkdir(parents=True)
    for i in range(5):                                   # side by side: 0001.jpg 0001.wav 0001.txt
        picture(jazz / f"{i:04d}.jpg")
        tone(jazz / f"{i:04d}.wav", rate=22050, channels=2, seconds=3.0, freq=200 + 30 * i)
        (jazz / f"{i:04d}.txt").write_text(f"Traditional jazz number {i} with trumpet and piano.\n")
    rock = root / "Rock"
    for d in ("images", "audio", "captions"):
        (rock / d).mkdir(parents=True)
    for i in range(5):                                   # images/ audio/ captions/ sub-folders
        picture(rock / "images" / f"r{i}.png")
        tone(rock / "audio" / f"r{i}.flac", rate=16000, channels=1, seconds=3.0, freq=400 + 30 * i)
        if i != 4:
            (rock / "captions" / f"r{i}.txt").write_text(f"Rock and roll track {i}.")
    newage = root / "New_Age" / "Healing Hz"                # a sub-genre folder, captions in a CSV
    newage.mkdir(parents=True)
    with open(root / "New_Age" / "captions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "caption"])
        for i in range(3):
            picture(newage / f"n{i}.jpg")
            tone(newage / f"n{i}.wav", rate=16000, channels=1, seconds=3.0, freq=600 + 30 * i)
            w.writerow([f"n{i}.wav", f"Ambient pads number {i}."])
    return root


def test_melbench_layouts_import_with_genres_subgenres_and_a_balanced_split(melbench, tmp_path, capsys):
    out = tmp_path / "mb"
    assert main(["import-melbench", str(melbench), "--out", str(out)]) == 0
    assert "skipped 1: no caption" in capsys.readouterr().out
    recs = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert Counter(r["genre"] for r in recs) == {"jazz": 5, "rock": 4, "new age": 3}
    assert Counter(r["split"] for r in recs if r["genre"] == "jazz") == {"train": 3, "val": 1, "test": 1}
    assert {r.get("subgenre") for r in recs if r["genre"] == "new age"} == {"healing hz"}
    jazz0 = next(r for r in recs if r["id"] == "Jazz-0000")
    assert jazz0["caption"] == "Traditional jazz number 0 with trumpet and piano."
    assert next(r for r in recs if r["id"] == "New_Age-Healing_Hz-n2")["caption"] == "Ambient pads number 2."
    assert (out / jazz0["image"]).resolve() == (melbench / "Jazz" / "0000.jpg").resolve()
    rep = check_manifest(out / "manifest.jsonl")
    assert rep.ok, rep.errors
    assert len({r["id"] for r in recs}) == len(recs)


def test_melbench_strict_mode_refuses_an_incomplete_triplet(melbench, tmp_path):
    with pytest.raises(MelFusionError, match="r4: no caption"):
        import_melbench(melbench, tmp_path / "s", strict=True)
    with pytest.raises(MelFusionError, match="no genre folders"):
        (tmp_path / "empty").mkdir()
        import_melbench(tmp_path / "empty", tmp_path / "e")
