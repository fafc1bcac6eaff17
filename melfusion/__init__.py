"""melfusion: music for an image and a line of text (MeLFusion, CVPR 2024)."""
__version__ = "0.1.0"


def __getattr__(name):
    # Heavy imports (torch, diffusers) only when the pipeline is asked for.
    if name == "MelFusionPipeline":
        from melfusion.pipeline import MelFusionPipeline

        return MelFusionPipeline
    raise AttributeError(name)
