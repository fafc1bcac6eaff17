"""scripts/trajectory_probe.py: the linear probe finds a label the latents carry, and not one they do not."""
import importlib.util
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

SCRIPT = Path(__file__).parents[1] / "scripts" / "trajectory_probe.py"
spec = importlib.util.spec_from_file_location("trajectory_probe", SCRIPT)
trajectory_probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(trajectory_probe)


def _cache(path, labels, gen):
    lat = torch.randn(len(labels), 3, 4, 4, 4, generator=gen)
    lat[:, :, 1] += 0.8 * (2 * torch.tensor(labels, dtype=torch.float32) - 1)[:, None, None, None]  # mode in channel 1
    save_file({"latents": lat, "timesteps": torch.tensor([-1, 1, 500]), "feature_offset": torch.tensor(1)}, str(path))


def test_the_probe_reads_what_the_latents_carry_and_only_that(tmp_path, capsys, monkeypatch):
    gen = torch.Generator().manual_seed(0)
    rows, labels = [], {"train": [], "val": []}
    for i in range(240):
        split = "train" if i < 160 else "val"
        major = i % 2 == 0
        labels[split].append(major)
        rows.append({"id": f"r{i}", "image": f"r{i}.png", "caption": "a song", "audio": f"r{i}.wav",
                     "split": split, "mode": "major" if major else "minor",
                     "energy": "driving" if torch.rand(1, generator=gen).item() < 0.5 else "calm"})
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _cache(tmp_path / "train.safetensors", labels["train"], gen)
    _cache(tmp_path / "val.safetensors", labels["val"], gen)
    argv = ["trajectory_probe.py", str(manifest), str(tmp_path / "train.safetensors"), str(tmp_path / "val.safetensors")]
    monkeypatch.setattr("sys.argv", argv)
    assert trajectory_probe.main() == 0
    out = dict(line.split(":", 1) for line in capsys.readouterr().out.strip().splitlines())
    mode = [float(x.split(":")[1]) for x in out["mode"].split("timestep: ")[1].split()]
    energy = [float(x.split(":")[1]) for x in out["energy"].split("timestep: ")[1].split()]
    assert len(mode) == len(energy) == 3
    assert min(mode) > 0.9  # carried: found
    assert max(energy) < 0.75  # a coin flip the latents know nothing of: not found
    # Caches of other splits than the manifest's: refused.
    monkeypatch.setattr("sys.argv", argv[:2] + [argv[3], argv[3]])
    assert trajectory_probe.main() == 2
