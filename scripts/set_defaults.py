"""Store composing defaults in a saved model's folder (its model_index.json `defaults`).

    .venv/bin/python scripts/set_defaults.py runs/small/music-finetune/model key_guidance=true [image_guidance_scale=5]

Values are read as JSON (true, 5, 1.5, "dpm++2m"; `null` removes the default). Only the settings
`MelFusionPipeline.__call__` reads from the defaults are accepted; the model is loaded back
afterwards, so a value it refuses is reported before the folder is left changed.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

KNOWN = ("num_inference_steps", "guidance_scale", "image_guidance_scale", "duration_s", "solver", "precision",
         "guided_steps", "key_guidance", "loudness_lufs", "distilled", "teacher_steps")


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    index_path = Path(argv[0]) / "model_index.json"
    if not index_path.is_file():
        print(f"error: {argv[0]} is not a saved model (no model_index.json)", file=sys.stderr)
        return 2
    original = index_path.read_text()
    index = json.loads(original)
    for item in argv[1:]:
        name, sep, raw = item.partition("=")
        if not sep or name not in KNOWN:
            print(f"error: {item!r}: give NAME=VALUE with NAME one of {', '.join(KNOWN)}", file=sys.stderr)
            return 2
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            print(f"error: {item!r}: the value must be JSON (true, 5, \"ddim\", null)", file=sys.stderr)
            return 2
        if value is None:
            index["defaults"].pop(name, None)
        else:
            index["defaults"][name] = value
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from melfusion.errors import MelFusionError
    from melfusion.loading import quiet_libraries
    from melfusion.pipeline import MelFusionPipeline

    quiet_libraries()

    try:
        pipe = MelFusionPipeline.from_pretrained(argv[0])
        if pipe.defaults.get("key_guidance") and not pipe.music.takes_key:
            raise MelFusionError("key guidance is for a model that takes a key")
        pipe(image=None if pipe.has_null_image else _example(), prompt="a short check", duration_s=1.0,
             num_inference_steps=1, progress=False)
    except (MelFusionError, TypeError, ValueError) as exc:
        index_path.write_text(original)
        print(f"error: the model refuses these defaults ({exc}); the folder is unchanged", file=sys.stderr)
        return 2
    print(f"{index_path}: " + ", ".join(f"{k} = {index['defaults'].get(k)}" for k in
                                         (i.partition("=")[0] for i in argv[1:])))
    return 0


def _example() -> str:
    return str(Path(__file__).resolve().parents[1] / "examples" / "beach-post.png")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
