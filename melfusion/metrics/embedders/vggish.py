"""VGGish (Hershey et al. 2017), the embedder behind FAD, loaded from the PyTorch port's weights.

Weights: the state dict of harritaylor/torchvggish (`vggish-10086976.pth`):
`features.{0,3,6,8,11,13}.{weight,bias}` are the six 3x3 convolutions (1->64->128->256->256->
512->512, max-pooling 2x2 after the 1st, 2nd, 4th and 6th) and `embeddings.{0,2,4}` the fully
connected layers 12288 -> 4096 -> 4096 -> 128. Optional PCA parameters (`pca_eigen_vectors`
(128, 128), `pca_means` (128,)) come from `vggish_pca_params-*.pth` (or `.npz`) beside it, or as
`pproc.pca_matrix` / `pproc.pca_means` inside a saved whole-model state dict. Layer widths are
read from the tensors' shapes, so a narrow random model in the same layout loads the same way.

Front end (the original's mel_features): 16 kHz; 25 ms periodic-Hann frames (400 samples) every
10 ms, no padding; magnitude of a 512-point FFT; 64 HTK-mel triangles from 125 to 7500 Hz, drawn
in the mel domain, the DC bin excluded; log(mel + 0.01); examples of 96 frames (0.96 s) every
96 frames, each a `(1, 96, 64)` image for the network.

Embedding convention: FAD as computed by Google's tool, the `frechet_audio_distance` package and
audioldm_eval takes the last fully connected layer *before* its ReLU and without PCA; that is the
default here (`final_relu=False, pca=False`). `final_relu=True, pca=True` gives torchvggish's
default output (PCA-whitened, clipped to [-2, 2], quantised to 0..255).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from melfusion.errors import MelFusionError
from melfusion.metrics.embedders.base import AudioEmbedder, check_waves
from melfusion.metrics.embedders.checkpoint import load_torch_file

SAMPLE_RATE = 16000
WINDOW_SAMPLES = 400  # 25 ms
HOP_SAMPLES = 160  # 10 ms
FFT_LENGTH = 512  # next power of two above the window
NUM_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s
EMBEDDING_SIZE = 128
QUANTIZE_MIN, QUANTIZE_MAX = -2.0, 2.0
# Positions of the convolutions in torchvggish's `features` Sequential, and the pools after them.
CONV_INDICES = (0, 3, 6, 8, 11, 13)
POOL_AFTER = (0, 3, 8, 13)
FC_INDICES = (0, 2, 4)


def htk_mel(hz: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


def vggish_mel_matrix(num_bins: int = FFT_LENGTH // 2 + 1, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """`(num_bins, 64)` weights: triangles linear in HTK mel, unnormalised, DC bin zeroed."""
    bins_mel = htk_mel(np.linspace(0.0, sample_rate / 2.0, num_bins))
    edges = np.linspace(htk_mel(MEL_MIN_HZ), htk_mel(MEL_MAX_HZ), NUM_BANDS + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (center - lower)
    falling = (upper - bins_mel[:, None]) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0
    return weights


def log_mel(wave: np.ndarray) -> np.ndarray:
    """`(frames, 64)` VGGish log-mel of a 16 kHz wave; frames = 1 + (samples - 400) // 160."""
    wave = np.asarray(wave, dtype=np.float64)
    n_frames = 1 + (len(wave) - WINDOW_SAMPLES) // HOP_SAMPLES
    frames = np.lib.stride_tricks.sliding_window_view(wave, WINDOW_SAMPLES)[::HOP_SAMPLES][:n_frames]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(WINDOW_SAMPLES) / WINDOW_SAMPLES)  # periodic Hann
    magnitude = np.abs(np.fft.rfft(frames * window, FFT_LENGTH))
    return np.log(magnitude @ vggish_mel_matrix() + LOG_OFFSET)


def examples(wave: np.ndarray) -> np.ndarray:
    """`(n_examples, 96, 64)` non-overlapping 0.96 s log-mel patches.

    Clips shorter than one example (15,600 samples) are zero-padded to one; the original would
    return no example at all.
    """
    need = WINDOW_SAMPLES + (EXAMPLE_FRAMES - 1) * HOP_SAMPLES
    if len(wave) < need:
        wave = np.pad(np.asarray(wave), (0, need - len(wave)))
    mel = log_mel(wave)
    count = 1 + (mel.shape[0] - EXAMPLE_FRAMES) // EXAMPLE_FRAMES
    return np.stack([mel[i * EXAMPLE_FRAMES:(i + 1) * EXAMPLE_FRAMES] for i in range(count)])


class VGGishNet(nn.Module):
    """torchvggish's `VGG`: `forward((batch, 1, 96, 64)) -> (batch, 128)` pre-ReLU embeddings."""

    def __init__(self, channels=(64, 128, 256, 256, 512, 512), hidden=(4096, 4096), out_dim=EMBEDDING_SIZE):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 1
        for i, ch in enumerate(channels):
            layers += [nn.Conv2d(in_ch, ch, kernel_size=3, padding=1), nn.ReLU()]
            if CONV_INDICES[i] in POOL_AFTER:
                layers.append(nn.MaxPool2d(2, 2))
            in_ch = ch
        self.features = nn.Sequential(*layers)
        # 96 x 64 is halved four times: 6 x 4.
        self.embeddings = nn.Sequential(
            nn.Linear(in_ch * 6 * 4, hidden[0]), nn.ReLU(),
            nn.Linear(hidden[0], hidden[1]), nn.ReLU(),
            nn.Linear(hidden[1], out_dim),
        )

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = self.features(patches)
        # Flatten channels-last, as the TensorFlow original did, so the ported fc weights line up.
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        return self.embeddings(x)


def _widths(state: dict) -> tuple[tuple[int, ...], tuple[int, int], int]:
    try:
        channels = tuple(int(state[f"features.{i}.weight"].shape[0]) for i in CONV_INDICES)
        fc = [state[f"embeddings.{i}.weight"].shape for i in FC_INDICES]
    except KeyError as exc:
        raise MelFusionError(f"not a torchvggish state dict: missing {exc.args[0]}") from None
    return channels, (int(fc[0][0]), int(fc[1][0])), int(fc[2][0])


class VGGish(AudioEmbedder):
    """FAD's embedder. `embed` averages a clip's 0.96 s frame embeddings; `embed_frames` keeps them."""

    name = "vggish"
    sample_rate = SAMPLE_RATE

    def __init__(self, net: VGGishNet, pca: tuple[np.ndarray, np.ndarray] | None = None,
                 final_relu: bool = False, batch_size: int = 64):
        self.net = net.eval().requires_grad_(False)
        self.pca = pca
        self.final_relu = final_relu
        self.batch_size = batch_size
        self.dim = int(net.embeddings[-1].out_features)

    @torch.no_grad()
    def _frames(self, wave: np.ndarray) -> np.ndarray:
        patches = torch.from_numpy(examples(wave)).float()[:, None]
        out = torch.cat([self.net(patches[i:i + self.batch_size]) for i in range(0, len(patches), self.batch_size)])
        if self.final_relu:
            out = torch.relu(out)
        emb = out.double().numpy()
        if self.pca is not None:
            vectors, means = self.pca
            emb = (emb - means) @ vectors.T
            emb = np.round((np.clip(emb, QUANTIZE_MIN, QUANTIZE_MAX) - QUANTIZE_MIN) * (255.0 / (QUANTIZE_MAX - QUANTIZE_MIN)))
        return emb.astype(np.float32)

    def embed_frames(self, waves, sample_rate: int | None = None) -> list[np.ndarray]:
        """One `(n_examples_i, 128)` array per clip."""
        return [self._frames(w) for w in check_waves(waves, sample_rate, self.sample_rate)]

    def _embed(self, waves: list[np.ndarray]) -> np.ndarray:
        return np.stack([self._frames(w).mean(axis=0) for w in waves])

    @classmethod
    def from_path(cls, path: str | Path, pca: bool = False, final_relu: bool = False) -> "VGGish":
        """Load `vggish-*.pth` (a file, or a directory holding it and optionally the PCA params)."""
        weights, pca_file = _find_files(Path(path))
        state = load_torch_file(weights, "VGGish")
        if not isinstance(state, dict):
            raise MelFusionError(f"VGGish weights {weights} are not a state dict")
        channels, hidden, out_dim = _widths(state)
        net = VGGishNet(channels, hidden, out_dim)
        pca_params = None
        if "pproc.pca_matrix" in state:
            pca_params = (state.pop("pproc.pca_matrix"), state.pop("pproc.pca_means"))
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise MelFusionError(f"VGGish weights {weights} do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
        if pca:
            if pca_params is None:
                if pca_file is None:
                    raise MelFusionError(f"PCA postprocessing asked for, but no vggish_pca_params file beside {weights}")
                params = _load_pca_file(pca_file)
                try:
                    pca_params = (params["pca_eigen_vectors"], params["pca_means"])
                except (KeyError, TypeError):
                    raise MelFusionError(f"{pca_file} lacks pca_eigen_vectors / pca_means") from None
            vectors = np.asarray(pca_params[0], dtype=np.float64)
            means = np.asarray(pca_params[1], dtype=np.float64).reshape(-1)
            if vectors.shape != (out_dim, out_dim) or means.shape != (out_dim,):
                raise MelFusionError(f"VGGish PCA parameters have shapes {vectors.shape}, {means.shape}; "
                                     f"expected ({out_dim}, {out_dim}) and ({out_dim},)")
            pca_params = (vectors, means)
        else:
            pca_params = None
        return cls(net, pca_params, final_relu=final_relu)


def _load_pca_file(path: Path):
    if path.suffix != ".npz":
        return load_torch_file(path, "VGGish PCA", allow_numpy=True)
    try:
        with np.load(path) as data:
            return dict(data)
    except (OSError, ValueError) as exc:
        raise MelFusionError(f"cannot read VGGish PCA parameters {path}: {str(exc).splitlines()[0]}") from None


def _find_files(path: Path) -> tuple[Path, Path | None]:
    if path.is_file():
        candidates = sorted(p for p in path.parent.glob("vggish_pca_params*") if p.suffix in (".pth", ".pt", ".npz"))
        return path, (candidates[0] if candidates else None)
    if not path.is_dir():
        raise MelFusionError(f"VGGish weights not found: {path}")
    pca = sorted(p for p in path.glob("vggish_pca_params*") if p.suffix in (".pth", ".pt", ".npz"))
    weights = sorted(p for p in path.glob("*.pt*") if p not in pca)
    if len(weights) != 1:
        found = ", ".join(p.name for p in weights) or "none"
        raise MelFusionError(f"expected one VGGish .pth file in {path}, found {found}")
    return weights[0], (pca[0] if pca else None)


def save_torchvggish_layout(net: VGGishNet, directory: str | Path, pca: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """Write `net` as torchvggish publishes it (`vggish-10086976.pth`, `vggish_pca_params-970ea276.pth`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), directory / "vggish-10086976.pth")
    if pca is not None:
        torch.save({"pca_eigen_vectors": np.asarray(pca[0]), "pca_means": np.asarray(pca[1])},
                   directory / "vggish_pca_params-970ea276.pth")
    return directory

