"""The bookkeeping every napari/vispy patch of the viewer relies on to put libraries back."""

from __future__ import annotations

import types

from histoview.viewer._patching import Patches


class _Owner:
    def greet(self):
        return "original"


def test_swap_is_idempotent_and_restore_puts_the_original_back():
    patches = Patches()
    original = _Owner.greet
    patches.swap(_Owner, "greet", lambda self: "patched")
    assert _Owner().greet() == "patched" and "greet" in patches and patches
    patches.swap(_Owner, "greet", lambda self: "again")  # a second install changes nothing
    assert _Owner().greet() == "patched"
    assert patches.original("greet") is original
    patches.restore()
    assert _Owner.greet is original and not patches


def test_restore_by_key_leaves_the_others_swapped():
    module = types.SimpleNamespace(a=1, b=2)
    patches = Patches()
    patches.swap(module, "a", 10, key="first")
    patches.swap(module, "b", 20)
    patches.restore("first", "missing")
    assert (module.a, module.b) == (1, 20)
    assert "first" not in patches and "b" in patches
    patches.restore()
    assert (module.a, module.b) == (1, 2)
