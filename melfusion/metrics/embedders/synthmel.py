"""The SynthMeL judges: small models trained by this project on SynthMeL's train split.

Three models, each a directory with `config.json` and `model.safetensors`
(`melfusion/assets/judges/{audio,audio_text,image_text}`; recipes in `melfusion.metrics.judges`):

- `AudioJudge` (an `AudioClassifier`): genre (15-way), mode, energy, drums and instruments
  (multi-label) from AudioLDM log-mels plus a 12-bin pitch-class ("chroma") view of the same STFT.
  Its penultimate layer is the `synthmel` embedding for FAD (one per 1 s window) and FD (one per
  clip); its label logits feed the paired KL.
- `AudioTextJudge` (a `TextAudioModel`) and `ImageTextJudge` (an `ImageTextModel`): CLAP- and
  CLIP-like contrastive models for IMSM, sharing the frozen MiniLM text tower (sentence embedding
  = mean of the last hidden state over real tokens); only projection heads and the small audio
  and image encoders are trained.

Shapes: features are `(batch, frames, 76)` = 64 log-mel bands + 12 pitch classes at 100 frames/s.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from melfusion.audio.mel import MelConfig, MelSpectrogram
from melfusion.errors import MelFusionError
from melfusion.metrics.embedders.base import (AudioClassifier, ImageTextModel, TextAudioModel, check_texts,
                                              check_waves, unit_rows)

SAMPLE_RATE = 16000
N_MELS = 64
N_CHROMA = 12
FEATURES = N_MELS + N_CHROMA
FRAMES_PER_SECOND = 100
GENRES = ["hip-hop", "pop", "latin", "electronic", "r&b", "easy listening", "world/traditional", "jazz", "rock",
          "classical", "blues", "metal", "country", "folk/acoustic", "new age"]
MODES = ["major", "minor"]
ENERGIES = ["calm", "driving"]
IMAGE_SIZE = 64
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


# ----------------------------------------------------------------------------------------- features

def chroma_filter_bank(cfg: MelConfig = MelConfig(), f_lo: float = 130.0, f_hi: float = 4200.0) -> np.ndarray:
    """`(12, n_fft // 2 + 1)` fixed projection of STFT bins onto pitch classes (C = 0).

    Each bin between f_lo and f_hi gives its weight to the pitch classes within one semitone of
    its centre, falling linearly with the distance; below ~130 Hz the 15.6 Hz bins are wider than
    a semitone and are left out.
    """
    freqs = np.linspace(0.0, cfg.sample_rate / 2.0, cfg.n_fft // 2 + 1)
    bank = np.zeros((N_CHROMA, freqs.size))
    keep = (freqs >= f_lo) & (freqs <= f_hi)
    midi = 69.0 + 12.0 * np.log2(np.maximum(freqs, 1e-6) / 440.0)
    for pc in range(N_CHROMA):
        dist = np.abs(((midi - pc + 6.0) % 12.0) - 6.0)  # semitones to the nearest pitch of class pc
        bank[pc] = np.where(keep, np.maximum(0.0, 1.0 - dist), 0.0)
    return bank


class JudgeFrontEnd(nn.Module):
    """`forward(wave (batch, samples)) -> (batch, frames, 76)`: log-mel (AudioLDM) + normalised log-chroma."""

    def __init__(self):
        super().__init__()
        self.mel = MelSpectrogram(MelConfig())
        self.register_buffer("chroma", torch.from_numpy(chroma_filter_bank()).float(), persistent=False)

    @torch.no_grad()
    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.dim() == 1:
            wave = wave[None]
        mag = self.mel.magnitude(wave)                                    # (batch, bins, frames)
        logmel = torch.log((self.mel.filters @ mag).clamp(min=1e-5))      # (batch, mels, frames)
        power = self.chroma @ (mag ** 2)                                  # (batch, 12, frames)
        # Shares of the frame's pitched energy: independent of gain; silence gives a flat profile.
        share = (power + 1e-8) / (power.sum(dim=1, keepdim=True) + 12e-8)
        chroma = torch.log(share * N_CHROMA)
        return torch.cat([logmel, chroma], dim=1).transpose(1, 2)


def features_of(waves: Sequence[np.ndarray], front: JudgeFrontEnd | None = None) -> list[torch.Tensor]:
    """Per-clip `(frames, 76)` float32 features of 16 kHz waves."""
    front = front or JudgeFrontEnd()
    return [front(torch.from_numpy(np.asarray(w, dtype=np.float32)))[0] for w in waves]


# ------------------------------------------------------------------------------------------- models

class AudioEncoder(nn.Module):
    """A CNN over `(batch, frames, 76)` features; time is pooled late so 1 s windows can be pooled alike.

    `frame_features(x) -> (batch, channels + 12, frames / 8)`; `pool(h) -> (batch, pooled_dim)` (mean and
    max over time, and key-template matches of the pitch-class profile).
    The mel plane is a 2-D CNN (time x frequency); the pitch-class rows go through a circular
    convolution over the 12 classes and a max over them, which makes them key-invariant: a mode
    is a shape of the profile, not a position.
    """

    def __init__(self, channels: int = 96, chroma_channels: int = 32, templates: int = 16):
        super().__init__()

        def block(cin, cout, pool):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.MaxPool2d(pool))

        # A strided first layer: 10 ms frames are finer than any label needs, and CPU time is short.
        self.mel = nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                 block(16, 32, (2, 2)), block(32, channels, (2, 4)),
                                 nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())
        # Chroma: (batch, 1, 12 classes, frames) with circular padding over classes.
        self.chroma = nn.Sequential(nn.Conv2d(1, chroma_channels, (12, 5), padding=(0, 2)), nn.ReLU())
        self.chroma_mix = nn.Sequential(nn.Conv1d(chroma_channels, chroma_channels, 5, padding=2), nn.ReLU())
        self.channels = channels + chroma_channels
        # The contrastive audio tower goes without templates (templates=0).
        self.templates = nn.Parameter(0.3 * torch.randn(templates, N_CHROMA)) if templates else None
        self.register_buffer("rotation_index", (torch.arange(12)[:, None] + torch.arange(12)[None]) % 12,
                             persistent=False)

    def frame_features(self, x: torch.Tensor) -> torch.Tensor:
        """`(batch, frames, 76)` -> `(batch, channels + 12, frames / 8)`; the last 12 rows are the
        pitch-class shares averaged over each step, kept for the key profile in `pool`."""
        mel, chroma = x[..., :N_MELS], x[..., N_MELS:]
        h = self.mel(mel[:, None])                                        # (batch, C, frames/8, mels/16)
        h = h.mean(dim=3)                                                 # (batch, C, frames/8)
        t = h.shape[2]
        chroma = nn.functional.avg_pool1d(chroma.transpose(1, 2), 4, 4)   # (batch, 12, frames/4)
        c = chroma[:, None]                                               # (batch, 1, 12, frames/4)
        c = torch.cat([c, c[:, :, :11]], dim=2)                           # circular over the 12 classes
        c = self.chroma(c)                                                # (batch, Cc, 12, frames/4)
        c = c.max(dim=2).values                                           # key-invariant
        c = self.chroma_mix(self._to_steps(nn.functional.avg_pool1d(c, 2, 2), t))
        share = self._to_steps(nn.functional.avg_pool1d(x[..., N_MELS:].exp().transpose(1, 2) / N_CHROMA, 8, 8), t)
        return torch.cat([h, c, share], dim=1)

    @staticmethod
    def _to_steps(x: torch.Tensor, t: int) -> torch.Tensor:
        return nn.functional.pad(x, (0, max(0, t - x.shape[2])))[..., :t]

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        """`(batch, channels + 12, t)` -> `(batch, 2 * channels + templates)`: mean and max over time,
        and the best match over the 12 keys of each learned template to the span's pitch-class profile
        (a Krumhansl-style key finder: the profile of a mode is the same shape in every key)."""
        f, share = h[:, :-N_CHROMA], h[:, -N_CHROMA:]
        if self.templates is None:
            return torch.cat([f.mean(dim=2), f.amax(dim=2)], dim=1)
        profile = torch.log(share.mean(dim=2) * N_CHROMA + 1e-3)          # (batch, 12)
        profile = profile - profile.mean(dim=1, keepdim=True)
        rotations = profile[:, self.rotation_index]                       # (batch, 12 keys, 12)
        keys = (rotations @ self.templates.T).amax(dim=1)                 # (batch, templates)
        return torch.cat([f.mean(dim=2), f.amax(dim=2), keys], dim=1)

    @property
    def pooled_dim(self) -> int:
        return 2 * self.channels + (0 if self.templates is None else self.templates.shape[0])


class AudioJudgeNet(nn.Module):
    def __init__(self, n_instruments: int, channels: int = 96, embed_dim: int = 128):
        super().__init__()
        self.encoder = AudioEncoder(channels)
        self.embed = nn.Sequential(nn.Linear(self.encoder.pooled_dim, embed_dim), nn.ReLU())
        self.dropout = nn.Dropout(0.3)
        self.heads = nn.ModuleDict({
            "genre": nn.Linear(embed_dim, len(GENRES)), "mode": nn.Linear(embed_dim, 2),
            "energy": nn.Linear(embed_dim, 2), "drums": nn.Linear(embed_dim, 1),
            "instruments": nn.Linear(embed_dim, n_instruments),
        })

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`x (batch, frames, 76)` -> (embedding (batch, embed_dim), {head: logits})."""
        e = self.embed(self.encoder.pool(self.encoder.frame_features(x)))
        d = self.dropout(e)
        return e, {k: head(d) for k, head in self.heads.items()}


class SmallAudioTower(nn.Module):
    def __init__(self, dim: int, channels: int = 48):
        super().__init__()
        self.encoder = AudioEncoder(channels, chroma_channels=16, templates=0)
        self.proj = nn.Sequential(nn.Linear(self.encoder.pooled_dim, 256), nn.ReLU(), nn.Linear(256, dim))

    def forward(self, x):
        return self.proj(self.encoder.pool(self.encoder.frame_features(x)))


class SmallImageTower(nn.Module):
    """`(batch, 3, 64, 64)` in [0, 1] -> `(batch, dim)`; colour statistics are added explicitly."""

    def __init__(self, dim: int):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

        self.cnn = nn.Sequential(block(3, 32), block(32, 64), block(64, 96), block(96, 128))
        self.proj = nn.Sequential(nn.Linear(2 * 128 + 6, 256), nn.ReLU(), nn.Dropout(0.3), nn.Linear(256, dim))

    def forward(self, x):
        h = self.cnn(x)
        stats = torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)
        return self.proj(torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3)), stats], dim=1))


class TextHead(nn.Module):
    """A projection of the frozen MiniLM sentence embedding (384-d)."""

    def __init__(self, dim: int, text_dim: int = 384):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(text_dim, 256), nn.ReLU(), nn.Linear(256, dim))

    def forward(self, t):
        return self.proj(t)


class ContrastiveNet(nn.Module):
    def __init__(self, kind: str, dim: int = 128):
        super().__init__()
        self.kind = kind
        self.tower = SmallAudioTower(dim) if kind == "audio_text" else SmallImageTower(dim)
        self.text = TextHead(dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))


# ---------------------------------------------------------------------------- the frozen text tower

_MINILM = {}


def minilm_sentence_embeddings(texts: Sequence[str], max_length: int = 128, batch_size: int = 64) -> np.ndarray:
    """`(n, 384)` mean over real tokens of MiniLM-L6's last hidden state (the shared frozen text tower)."""
    if "enc" not in _MINILM:
        from melfusion.text.encoders import MINILM_PACKAGE, TextEncoder, resolve_source

        _MINILM["enc"] = TextEncoder.from_pretrained(resolve_source(MINILM_PACKAGE), max_length=max_length)
    enc = _MINILM["enc"]
    enc.max_length = max_length
    memo = _MINILM.setdefault(max_length, {})  # the tower is frozen: a caption's embedding never changes
    todo = list(dict.fromkeys(t for t in texts if t not in memo))
    for i in range(0, len(todo), batch_size):
        hidden, mask = enc.encode(todo[i:i + batch_size])
        m = mask[..., None].float()
        for t, v in zip(todo[i:i + batch_size], ((hidden * m).sum(1) / m.sum(1).clamp(min=1)).numpy()):
            memo[t] = v.astype(np.float32)
    return np.stack([memo[t] for t in texts])


# ------------------------------------------------------------------------------------ save and load

def save_judge(net: nn.Module, directory: str | Path, config: dict) -> Path:
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().float() for k, v in net.state_dict().items() if v.is_floating_point()}
    state.update({k: v.detach().contiguous() for k, v in net.state_dict().items() if not v.is_floating_point()})
    save_file(state, str(directory / WEIGHTS_NAME))
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def _read_judge(directory: str | Path, expected_kind: str) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / CONFIG_NAME).is_file() or not (directory / WEIGHTS_NAME).is_file():
        raise MelFusionError(f"not a SynthMeL judge directory (needs {CONFIG_NAME} and {WEIGHTS_NAME}): {directory}")
    config = json.loads((directory / CONFIG_NAME).read_text())
    if config.get("kind") != expected_kind:
        raise MelFusionError(f"{directory} holds a {config.get('kind')!r} judge, expected {expected_kind!r}")
    return config, load_file(str(directory / WEIGHTS_NAME))


def build_net(config: dict) -> nn.Module:
    if config["kind"] == "audio":
        return AudioJudgeNet(len(config["instruments"]), config.get("channels", 96), config.get("embed_dim", 128))
    return ContrastiveNet(config["kind"], config.get("dim", 128))


# ------------------------------------------------------------------------- the metric interfaces

def _run_in_chunks(fn, items, batch_size=16):
    out = []
    with torch.no_grad():
        for i in range(0, len(items), batch_size):
            out.append(fn(items[i:i + batch_size]))
    return out


def _stack_same_length(feats: list[torch.Tensor]) -> list[tuple[list[int], torch.Tensor]]:
    """Group clips of equal length so batches need no padding (padding would change the pooled stats)."""
    groups: dict[int, list[int]] = {}
    for i, f in enumerate(feats):
        groups.setdefault(f.shape[0], []).append(i)
    return [(idx, torch.stack([feats[i] for i in idx])) for idx in groups.values()]


MIN_FRAMES = 64  # clips shorter than 0.64 s are padded with the log floor / a flat chroma


def _pad_min(f: torch.Tensor) -> torch.Tensor:
    if f.shape[0] >= MIN_FRAMES:
        return f
    pad = torch.zeros(MIN_FRAMES - f.shape[0], f.shape[1])
    pad[:, :N_MELS] = math.log(1e-5)
    return torch.cat([f, pad])


class SavedJudge:
    """Loading and saving shared by the three judges; each names its `kind`."""

    kind: str

    @classmethod
    def from_pretrained(cls, directory, **_options):
        config, state = _read_judge(directory, cls.kind)
        net = build_net(config)
        net.load_state_dict(state)
        return cls(net, config)

    def save_pretrained(self, directory) -> Path:
        return save_judge(self.net, directory, self.config)


class AudioJudge(SavedJudge, AudioClassifier):
    """The SynthMeL audio judge. `embed` (n, 128) per clip; `embed_frames` [(t_i, 128)] per 1 s window;
    `label_logits` (n, 15) genre logits (softmax KL); `multilabel_logits` (n, 2 + 2 + 1 + k) for the
    sigmoid KL; `predict` the label names."""

    name = "synthmel"
    sample_rate = SAMPLE_RATE

    def __init__(self, net: AudioJudgeNet, config: dict):
        self.net = net.eval()
        self.config = config
        self.instruments = list(config["instruments"])
        self.dim = config.get("embed_dim", 128)
        self.num_labels = len(GENRES)
        self.front = JudgeFrontEnd()

    kind = "audio"

    def features(self, waves: list[np.ndarray]) -> list[torch.Tensor]:
        return [_pad_min(f) for f in features_of(waves, self.front)]

    def outputs(self, waves: Sequence[np.ndarray] | None, sample_rate: int | None = None,
                feats: list[torch.Tensor] | None = None) -> dict:
        """All outputs for n clips: {"embed": (n, d), "genre", "mode", "energy", "drums", "instruments":
        (n, k) logits, "frames": [(t_i, d)] embeddings of 1 s windows}. Pass `feats` to skip the front end."""
        if feats is None:
            feats = self.features(check_waves(waves, sample_rate, self.sample_rate))
        feats = [_pad_min(f) for f in feats]
        n = len(feats)
        result: dict = {"frames": [None] * n}
        with torch.no_grad():
            for idx, batch in _stack_same_length(feats):
                for j in range(0, len(idx), 16):
                    rows = idx[j:j + 16]
                    h = self.net.encoder.frame_features(batch[j:j + 16])       # (b, C, t)
                    e = self.net.embed(self.net.encoder.pool(h))
                    logits = {k: head(e) for k, head in self.net.heads.items()}
                    for key, val in [("embed", e)] + list(logits.items()):
                        arr = result.setdefault(key, np.zeros((n, val.shape[1]), np.float32))
                        arr[rows] = val.numpy()
                    for r, w in zip(rows, self._windows(h)):
                        result["frames"][r] = w
        return result

    def _windows(self, h: torch.Tensor) -> list[np.ndarray]:
        """Embeddings of 1 s windows of `(b, C, t)` frame features (a last partial window kept if >= 0.5 s)."""
        win = FRAMES_PER_SECOND // 8  # frame features are at 1/8 of the feature rate
        t = h.shape[2]
        starts = [s for s in range(0, t, win) if t - s >= win // 2] or [0]
        pooled = torch.stack([self.net.encoder.pool(h[:, :, s:s + win]) for s in starts], dim=1)  # (b, w, 2C)
        return list(self.net.embed(pooled).numpy())

    def _embed(self, waves):
        return self.outputs(waves)["embed"]

    def _label_logits(self, waves):
        return self.outputs(waves)["genre"]

    def embed_frames(self, waves: Sequence[np.ndarray], sample_rate: int | None = None) -> list[np.ndarray]:
        """One embedding per 1 s window: [(t_i, d)]."""
        return self.outputs(waves, sample_rate)["frames"]

    @staticmethod
    def multilabel(outputs: dict[str, np.ndarray]) -> np.ndarray:
        """Logits whose sigmoids are the judge's per-label probabilities: mode, energy (as two
        one-vs-rest pairs via their logit differences), drums and the instruments."""
        mode = outputs["mode"][:, 1:2] - outputs["mode"][:, 0:1]
        energy = outputs["energy"][:, 1:2] - outputs["energy"][:, 0:1]
        return np.concatenate([mode, energy, outputs["drums"], outputs["instruments"]], axis=1)

    def predict(self, outputs: dict[str, np.ndarray]) -> dict[str, list]:
        return {"genre": [GENRES[i] for i in outputs["genre"].argmax(1)],
                "mode": [MODES[i] for i in outputs["mode"].argmax(1)],
                "energy": [ENERGIES[i] for i in outputs["energy"].argmax(1)],
                "drums": [bool(x > 0) for x in outputs["drums"][:, 0]],
                "instruments": [[self.instruments[j] for j in np.flatnonzero(row > 0)]
                                for row in outputs["instruments"]]}


class AudioTextJudge(SavedJudge, TextAudioModel):
    """CLAP-like SynthMeL model: `embed_audio` / `embed_text` unit vectors, `logit_scale`."""

    name = "synthmel-audio-text"
    sample_rate = SAMPLE_RATE

    def __init__(self, net: ContrastiveNet, config: dict):
        self.net = net.eval()
        self.config = config
        self.dim = config.get("dim", 128)
        self.logit_scale = float(net.log_scale.detach().exp())
        self.front = JudgeFrontEnd()

    kind = "audio_text"

    def embed_features(self, feats: list[torch.Tensor]) -> np.ndarray:
        feats = [_pad_min(f) for f in feats]
        out = np.zeros((len(feats), self.dim), np.float32)
        with torch.no_grad():
            for idx, batch in _stack_same_length(feats):
                for j in range(0, len(idx), 16):
                    out[idx[j:j + 16]] = self.net.tower(batch[j:j + 16]).numpy()
        return unit_rows(out)

    def _embed(self, waves):
        return self.embed_features(features_of(waves, self.front))

    def embed_text(self, texts):
        t = torch.from_numpy(minilm_sentence_embeddings(check_texts(texts)))
        with torch.no_grad():
            return unit_rows(self.net.text(t).numpy())


def load_image_array(image) -> np.ndarray:
    """`(64, 64, 3)` float32 in [0, 1] from a PIL image, uint8 array or path (area downsampling)."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise MelFusionError(f"image file not found: {image}")
        image = Image.open(image)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    image = image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX)
    return np.asarray(image, dtype=np.float32) / 255.0


class ImageTextJudge(SavedJudge, ImageTextModel):
    """CLIP-like SynthMeL model: `embed_image` / `embed_text` unit vectors, `logit_scale`."""

    name = "synthmel-image-text"

    def __init__(self, net: ContrastiveNet, config: dict):
        self.net = net.eval()
        self.config = config
        self.dim = config.get("dim", 128)
        self.logit_scale = float(net.log_scale.detach().exp())

    kind = "image_text"

    def embed_arrays(self, arrays: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(arrays, dtype=np.float32)).permute(0, 3, 1, 2)
        with torch.no_grad():
            return unit_rows(np.concatenate(_run_in_chunks(lambda b: self.net.tower(b).numpy(), x, 64)))

    def embed_image(self, images):
        if len(images) == 0:
            raise MelFusionError("no images given")
        return self.embed_arrays(np.stack([load_image_array(im) for im in images]))

    def embed_text(self, texts):
        t = torch.from_numpy(minilm_sentence_embeddings(check_texts(texts)))
        with torch.no_grad():
            return unit_rows(self.net.text(t).numpy())


JUDGES_DIR = Path(__file__).resolve().parents[2] / "assets" / "judges"


def load_judges(directory: str | Path | None = None) -> tuple[AudioJudge, AudioTextJudge, ImageTextJudge]:
    """The three judges from `directory` (default: the shipped `melfusion/assets/judges`)."""
    d = Path(directory) if directory else JUDGES_DIR
    return (AudioJudge.from_pretrained(d / "audio"), AudioTextJudge.from_pretrained(d / "audio_text"),
            ImageTextJudge.from_pretrained(d / "image_text"))


def load_synthmel(path: str, **options) -> AudioJudge:
    """Registry loader: `synthmel:DIR` (the audio judge dir or the judges dir), `synthmel:default` the shipped one."""
    p = JUDGES_DIR / "audio" if path in ("default", "") else Path(path)
    if (p / "audio" / CONFIG_NAME).is_file():
        p = p / "audio"
    return AudioJudge.from_pretrained(p, **options)
