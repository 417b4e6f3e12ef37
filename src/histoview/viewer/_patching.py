"""Attributes of napari and vispy swapped for histoview's, with their originals kept to restore.

Five modules here (``_napari_grid``, ``_napari_lazy``, ``_napari_rows``, ``_vispy_shaders``,
``_vispy_text``) each replace a few functions of a library class or module and must put the
originals back when a test compares both. :class:`Patches` is that bookkeeping, once: each
module owns one instance, swaps attributes in with :meth:`Patches.swap` (idempotent per key,
so installing twice keeps the true original), calls an original through
:meth:`Patches.original`, and restores everything with :meth:`Patches.restore`.
"""

from __future__ import annotations


class Patches:
    """The attributes one module swapped, each under a key, with the originals to restore."""

    def __init__(self) -> None:
        self._kept: dict[str, tuple[object, str, object]] = {}

    def swap(self, owner: object, name: str, replacement: object, key: str | None = None):
        """Set ``owner.name = replacement`` and keep the original under ``key`` (``name`` by
        default). A key already swapped is left alone, so a second install changes nothing."""
        key = name if key is None else key
        if key not in self._kept:
            self._kept[key] = (owner, name, getattr(owner, name))
            setattr(owner, name, replacement)

    def original(self, key: str):
        """The attribute that was there before :meth:`swap` put a replacement under ``key``."""
        return self._kept[key][2]

    def __contains__(self, key: str) -> bool:
        return key in self._kept

    def __bool__(self) -> bool:
        return bool(self._kept)

    def restore(self, *keys: str) -> None:
        """Put the originals back: those under ``keys``, or all of them when none is given."""
        for key in keys or tuple(self._kept):
            if key in self._kept:
                owner, name, original = self._kept.pop(key)
                setattr(owner, name, original)
