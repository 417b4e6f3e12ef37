"""vispy's text: the glyph filter kernel sent to OpenGL once per font, not on every draw.

Every canvas text napari draws (overlay titles and warnings, colour-bar ticks, the scale bar,
the compare view's panel titles) is a vispy ``TextVisual``, and each of its draws sets
``shared_program['u_kernel'] = font._kernel``. The font keeps the kernel as a NumPy array
(vispy's 16 x 1024 x 4 spatial filters), and a program given an array for a sampler that
already has a texture uploads the array into it again: one 64 KiB texture upload per text
per draw. With ten explanations side by side that was ~25 uploads a frame (counted under
Xvfb); under software OpenGL an upload into a texture the frame may still use waits for the
rendering queued before it (~1.8 s of 20 zoom frames, stacked, was spent in those uploads).

:func:`install` makes the kernel a ``Texture2D`` of the same array, once per font, the first
time a text of that font is drawn: the texture vispy's program would make from it (the same
defaults: nearest interpolation, clamped edges), so what is drawn is the same; a program
given a texture only binds it. A font's texture belongs to the canvas the font draws on, as
its glyph atlas (a texture too) already does. It patches only a vispy whose ``TextVisual``
has ``_prepare_draw``; on any other it changes nothing.
"""

from __future__ import annotations

import numpy as np

from ._patching import Patches

_PATCHES = Patches()


def _text_visual():
    try:
        from vispy.visuals.text.text import TextVisual
    except ImportError:  # another vispy layout: nothing to patch
        return None
    return TextVisual if hasattr(TextVisual, "_prepare_draw") else None


def kernel_texture(font) -> None:
    """Replace ``font``'s kernel array by a texture of it (nothing when it is one already)."""
    kernel = getattr(font, "_kernel", None)
    if isinstance(kernel, np.ndarray):
        from vispy.gloo import Texture2D

        font._kernel = Texture2D(kernel)


def _prepare_draw(self, view):
    kernel_texture(getattr(self, "_font", None))
    return _PATCHES.original("_prepare_draw")(self, view)


def install() -> bool:
    """Upload each font's kernel once (idempotent); returns whether it is installed (False on
    a vispy this module does not know)."""
    cls = _text_visual()
    if cls is None:
        return False
    _PATCHES.swap(cls, "_prepare_draw", _prepare_draw)
    return True


def uninstall() -> None:
    """vispy's own ``_prepare_draw`` again (fonts already given a texture keep it)."""
    _PATCHES.restore()
