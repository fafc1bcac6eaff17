"""The picture's part made audible: the same seed's music with the picture absent (the null
image), in Python (`image=None`), `generate --without-image` and the demo's second player; and
`generate --variations N`. Models without the null image are refused before any work."""
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from melfusion import presets
from melfusion.apps.demo import Composer, build_demo
from melfusion.cli import main
from melfusion.errors import MelFusionError

from test_cli import EXAMPLE

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")]


def _run(pipe, image, seed=0, **kw):
    kw.setdefault("duration_s", 1.0)
    kw.setdefault("num_inference_steps", 2)
    return pipe(image=image, prompt="a folk song with fiddle", generator=torch.Generator().manual_seed(seed),
                progress=False, **kw)


@pytest.fixture(scope="module")
def legacy_model(tmp_path_factory):
    """A model saved before the null image: its synapse reads an absent picture as alpha = 0."""
    pipe = presets.build("tiny", seed=0)
    pipe.music.synapse.config.absent = "alpha-zero"
    folder = tmp_path_factory.mktemp("legacy") / "model"
    pipe.save_pretrained(folder)
    saved = json.loads((folder / "synapse" / "synapse_config.json").read_text())
    assert saved["absent"] == "alpha-zero"
    return folder


def test_without_the_picture_is_the_null_image_run_for_the_same_seed(tiny_pipe, example_image):
    assert tiny_pipe.has_null_image
    alone = _run(tiny_pipe, None, seed=5)
    assert np.array_equal(alone.audio, _run(tiny_pipe, None, seed=5).audio)        # reproducible
    assert np.abs(alone.audio - _run(tiny_pipe, example_image, seed=5).audio).max() > 1e-3  # the picture counts
    # The same as the model run text-only (it reads the null image), so only the picture went.
    tiny_pipe.conditioning = "text"
    try:
        text_only = _run(tiny_pipe, example_image, seed=5)
    finally:
        tiny_pipe.conditioning = "synapse"
    assert (alone.log_mel - text_only.log_mel).abs().max() < 1e-5
    assert alone.timings["inversion"] < 0.01                                       # no image was inverted


def test_without_the_picture_takes_a_batch_but_not_half_of_one(tiny_pipe, example_image):
    out = tiny_pipe(image=None, prompt=["jazz", "rock"], duration_s=1.0, num_inference_steps=2,
                    generator=torch.Generator().manual_seed(0), progress=False)
    assert out.audio.shape == (2, 16000)
    with pytest.raises(MelFusionError, match="every caption has a picture or none"):
        tiny_pipe(image=[example_image, None], prompt=["jazz", "rock"], duration_s=1.0, progress=False)


def test_a_model_without_the_null_image_refuses_to_compose_without_the_picture(legacy_model):
    from melfusion.pipeline import MelFusionPipeline

    pipe = MelFusionPipeline.from_pretrained(legacy_model)
    assert not pipe.has_null_image
    with pytest.raises(MelFusionError, match="no null image") as info:
        _run(pipe, None)
    assert "\n" not in str(info.value)


def _generate(tmp_path, *extra, out="song.wav", model="tiny"):
    return main(["generate", "--image", str(EXAMPLE), "--text", "folk guitar by the sea", "--out",
                 str(tmp_path / out), "--model", str(model), "--steps", "2", "--duration", "1.0", "--quiet", *extra])


def test_generate_without_image_writes_the_same_seeds_music_without_the_picture(tmp_path):
    assert _generate(tmp_path, "--seed", "4", "--without-image", str(tmp_path / "plain.wav")) == 0
    song, rate = sf.read(str(tmp_path / "song.wav"))
    plain, _ = sf.read(str(tmp_path / "plain.wav"))
    assert rate == 16000 and song.shape == plain.shape == (16000,)
    assert np.abs(song - plain).max() > 1e-3
    # the same as composing it alone in Python with that seed (both mastered to -14 LUFS)
    pipe = presets.build("tiny", seed=4)
    alone = pipe(image=None, prompt="folk guitar by the sea", duration_s=1.0, num_inference_steps=2,
                 generator=torch.Generator().manual_seed(4), progress=False, loudness_lufs=-14)
    assert np.abs(plain - alone.audio).max() < 1e-4                             # 16-bit rounding only


def test_generate_without_image_refuses_a_model_without_the_null_image(tmp_path, capsys, legacy_model):
    out = tmp_path / "out"
    out.mkdir()
    code = _generate(out, "--without-image", str(out / "plain.wav"), model=legacy_model)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: --without-image:") and "null image" in err and "\n" not in err
    assert not list(out.iterdir())                                                # nothing written


@pytest.mark.parametrize("extra,message", [
    (["--without-image", "plain.mp3"], "--without-image must name a .wav"),
    (["--without-image", "SAME"], "another file than --out"),
    (["--variations", "0"], "--variations must be between 1 and 16"),
    (["--variations", "17"], "--variations must be between 1 and 16"),
])
def test_bad_picture_and_variation_options_fail_in_one_line(tmp_path, capsys, extra, message):
    extra = [str(tmp_path / "song.wav") if x == "SAME" else str(tmp_path / x) if x.endswith(".mp3") else x
             for x in extra]
    assert _generate(tmp_path, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not list(tmp_path.iterdir())


def test_generate_variations_writes_n_pieces_from_n_seeds(tmp_path):
    assert _generate(tmp_path, "--seed", "10", "--variations", "3", "--without-image",
                     str(tmp_path / "plain.wav")) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["plain-1.wav", "plain-2.wav", "plain-3.wav", "song-1.wav", "song-2.wav", "song-3.wav"]
    pieces = [(tmp_path / f"song-{i}.wav").read_bytes() for i in (1, 2, 3)]
    assert len(set(pieces)) == 3
    # piece 2 is seed 11's piece (of the model --seed 10 built: a preset's random weights follow --seed)
    pipe = presets.build("tiny", seed=10)
    second = pipe(image=EXAMPLE, prompt="folk guitar by the sea", duration_s=1.0, num_inference_steps=2,
                  generator=torch.Generator().manual_seed(11), progress=False, loudness_lufs=-14)
    assert np.abs(sf.read(str(tmp_path / "song-2.wav"))[0] - second.audio).max() < 1e-4


def test_the_demo_composes_without_the_picture_beside_the_result(tiny_pipe, tmp_path):
    c = Composer(tiny_pipe, out_root=tmp_path)
    audio, *_ = c(str(EXAMPLE), "calm piano", 1.5, 3, 2, 3.0)
    plain = c.without_picture("calm piano", 1.5, 3, 2, 3.0)
    a, rate = sf.read(audio)
    b, _ = sf.read(plain)
    assert Path(plain).name == "without-the-picture.wav" and a.shape == b.shape == (int(1.5 * rate),)
    assert np.abs(a - b).max() > 1e-3


def _player_visible(demo):
    props = [x.get("props", {}) for x in demo.config["components"]]
    return [p.get("visible") for p in props if p.get("elem_id") == "music-without-picture"]


def test_the_demo_shows_the_player_only_where_the_model_has_the_null_image(tiny_pipe, legacy_model):
    from melfusion.pipeline import MelFusionPipeline

    assert _player_visible(build_demo(tiny_pipe)) == [True]
    legacy = MelFusionPipeline.from_pretrained(legacy_model)
    assert _player_visible(build_demo(legacy)) == [False]
    with pytest.raises(MelFusionError, match="without the picture"):
        Composer(legacy).without_picture("piano", 1.0, 0, 1, 1.0)


def test_the_demo_serves_both_players_through_its_queue(tiny_pipe):
    from gradio_client import Client, handle_file

    from melfusion.apps.demo import launch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = launch(build_demo(tiny_pipe), "127.0.0.1", port, block=False)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        main_api = next(name for name in api if "generate" in name)
        result = client.predict(handle_file(str(EXAMPLE)), "piano", 1.0, 2, 1, 3.0, api_name=main_api)
        assert "Composed 1.0 s" in result[-1] and result[4] is None  # cleared until its own event fills it
        plain_api = next(name for name in api if "without_picture" in name)
        plain = client.predict(handle_file(result[0]), "piano", 1.0, 2, 1, 3.0, api_name=plain_api)
    finally:
        demo.close()
    wave, rate = sf.read(plain)
    assert wave.shape == (rate,)
