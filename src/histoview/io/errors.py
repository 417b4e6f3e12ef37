"""The one error of histoview's image input (re-exported by :mod:`histoview.io` and
:mod:`histoview.io.image`)."""

from __future__ import annotations

import os


class ImageReadError(ValueError):
    """A file histoview cannot read; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")
