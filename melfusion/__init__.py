"""melfusion: music for an image and a line of text (MeLFusion, CVPR 2024)."""
__version__ = "0.1.0"
