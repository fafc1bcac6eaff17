"""Shared builders for the apps tests: a small manifest with generated sets of two systems."""
import json
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

SYSTEMS = ("melfusion", "tango")


def make_generated_sets(root: Path, n_records: int = 3, missing: dict | None = None):
    """root/manifest.jsonl with n records, root/<system>/<id>.wav for each system.

    `missing` maps a system to record ids it lacks."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n_records):
        rid = f"rec{i:02d}"
        Image.new("RGB", (96, 64), (30 * i % 255, 120, 200)).save(root / "images" / f"{rid}.png")
        records.append({"id": rid, "image": f"images/{rid}.png", "caption": f"calm piano number {i} <b>bold</b>",
                        "audio": f"audio/{rid}.wav", "split": "test"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    systems = {}
    for k, name in enumerate(SYSTEMS):
        folder = root / name
        folder.mkdir(exist_ok=True)
        for rec in records:
            if rec["id"] in (missing or {}).get(name, ()):
                continue
            t = np.arange(8000) / 16000
            sf.write(folder / f"{rec['id']}.wav", (0.2 * np.sin(2 * np.pi * (220 + 110 * k) * t)).astype(np.float32), 16000)
        systems[name] = str(folder)
    return root / "manifest.jsonl", systems


class RunningServer:
    """A study server on 127.0.0.1 with a free port, in a background thread (keyword arguments go to
    make_server: sets_root, studies_root). `study` is the served StudyApp."""

    def __init__(self, study_dir, **kwargs):
        from melfusion.apps.study.server import make_server

        self.server = make_server(study_dir, "127.0.0.1", 0, **kwargs)
        self.study = self.server.study
        self.url = self.server.url
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the study server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.thread.join(10)
        self.server.close()
