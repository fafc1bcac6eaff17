"""PANNs CNN14 (Kong et al. 2020): the 2048-d features behind FD and the AudioSet labels behind KL.

Checkpoint layout (`Cnn14_mAP=0.431.pth`, `Cnn14_16k_mAP=0.438.pth`): a dict whose `model` entry
is the state dict: `bn0` (BatchNorm2d over the 64 mel bins), `conv_block1..6` each with
`conv1`, `conv2` (3x3, no bias) and `bn1`, `bn2` (1 -> 64 -> 128 -> 256 -> 512 -> 1024 -> 2048
channels), `fc1` (2048 -> 2048) and `fc_audioset` (2048 -> 527). Widths are read from the
shapes, so narrow random models in the same layout load the same way.

Front end (torchlibrosa's Spectrogram + LogmelFilterBank): periodic-Hann STFT with n_fft-long
windows, centred with reflect padding, power spectrum, librosa's Slaney mel bank, then
10 log10(max(mel, 1e-10)) (ref 1, no top_db). The checkpoint also carries that front end as
tensors: `spectrogram_extractor.stft.conv_{real,imag}.weight` (the windowed DFT as conv kernels)
and `logmel_extractor.melW`. Here the STFT kernels only fix n_fft (and hence which preset,
32 kHz or 16 kHz, the checkpoint was trained with); the transform itself is `torch.stft`, which
computes the same thing. `melW` is used as stored, being exactly the filter bank the network was
trained on; without it the bank is rebuilt from the preset.

Outputs: embedding = ReLU(fc1(max_t + mean_t of the frequency-averaged last feature map)),
`(n, 2048)`; label logits = fc_audioset of that, `(n, 527)` (sigmoid gives AudioSet tag
probabilities; audioldm_eval's KL starts from these logits).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from melfusion.audio.mel import MelConfig, mel_filter_bank
from melfusion.errors import MelFusionError
from melfusion.metrics.embedders.base import AudioClassifier
from melfusion.metrics.embedders.checkpoint import load_torch_file

STFT_KEYS = ("spectrogram_extractor.stft.conv_real.weight", "spectrogram_extractor.stft.conv_imag.weight")
MEL_KEY = "logmel_extractor.melW"
AMIN = 1e-10
POOLS = ((2, 2), (2, 2), (2, 2), (2, 2), (2, 2), (1, 1))


@dataclass(frozen=True)
class PannsFrontEnd:
    sample_rate: int = 32000
    n_fft: int = 1024  # = window length
    hop_length: int = 320
    n_mels: int = 64
    f_min: float = 50.0
    f_max: float = 14000.0

    def mel_bank(self) -> np.ndarray:
        """`(n_fft // 2 + 1, n_mels)` Slaney mel weights, as librosa.filters.mel builds them."""
        cfg = MelConfig(sample_rate=self.sample_rate, n_fft=self.n_fft, hop_length=self.hop_length,
                        win_length=self.n_fft, n_mels=self.n_mels, f_min=self.f_min, f_max=self.f_max)
        return mel_filter_bank(cfg).T


CNN14_32K = PannsFrontEnd()
CNN14_16K = PannsFrontEnd(sample_rate=16000, n_fft=512, hop_length=160, f_max=8000.0)
PRESETS_BY_NFFT = {CNN14_32K.n_fft: CNN14_32K, CNN14_16K.n_fft: CNN14_16K}


class ConvBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor, pool: tuple[int, int]) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, pool)


class Cnn14(nn.Module):
    """`forward(log_mel (batch, 1, frames, mels)) -> (embedding (batch, d), logits (batch, classes))`."""

    def __init__(self, channels=(64, 128, 256, 512, 1024, 2048), n_mels: int = 64, fc_dim: int = 2048,
                 classes: int = 527):
        super().__init__()
        self.bn0 = nn.BatchNorm2d(n_mels)
        in_ch = 1
        for i, ch in enumerate(channels, start=1):
            setattr(self, f"conv_block{i}", ConvBlock(in_ch, ch))
            in_ch = ch
        self.fc1 = nn.Linear(in_ch, fc_dim)
        self.fc_audioset = nn.Linear(fc_dim, classes)

    def forward(self, logmel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.bn0(logmel.transpose(1, 3)).transpose(1, 3)  # normalise each mel bin
        for i, pool in enumerate(POOLS, start=1):
            x = getattr(self, f"conv_block{i}")(x, pool)
        x = x.mean(dim=3)  # over frequency
        x = x.max(dim=2).values + x.mean(dim=2)  # over time
        embedding = F.relu(self.fc1(x))
        return embedding, self.fc_audioset(embedding)


class PANNs(AudioClassifier):
    """CNN14 as FD's embedder and KL's classifier; clips are run one at a time (no padding bias)."""

    name = "panns"

    def __init__(self, net: Cnn14, front: PannsFrontEnd = CNN14_32K, mel_bank: np.ndarray | None = None):
        self.net = net.eval().requires_grad_(False)
        self.front = front
        self.sample_rate = front.sample_rate
        self.dim = int(net.fc1.out_features)
        self.num_labels = int(net.fc_audioset.out_features)
        bank = front.mel_bank() if mel_bank is None else np.asarray(mel_bank)
        self.mel_bank = torch.as_tensor(bank, dtype=torch.float32)
        self.window = torch.hann_window(front.n_fft, periodic=True)

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """`(batch, samples) -> (batch, 1, frames, mels)` in dB; frames = 1 + samples // hop."""
        spec = torch.stft(wave, self.front.n_fft, self.front.hop_length, self.front.n_fft, window=self.window,
                          center=True, pad_mode="reflect", return_complex=True)
        power = spec.real ** 2 + spec.imag ** 2  # (batch, bins, frames)
        mel = power.transpose(1, 2) @ self.mel_bank
        return (10.0 * torch.log10(mel.clamp(min=AMIN)))[:, None]

    @torch.no_grad()
    def _forward(self, waves: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        # Five 2x2 poolings need 32 frames; the reflect padding needs more than n_fft / 2 samples.
        shortest = max(31 * self.front.hop_length, self.front.n_fft // 2 + 1)
        embs, logits = [], []
        for wave in waves:
            if len(wave) < shortest:
                wave = np.pad(wave, (0, shortest - len(wave)))
            e, l = self.net(self.log_mel(torch.from_numpy(wave)[None]))
            embs.append(e[0].numpy())
            logits.append(l[0].numpy())
        return np.stack(embs), np.stack(logits)

    def _embed(self, waves):
        return self._forward(waves)[0]

    def _label_logits(self, waves):
        return self._forward(waves)[1]

    @classmethod
    def from_path(cls, path: str | Path, front: PannsFrontEnd | None = None) -> "PANNs":
        """Load a PANNs checkpoint file (`{'model': state_dict, ...}` or a bare state dict)."""
        path = Path(path)
        if path.is_dir():
            found = sorted(path.glob("Cnn14*.pth")) or sorted(path.glob("*.pth"))
            if len(found) != 1:
                raise MelFusionError(f"expected one CNN14 .pth file in {path}, found {len(found)}")
            path = found[0]
        ckpt = load_torch_file(path, "PANNs CNN14")
        state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
        if not isinstance(state, dict) or "fc_audioset.weight" not in state:
            raise MelFusionError(f"{path} is not a PANNs CNN14 checkpoint (no fc_audioset weights)")
        state = dict(state)
        stft = [state.pop(k, None) for k in STFT_KEYS]
        mel_bank = state.pop(MEL_KEY, None)
        if front is None:
            n_fft = int(stft[0].shape[-1]) if stft[0] is not None else CNN14_32K.n_fft
            if n_fft not in PRESETS_BY_NFFT:
                raise MelFusionError(f"{path}: STFT kernels of length {n_fft} match no known CNN14 preset (1024, 512)")
            front = PRESETS_BY_NFFT[n_fft]
        if mel_bank is not None and tuple(mel_bank.shape) != (front.n_fft // 2 + 1, front.n_mels):
            raise MelFusionError(f"{path}: melW has shape {tuple(mel_bank.shape)}, "
                                 f"expected ({front.n_fft // 2 + 1}, {front.n_mels})")
        try:
            channels = tuple(int(state[f"conv_block{i}.conv1.weight"].shape[0]) for i in range(1, 7))
            net = Cnn14(channels, int(state["bn0.weight"].shape[0]), int(state["fc1.weight"].shape[0]),
                        int(state["fc_audioset.weight"].shape[0]))
        except KeyError as exc:
            raise MelFusionError(f"{path} is not a PANNs CNN14 checkpoint: missing {exc.args[0]}") from None
        # Other PANNs variants (and training leftovers such as spec-augment state) do not fit.
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise MelFusionError(f"{path} does not fit CNN14: missing {missing[:3]}, unexpected {unexpected[:3]}")
        if int(state["bn0.weight"].shape[0]) != front.n_mels:
            raise MelFusionError(f"{path}: bn0 covers {state['bn0.weight'].shape[0]} mel bins, front end has {front.n_mels}")
        return cls(net, front, None if mel_bank is None else mel_bank.double().numpy())


def save_panns_layout(model: PANNs, path: str | Path) -> Path:
    """Write a checkpoint as PANNs releases do: `{'model': state_dict}` with the front-end tensors."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = model.front.n_fft
    t = np.arange(n)
    k = np.arange(n // 2 + 1)[:, None]
    window = model.window.double().numpy()
    state = dict(model.net.state_dict())
    state[STFT_KEYS[0]] = torch.from_numpy(np.cos(2 * np.pi * k * t / n) * window)[:, None].float()
    state[STFT_KEYS[1]] = torch.from_numpy(-np.sin(2 * np.pi * k * t / n) * window)[:, None].float()
    state[MEL_KEY] = model.mel_bank.clone()
    torch.save({"iteration": 0, "model": state}, path)
    return path
