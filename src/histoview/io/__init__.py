"""Image input: open files, list pyramid levels, read regions lazily (no napari, no Qt)."""

from histoview.io.image import (
    SUPPORTED_SUFFIXES,
    ImageReadError,
    ImageSource,
    LevelInfo,
    open_image,
    read_rgb,
    to_rgb8,
)
from histoview.io.pyramid import write_pyramidal_tiff

__all__ = [
    "SUPPORTED_SUFFIXES",
    "ImageReadError",
    "ImageSource",
    "LevelInfo",
    "open_image",
    "read_rgb",
    "to_rgb8",
    "write_pyramidal_tiff",
]
