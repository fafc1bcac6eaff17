"""Hostile input: photos upright as EXIF says, 16-bit images not blown out, captions with control
characters and broken UTF-8, and a small deterministic run of benchmarks/fuzz_inputs.py (60 images,
60 captions) through load_image, check_prompt, the tiny pipeline, the CLI, the demo's handlers and
the study's forms: accepted or refused with a one-line message, never a traceback, a 500 or a
half-written output."""
import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import fuzz_inputs  # noqa: E402

from melfusion.cli import main  # noqa: E402
from melfusion.errors import MelFusionError  # noqa: E402
from melfusion.images import load_image  # noqa: E402
from melfusion.pipeline import check_prompt  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_photo_loads_upright_as_its_exif_orientation_says(tmp_path, orientation, fmt):
    """A phone stores the sensor's frame and a tag; the model must see what the user sees. Orientation
    6 is a phone held upright: the stored frame is landscape and shows turned 90 degrees clockwise."""
    stored = np.asarray(fuzz_inputs.picture(48, 32))
    viewed = fuzz_inputs.VIEWED[orientation](stored)
    path = tmp_path / f"photo.{fmt.lower()}"
    path.write_bytes(fuzz_inputs.with_orientation(Image.fromarray(stored), orientation, fmt))
    got = np.asarray(load_image(path)).astype(int)
    assert got.shape == viewed.shape
    assert np.abs(got - viewed.astype(int)).mean() < (1 if fmt == "PNG" else 12)
    if orientation == 6:  # the red corner, top left as stored, shows top right
        assert got[0, -1].tolist()[0] > 200 and got[0, 0].tolist()[0] < 120


def test_a_damaged_exif_block_leaves_the_picture_as_stored(tmp_path):
    jpg = fuzz_inputs.base_images()["exif-junk.jpg"]
    (tmp_path / "junk.jpg").write_bytes(jpg)
    assert load_image(tmp_path / "junk.jpg").size == (48, 32)


@pytest.mark.parametrize("name", ["gray16.png", "gray16.tif", "rgb16.png", "f32.tif"])
def test_deep_images_keep_their_levels(tmp_path, name):
    """PIL's own convert clips 16-bit values at 255: a 16-bit scan would turn white."""
    (tmp_path / name).write_bytes(fuzz_inputs.base_images()[name])
    gray = np.asarray(load_image(tmp_path / name).convert("L")).astype(int)
    assert gray[0, 0] < 10 and gray[-1, -1] > 245 and 100 < gray.mean() < 155


def test_cmyk_and_animations_load_and_other_formats_are_refused(tmp_path):
    files = fuzz_inputs.base_images() | fuzz_inputs.lying_images()
    for name in ("cmyk.jpg", "cmyk.tif", "anim.gif", "anim.webp", "mpo.jpg", "p-trns.png"):
        (tmp_path / name).write_bytes(files[name])
        assert load_image(tmp_path / name).size == (48, 32), name
    for name in ("eps.png", "ico.ico", "ppm.png", "svg.png"):
        (tmp_path / name).write_bytes(files[name])
        with pytest.raises(MelFusionError, match="not a readable image"):
            load_image(tmp_path / name)


def test_a_bomb_over_pils_own_limit_is_one_line_on_the_command_line(tmp_path, capsys):
    """PIL warns past 89 megapixels and gives up past 179: the CLI still says one line, "too large"."""
    for name in ("lie-png-65535x65535.png", "lie-png-100000x100000.png"):
        path = tmp_path / name
        path.write_bytes(fuzz_inputs.lying_images()[name])
        assert main(["generate", "--image", str(path), "--text", "piano", "--out", str(tmp_path / "a.wav"),
                     "--model", "tiny", "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "too large" in err and "\n" not in err
    assert not list(tmp_path.glob("*.wav"))


@pytest.mark.parametrize("caption,expected", [
    ("calm\x00piano", "calm piano"), ("\x1b[31mred jazz\x1b[0m", "[31mred jazz [0m"), ("a\x85b", "a b"),
    ("\u202ejazz piano\u202c", "\u202ejazz piano\u202c"), ("👩🏽‍🎤 folk", "👩🏽‍🎤 folk"),
    (" " * 9_995 + "piano", "piano"),
])
def test_control_characters_become_spaces_and_other_text_is_kept(caption, expected):
    assert check_prompt(caption) == expected


@pytest.mark.parametrize("caption,message", [
    ("piano \ud800 jazz", "not valid text"), ("\udcff", "not valid text"), ("\x00" * 10, "empty"),
    ("\u200b\ufeff", "no words"), ("🎹" * 10_000, "too long"), ("piano " * 40_000, "too long"), (b"piano", "text"),
])
def test_broken_or_empty_captions_are_refused(caption, message):
    with pytest.raises(MelFusionError, match=message):
        check_prompt(caption)


def test_a_caption_of_broken_utf8_on_the_command_line_is_one_line(tmp_path, capsys):
    """Bytes that are not UTF-8 reach Python as lone surrogates; the tokenizer would raise a TypeError."""
    bad = b"piano \xff jazz".decode("utf-8", "surrogateescape")
    assert main(["generate", "--image", str(fuzz_inputs.ROOT / "examples" / "beach-post.png"), "--text", bad,
                 "--out", str(tmp_path / "a.wav"), "--model", "tiny", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "not valid text" in err and "\n" not in err
    assert not (tmp_path / "a.wav").exists()


def test_the_demo_preview_is_small_and_settings_from_an_api_client_are_checked(tiny_pipe, tmp_path):
    from melfusion.apps.demo import PREVIEW_SIDE, Composer

    big = tmp_path / "big.png"
    Image.new("RGB", (3000, 2000), (10, 20, 30)).save(big)
    c = Composer(tiny_pipe, out_root=tmp_path / "out")
    shown, message = c.preview(str(big))
    assert max(shown.size) == PREVIEW_SIDE and message == ""
    for settings, error in [((float("nan"), 0, 1, 1.0), "finite"), ((1.0, 1e30, 1, 1.0), "seed"),
                            ((1.0, 0, 10**9, 1.0), "steps"), ((1.0, 0, 1, 99.0), "guidance"),
                            (("abc", 0, 1, 1.0), "number"), ((1.0, 0.5, 1, 1.0), "seed")]:
        with pytest.raises(MelFusionError, match=error):
            c(str(big), "piano", *settings)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_a_failed_result_leaves_no_half_written_folder(tiny_pipe, tmp_path, monkeypatch):
    import melfusion.apps.video as video
    from melfusion.apps.demo import Composer

    def broken(*args, **kwargs):
        raise MelFusionError("ffmpeg could not write the video: disk full")

    monkeypatch.setattr(video, "make_video", broken)
    c = Composer(tiny_pipe, out_root=tmp_path / "out")
    with pytest.raises(MelFusionError, match="disk full"):
        c(str(fuzz_inputs.ROOT / "examples" / "beach-post.png"), "piano", 1.0, 0, 1, 1.0)
    assert list((tmp_path / "out").iterdir()) == []


def test_the_study_create_form_refuses_a_limit_that_is_not_ascii_digits(tmp_path):
    """'²'.isdigit() is True but int('²') raises: the form answered 500."""
    from starlette.testclient import TestClient

    from melfusion.apps.study.app import StudyApp
    from melfusion.apps.study.build import create_study

    root = fuzz_inputs.make_sets_root(tmp_path / "sets", [])
    res = create_study(root / "manifest.jsonl", {"one": str(root / "one"), "two": str(root / "two")},
                       tmp_path / "served" / "study")
    (tmp_path / "studies").mkdir()
    study = StudyApp(tmp_path / "served" / "study", sets_root=root, studies_root=tmp_path / "studies")
    with TestClient(study.application(), raise_server_exceptions=False) as client:
        for limit in ("²", "١٢", "9" * 5000, "-1", "1.5"):
            r = client.post("/admin/create", data={"token": res["token"], "nonce": study.nonce, "name": "s",
                                                   "manifest": "manifest.jsonl", "set": ["one"], "system:one": "one",
                                                   "task": "ovl_rel", "limit": limit})
            assert r.status_code == 400 and "limit" in r.text, limit
    assert list((tmp_path / "studies").iterdir()) == []


def test_sixty_mutated_images_and_sixty_odd_captions_everywhere(tmp_path):
    lines = io.StringIO()
    tallies = fuzz_inputs.run(60, 60, seed=0, work=tmp_path, server=False, sample=12, big=False,
                              log=lambda s: lines.write(s + "\n"))
    by_name = {t.name: t for t in tallies}
    failures = [f"[{t.name}] {f}" for t in tallies for f in t.failures]
    assert not failures, "\n".join(failures[:20])
    assert by_name["load_image"].accepted >= 30 and by_name["load_image"].refused >= 10
    assert by_name["check_prompt"].accepted >= 15 and by_name["check_prompt"].refused >= 15
    assert by_name["pipeline (tiny)"].accepted > 0 and by_name["cli generate"].refused > 0
    assert by_name["study forms"].accepted > 0
