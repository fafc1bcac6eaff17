"""scripts/set_defaults.py stores composing defaults in a model folder, or refuses and leaves it as it was."""
import importlib.util
import json
from pathlib import Path

SPEC = importlib.util.spec_from_file_location("set_defaults", Path(__file__).parents[1] / "scripts" / "set_defaults.py")
set_defaults = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(set_defaults)


def test_defaults_are_stored_checked_and_removed(tiny_pipe, tmp_path, capsys):
    folder = tiny_pipe.save_pretrained(tmp_path / "model")
    index = folder / "model_index.json"
    before = index.read_text()
    assert set_defaults.main([str(folder), "guided_steps=2", "image_guidance_scale=4.5"]) == 0
    d = json.loads(index.read_text())["defaults"]
    assert d["guided_steps"] == 2 and d["image_guidance_scale"] == 4.5
    stored = index.read_text()
    for bad, said in (("solver=\"nope\"", "unknown solver"), ("guided_steps=-1", "guided steps"),
                      ("teacher_steps=-1", "teacher steps"),
                      ("key_guidance=true", "takes a key"), ("steps=3", "NAME one of"), ("solver=ddim", "JSON")):
        assert set_defaults.main([str(folder), bad]) == 2
        assert said in capsys.readouterr().err
        assert index.read_text() == stored  # refused: the folder is as it was
    assert set_defaults.main([str(folder), "guided_steps=null", "image_guidance_scale=null"]) == 0
    assert json.loads(index.read_text())["defaults"] == json.loads(before)["defaults"]
