"""ManifestDataset: tensors of the right shape, a mel cache, and bad records skipped or refused."""
import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from melfusion.audio.io import read_audio
from melfusion.audio.mel import MelSpectrogram
from melfusion.data.dataset import ManifestDataset
from melfusion.data.synth import SynthConfig, synthesize
from melfusion.errors import MelFusionError


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "set"
    synthesize(8, out, SynthConfig(seed=5, duration_s=4.0), workers=1, progress=False)
    return out


def test_items_are_image_caption_and_log_mel(small):
    ds = ManifestDataset(small / "manifest.jsonl", frames=1024)
    item = ds[0]
    assert item["image"].shape == (3, 256, 256) and item["image"].dtype == torch.float32
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert item["mel"].shape == (1024, 64)
    rec = json.loads((small / "manifest.jsonl").read_text().splitlines()[0])
    assert item["caption"] == rec["caption"] and item["id"] == rec["id"]
    wave = torch.from_numpy(read_audio(small / rec["audio"]))
    direct = MelSpectrogram()(wave[None])[0]
    assert torch.allclose(item["mel"][: direct.shape[0]], direct, atol=1e-5)
    assert torch.all(item["mel"][direct.shape[0]:] == float(np.log(1e-5)))  # padded with silence
    assert len(ManifestDataset(small / "manifest.jsonl", split="train")) < len(ds)


def test_mel_cache_is_written_once_and_read_back(small, tmp_path):
    cache = tmp_path / "cache"
    ds = ManifestDataset(small / "manifest.jsonl", cache_dir=cache, frames=None)
    first = ds[2]["mel"]
    files = list(cache.glob("*.npy"))
    assert len(files) == 1
    np.save(files[0], np.load(files[0]) + 1.0)  # prove the second read comes from the cache
    assert torch.allclose(ds[2]["mel"], first + 1.0)


def test_bad_records_are_skipped_and_counted_never_crashing_an_epoch(small, tmp_path):
    out = tmp_path / "bad"
    shutil.copytree(small, out)
    lines = (out / "manifest.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    (out / recs[1]["audio"]).unlink()
    sf.write(out / recs[3]["audio"], np.zeros((8000, 2)) + 0.1, 16000)   # stereo
    sf.write(out / recs[4]["audio"], np.zeros(8000) + 0.1, 22050)        # wrong rate
    lines[6] = lines[6][:20]                                              # broken line
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n")

    ds = ManifestDataset(out / "manifest.jsonl", frames=512)
    assert len(ds) == 7 and len(ds.broken_lines) == 1 and ds.broken_lines[0].startswith("line 7: not valid JSON")
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=0,
                                         collate_fn=lambda b: {"ids": [x["id"] for x in b], "mel": torch.stack([x["mel"] for x in b])})
    seen = [i for batch in loader for i in batch["ids"]]
    assert len(seen) == 7 and ds.skipped == 3
    assert set(ds.bad) == {recs[1]["id"], recs[3]["id"], recs[4]["id"]}
    assert "line 4 (id " in ds.bad[recs[3]["id"]] and "2 channels" in ds.bad[recs[3]["id"]]

    with pytest.raises(MelFusionError) as err:
        ManifestDataset(out / "manifest.jsonl", on_error="fail")
    msg = str(err.value)
    assert "4 bad records" in msg and "line 7: not valid JSON" in msg and "line 2 (id " in msg
