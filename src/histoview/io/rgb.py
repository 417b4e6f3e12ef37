"""Any image array as the 8-bit RGB that histoview's models take (:func:`to_rgb8`)."""

from __future__ import annotations

import numpy as np


def to_rgb8(array: np.ndarray) -> np.ndarray:
    """Any image array (gray, RGB, RGBA, 8/16-bit, float) -> (H, W, 3) uint8 RGB for models.

    RGBA is composited on white (slide glass); 16-bit and float images are
    scaled by their dtype range (or their maximum for floats above 1).
    """
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected a (H, W), (H, W, 3) or (H, W, 4) image, got {arr.shape}")
    if arr.dtype == np.uint8:
        f = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        f = arr.astype(np.float32) / 65535.0
    elif np.issubdtype(arr.dtype, np.integer):
        f = arr.astype(np.float32) / max(float(arr.max()), 1.0)
    else:
        f = arr.astype(np.float32)
        if f.max() > 1.0:
            f = f / f.max()
    if f.shape[2] == 4:
        alpha = f[..., 3:4]
        f = f[..., :3] * alpha + (1.0 - alpha)
    if arr.dtype == np.uint8 and arr.shape[2] == 3:
        return np.ascontiguousarray(arr)
    return (np.clip(f, 0, 1) * 255 + 0.5).astype(np.uint8)
