"""The embedder registry: a new kind (the future synthmel judge) plugs in with one call."""
import numpy as np
import pytest
import torch

from melfusion.errors import MelFusionError
from melfusion.metrics import (AudioClassifier, embedder_kinds, fad, load_embedder, paired_kl_from_waves,
                               register_embedder)
from melfusion.metrics.embedders.panns import Cnn14
from melfusion.metrics.embedders.vggish import VGGishNet


class SpectralJudge(AudioClassifier):
    """A toy judge: band energies as the embedding, and as label logits."""
    name, sample_rate, dim, num_labels = "toy", 8000, 4, 4

    def _embed(self, waves):
        return np.stack([np.log1p(np.abs(np.fft.rfft(w, 64))[:32].reshape(4, 8).sum(axis=1)) for w in waves])

    def _label_logits(self, waves):
        return self._embed(waves)


def test_a_registered_kind_loads_by_spec_and_feeds_the_metrics(monkeypatch):
    from melfusion.metrics import embedders

    monkeypatch.setattr(embedders, "_LOADERS", dict(embedders._LOADERS))  # leave the real registry alone
    register_embedder("toyjudge", lambda path, **options: SpectralJudge())
    assert "toyjudge" in embedder_kinds() and {"vggish", "panns", "clap", "clip"} <= set(embedder_kinds())
    judge = load_embedder("toyjudge:/anywhere")
    rng = np.random.default_rng(0)
    ref = [rng.normal(size=800) for _ in range(4)]
    gen = [rng.normal(size=800) * 2 for _ in range(4)]
    assert fad(judge, ref, gen) > 0
    assert fad(judge, ref, ref) == pytest.approx(0.0, abs=1e-9)
    kl = paired_kl_from_waves(judge, ref, gen)
    assert set(kl) == {"kl_softmax", "kl_sigmoid"} and kl["kl_softmax"] > 0
    with pytest.raises(MelFusionError, match="as many generated clips"):
        paired_kl_from_waves(judge, ref, gen[:3])


def test_full_size_networks_have_the_published_shapes():
    with torch.device("meta"):
        vgg, cnn = VGGishNet(), Cnn14()
    shapes = {k: tuple(v.shape) for k, v in vgg.state_dict().items()}
    assert shapes["features.0.weight"] == (64, 1, 3, 3) and shapes["features.13.weight"] == (512, 512, 3, 3)
    assert shapes["embeddings.0.weight"] == (4096, 12288) and shapes["embeddings.4.weight"] == (128, 4096)
    assert len(shapes) == 18
    cshapes = {k: tuple(v.shape) for k, v in cnn.state_dict().items()}
    assert cshapes["conv_block6.conv2.weight"] == (2048, 2048, 3, 3) and cshapes["bn0.weight"] == (64,)
    assert cshapes["fc1.weight"] == (2048, 2048) and cshapes["fc_audioset.weight"] == (527, 2048)
    # CNN14's published parameter count, front-end tensors excluded.
    assert sum(v.numel() for v in cnn.parameters()) == 80_753_615


def test_vggish_flattens_channels_last_like_the_tensorflow_original():
    torch.manual_seed(0)
    net = VGGishNet((2, 2, 2, 2, 2, 3), (5, 5), 4)
    x = torch.randn(2, 1, 96, 64)
    feats = net.features(x)  # (2, 3, 6, 4)
    flat = feats.transpose(1, 3).transpose(1, 2).reshape(2, -1)  # the port's two transposes
    assert torch.allclose(net(x), net.embeddings(flat))
