"""Image input: open files, list pyramid levels, read regions lazily; and the one writer of
every output file (:mod:`histoview.io.files`: whole or absent, never over a user's file).
No napari, no Qt."""

from histoview.io.files import atomic_write, unique_path, write_bytes, write_text
from histoview.io.image import (
    SUPPORTED_SUFFIXES,
    ImageReadError,
    ImageSource,
    LevelInfo,
    open_image,
    read_rgb,
)
from histoview.io.ome_tiff import write_ome_tiff
from histoview.io.pyramid import write_pyramidal_tiff
from histoview.io.rgb import to_rgb8

__all__ = [
    "SUPPORTED_SUFFIXES",
    "ImageReadError",
    "ImageSource",
    "LevelInfo",
    "atomic_write",
    "open_image",
    "read_rgb",
    "to_rgb8",
    "unique_path",
    "write_bytes",
    "write_ome_tiff",
    "write_pyramidal_tiff",
    "write_text",
]
