"""The command line: music out for good input; one line and a non-zero exit for bad input."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from melfusion.cli import main
from melfusion.images import load_image

EXAMPLE = Path(__file__).parents[1] / "examples" / "beach-post.png"


def _generate(tmp_path, *extra, image=EXAMPLE, text="folk guitar by the sea", out="song.wav"):
    argv = ["generate", "--image", str(image), "--text", text, "--out", str(tmp_path / out),
            "--model", "tiny", "--steps", "2", "--duration", "1.0", "--quiet", *extra]
    return main(argv)


def test_generate_writes_a_wav_and_says_the_weights_are_random(tmp_path, capsys):
    assert _generate(tmp_path, "--seed", "3") == 0
    wave, rate = sf.read(str(tmp_path / "song.wav"))
    assert rate == 16000 and wave.shape == (16000,)
    assert np.abs(wave).max() > 0.01
    assert "random" in capsys.readouterr().err
    # The same seed writes the same file.
    assert _generate(tmp_path, "--seed", "3", out="again.wav") == 0
    assert (tmp_path / "song.wav").read_bytes() == (tmp_path / "again.wav").read_bytes()


def test_default_model_runs_from_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "melfusion", "generate", "--image", str(EXAMPLE), "--text",
                           "calm piano", "--out", str(tmp_path / "a.wav"), "--steps", "2", "--duration", "1",
                           "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "a.wav").stat().st_size > 1000
    assert "random" not in proc.stderr  # the shipped default, not the random fallback


def _bad_files(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(EXAMPLE.read_bytes()[:400])
    bomb = tmp_path / "bomb.png"
    Image.new("1", (10_000, 5_000)).save(bomb)  # 50 megapixels in a few kilobytes
    return {"missing": (tmp_path / "nope.png", "not found"), "empty": (empty, "empty"),
            "text": (text, "not a readable image"), "truncated": (truncated, "corrupt or truncated"),
            "bomb": (bomb, "too large"), "directory": (tmp_path, "not a file")}


@pytest.mark.parametrize("case", ["missing", "empty", "text", "truncated", "bomb", "directory"])
def test_bad_images_fail_cleanly_without_output(tmp_path, capsys, case):
    path, message = _bad_files(tmp_path)[case]
    assert _generate(tmp_path, image=path) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not (tmp_path / "song.wav").exists()


@pytest.mark.parametrize("args,message", [
    (dict(text=""), "caption is empty"),
    (dict(text="la " * 400), "too long"),
    (dict(out="song.mp3"), ".wav"),
])
def test_bad_captions_and_outputs_fail_cleanly(tmp_path, capsys, args, message):
    assert _generate(tmp_path, **args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not list(tmp_path.glob("*.wav")) and not list(tmp_path.glob("*.mp3"))


@pytest.mark.parametrize("extra,message", [
    (["--duration", "0.1"], "duration"),
    (["--duration", "600"], "duration"),
    (["--model", "/nonexistent/model"], "model directory not found"),
])
def test_bad_settings_fail_cleanly(tmp_path, capsys, extra, message):
    assert _generate(tmp_path, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not (tmp_path / "song.wav").exists()


def test_malformed_model_directory_fails_cleanly(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text('{"components": {}}')
    assert _generate(tmp_path, "--model", str(model)) == 2
    err = capsys.readouterr().err.strip()
    assert "malformed" in err and "\n" not in err


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "I;16"])
def test_grayscale_palette_and_alpha_images_become_rgb(tmp_path, mode):
    src = Image.open(EXAMPLE)
    img = src.convert(mode) if mode != "I;16" else src.convert("L").convert("I;16")
    path = tmp_path / f"img-{mode.replace(';', '')}.png"
    img.save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == src.size


def test_transparent_pixels_become_white(tmp_path):
    img = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    img.save(tmp_path / "clear.png")
    assert load_image(tmp_path / "clear.png").getpixel((0, 0)) == (255, 255, 255)


def test_generate_accepts_a_grayscale_image(tmp_path):
    Image.open(EXAMPLE).convert("L").save(tmp_path / "gray.png")
    assert _generate(tmp_path, image=tmp_path / "gray.png") == 0


def test_info_prints_parameter_counts_of_the_paper_preset(capsys):
    assert main(["info", "--preset", "paper"]) == 0
    out = capsys.readouterr().out
    assert "859,520,964" in out and "music unet" in out


def test_an_unwritable_output_folder_is_one_line(tmp_path, capsys):
    import os

    if os.geteuid() == 0:
        # root writes anywhere; a path under a regular file fails for everyone
        (tmp_path / "file").write_text("x")
        target = tmp_path / "file" / "song.wav"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "song.wav"
    code = main(["generate", "--image", str(EXAMPLE), "--text", "jazz", "--out", str(target), "--model", "tiny",
                 "--steps", "1", "--duration", "1", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: cannot write") and "\n" not in err  # before any model loads


def test_info_prints_each_synapse_layers_alpha_and_image_projection_norms(tmp_path, capsys):
    from melfusion import presets

    pipe = presets.build("tiny", seed=0)
    syn = pipe.music.synapse
    syn.zero_projections()
    with torch.no_grad():
        syn.layers[0].alpha_logit.fill_(2.0)  # sigmoid(2) = 0.881
        syn.layers[0].to_v_image.weight.fill_(0.5)
    pipe.save_pretrained(tmp_path / "model")
    assert main(["info", "--model", str(tmp_path / "model")]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if " alpha " in line and "|W_v image|" in line]
    assert len(rows) == len(syn.layers) >= 2
    v = 0.5 * syn.layers[0].to_v_image.weight.numel() ** 0.5
    assert "alpha 0.881" in rows[0] and f"|W_v image| {v:7.3f}" in rows[0] and "|W_k image|   0.000" in rows[0]
    assert "alpha 0.500" in rows[1] and "|W_v image|   0.000" in rows[1]


def test_generate_guided_steps_changes_the_music_and_refuses_a_negative_count(tmp_path, capsys):
    assert _generate(tmp_path, "--loudness", "off", out="all.wav") == 0
    assert _generate(tmp_path, "--loudness", "off", "--guided-steps", "2", out="two.wav") == 0
    assert _generate(tmp_path, "--loudness", "off", "--guided-steps", "1", out="one.wav") == 0
    every, two, one = (sf.read(str(tmp_path / f))[0] for f in ("all.wav", "two.wav", "one.wav"))
    assert np.array_equal(every, two)  # 2 of 2 steps guided: plain guidance
    assert np.abs(every - one).max() > 1e-4
    capsys.readouterr()
    assert _generate(tmp_path, "--guided-steps", "-1", out="bad.wav") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "guided steps" in err[0] and not (tmp_path / "bad.wav").exists()


def test_the_six_formats_load_with_only_their_decoders_registered(tmp_path):
    src = Image.open(EXAMPLE).convert("RGB").resize((48, 32))
    for ext in ("png", "jpg", "webp", "gif", "bmp", "tif"):
        src.save(tmp_path / f"a.{ext}")
    src.save(tmp_path / "b.eps")  # a format PIL reads that melfusion refuses
    code = ("import sys; from pathlib import Path; from melfusion.images import load_image; "
            "from melfusion.errors import MelFusionError\n"
            f"for p in sorted(Path({str(tmp_path)!r}).glob('a.*')): print(p.suffix, load_image(p).size)\n"
            "print(' '.join(sorted(m.split('.')[1] for m in sys.modules if m.endswith('ImagePlugin'))))\n"
            f"try: load_image(Path({str(tmp_path)!r}) / 'b.eps')\n"
            "except MelFusionError as e: print('refused', str(e).split(':')[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    *loaded, plugins, eps = out.stdout.strip().splitlines()
    assert sorted(loaded) == sorted(f".{e} (48, 32)" for e in ("png", "jpg", "webp", "gif", "bmp", "tif"))
    # only the decoders of the six formats (and MPO, JPEG's multi-picture form) were imported
    assert set(plugins.split()) <= {"BmpImagePlugin", "GifImagePlugin", "JpegImagePlugin", "MpoImagePlugin",
                                    "PngImagePlugin", "TiffImagePlugin", "WebPImagePlugin", "PpmImagePlugin"}
    assert "PngImagePlugin" in plugins.split()
    assert eps == "refused not a readable image"
