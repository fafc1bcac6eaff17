"""A frozen mode-and-pace reader of audio latents, and the auxiliary loss it gives (issue 12, D).

Beyond the paper. Diagnostics A and D found that neither the diffusion loss nor a pitch-class
profile loss makes the music's mode follow even a caption that states it: the profile mostly
teaches the key's tonic, which no condition gives. This reader is a small convolutional network
trained on the audio VAE latents of real SynthMeL clips to tell major from minor and calm from
driving, whatever the key. Frozen, it reads the music UNet's predicted clean latent during
training; its cross-entropy against the clip's own labels is added to the diffusion loss, for
the samples whose kept condition carries the label.

It reads latents, not mels, and is trained apart from the evaluation judge (melfusion.metrics),
so a model cannot score on the judge by what it learned to show the reader; the independent
listeners (essentia, librosa) are the check that it did not only fool the reader.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from melfusion.errors import MelFusionError

LABELS = {"mode": ("major", "minor"), "energy": ("calm", "driving")}
CONFIG_NAME = "reader.json"
WEIGHTS_NAME = "reader.safetensors"


@dataclass
class ReaderConfig:
    in_channels: int = 8
    bins: int = 16                         # latent frequency bins
    width: int = 64
    heads: list[str] = field(default_factory=lambda: ["mode", "energy"])


def is_saved_reader(folder: str | Path | None) -> bool:
    return folder is not None and (Path(folder) / CONFIG_NAME).is_file() and (Path(folder) / WEIGHTS_NAME).is_file()


def check_saved_reader(folder: str | Path) -> Path:
    if not is_saved_reader(folder):
        raise MelFusionError(f"not a saved reader (no {CONFIG_NAME} and {WEIGHTS_NAME}): {folder}")
    return Path(folder)


class LatentReader(nn.Module):
    """Latent `(batch, channels, frames, bins)` -> `{head: (batch, 2) logits}`.

    Convolutions over time and frequency, then a mean over time (any crop length), keeping the
    frequency layout for the heads: a third's interval is a pattern across bins."""

    def __init__(self, config: ReaderConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.body = nn.Sequential(
            nn.Conv2d(config.in_channels, w, 3, padding=1), nn.GELU(),
            nn.Conv2d(w, w, 3, padding=1), nn.GELU(),
            nn.Conv2d(w, 2 * w, 3, stride=(2, 1), padding=1), nn.GELU(),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.GELU(),
        )
        out_bins = (config.bins + 1) // 2
        self.heads = nn.ModuleDict({h: nn.Linear(2 * w * out_bins, len(LABELS[h])) for h in config.heads})

    def forward(self, latents: torch.Tensor) -> dict[str, torch.Tensor]:
        if latents.dim() != 4 or latents.shape[1] != self.config.in_channels or latents.shape[3] != self.config.bins:
            raise MelFusionError(f"the reader reads latents of {self.config.in_channels} channels and "
                                 f"{self.config.bins} bins, got shape {tuple(latents.shape)}")
        h = self.body(latents).mean(dim=2).flatten(1)
        return {name: head(h) for name, head in self.heads.items()}

    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / WEIGHTS_NAME))
        (folder / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> "LatentReader":
        from safetensors.torch import load_file

        folder = check_saved_reader(folder)
        reader = cls(ReaderConfig(**json.loads((folder / CONFIG_NAME).read_text())))
        reader.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
        return reader.eval().requires_grad_(False)


IGNORE = -100  # F.cross_entropy's ignore_index: a label not read


def saved_heads(folder: str | Path) -> list[str]:
    """The heads of the reader saved in `folder`, read from its config alone."""
    path = check_saved_reader(folder) / CONFIG_NAME
    return list(json.loads(path.read_text()).get("heads", ReaderConfig().heads))


def label_tensor(records: list[dict], heads: list[str] | None = None) -> torch.Tensor:
    """`(records, len(LABELS))` class indices from manifest records, one column per entry of
    LABELS in its order (`mode`, `energy`); the columns of heads not in `heads` (default: all)
    hold IGNORE."""
    heads = list(LABELS) if heads is None else heads

    def index(record, h):
        value = record.get(h)
        if value not in LABELS[h]:
            raise MelFusionError(f"record {record.get('id', '?')} has no {h} label the reader can read "
                                 f"({', '.join(LABELS[h])}), it has {value!r}")
        return LABELS[h].index(value)

    return torch.tensor([[index(r, h) if h in heads else IGNORE for h in LABELS] for r in records], dtype=torch.long)


def column(head: str) -> int:
    return list(LABELS).index(head)


def random_crops(latents: torch.Tensor, frames: int, generator: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, latents.shape[2] - frames + 1, (len(latents),), generator=generator).tolist()
    return torch.stack([z[:, s:s + frames] for z, s in zip(latents, starts)])


@torch.no_grad()
def accuracy(reader: LatentReader, latents: torch.Tensor, labels: torch.Tensor, frames: int | None = None,
             seed: int = 0, batch: int = 128) -> dict[str, float]:
    """Per-head accuracy (labels as `label_tensor` gives them) on one crop of each clip (the whole clip when `frames` is None)."""
    g = torch.Generator().manual_seed(seed)
    correct = torch.zeros(len(reader.config.heads))
    for s in range(0, len(latents), batch):
        z = latents[s:s + batch]
        z = random_crops(z, frames, g) if frames else z
        out = reader(z)
        for j, h in enumerate(reader.config.heads):
            correct[j] += (out[h].argmax(1) == labels[s:s + batch, column(h)]).sum()
    return {h: float(correct[j] / len(latents)) for j, h in enumerate(reader.config.heads)}


def train_reader(train_latents: torch.Tensor, train_labels: torch.Tensor, config: ReaderConfig,
                 frames: int, steps: int = 1500, batch: int = 64, lr: float = 1e-3, noise: float = 0.3,
                 seed: int = 0, progress: bool = True) -> LatentReader:
    """Fit a reader on random `frames`-long crops of real latents, each with Gaussian noise of a
    random scale up to `noise` latent standard deviations (it later reads predictions that are
    not quite clean)."""
    from tqdm.auto import tqdm

    if frames > train_latents.shape[2]:
        raise MelFusionError(f"reader crops of {frames} latent frames are longer than the clips "
                             f"({train_latents.shape[2]})")
    torch.manual_seed(seed)
    reader = LatentReader(config)
    opt = torch.optim.AdamW(reader.parameters(), lr=lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    std = float(train_latents.std())
    for _ in tqdm(range(steps), desc="training the reader", unit="step", disable=not progress):
        idx = torch.randint(0, len(train_latents), (batch,), generator=g)
        z = random_crops(train_latents[idx], frames, g)
        scale = torch.rand(batch, 1, 1, 1, generator=g) * noise * std
        z = z + scale * torch.randn(z.shape, generator=g)
        out = reader(z)
        loss = sum(F.cross_entropy(out[h], train_labels[idx, column(h)]) for h in config.heads)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    opt.zero_grad(set_to_none=True)
    return reader.eval().requires_grad_(False)


class ReaderLoss:
    """`loss(clean_latent_pred, labels, weights)`: the frozen reader's cross-entropy, summed over
    heads, averaged with per-sample `weights` (0 where the kept condition does not carry the
    label). A plain object, not a module, so that the reader is neither trained nor saved in
    the stage's checkpoints."""

    def __init__(self, reader: LatentReader, heads: list[str] | None = None, clamp: float = 6.0):
        self.reader = reader.eval().requires_grad_(False)
        self.heads = list(heads or reader.config.heads)
        missing = [h for h in self.heads if h not in reader.config.heads]
        if missing:
            raise MelFusionError(f"the reader has no {missing[0]!r} head (it reads {', '.join(reader.config.heads)})")
        self.columns = [column(h) for h in self.heads]
        self.clamp = clamp

    def __call__(self, clean_latent: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = self.reader(clean_latent.float().clamp(-self.clamp, self.clamp))
        weights = weights.to(clean_latent.device).float()
        total = weights.sum().clamp(min=1e-8)
        loss = clean_latent.new_zeros((), dtype=torch.float32)
        for h, j in zip(self.heads, self.columns):
            ce = F.cross_entropy(out[h].float(), labels[:, j].to(clean_latent.device), reduction="none")
            loss = loss + (ce * weights).sum() / total
        return loss
