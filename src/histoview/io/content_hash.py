"""A slide's identity by content: the SHA-256 of its bytes, remembered per file state.

Batch runs skip slides already done and the feature cache reuses embeddings, both keyed by
what a slide *contains*, not by its name: a slide copied to another folder is the same slide,
and a slide rewritten under the same name is not. Multi-file formats count every file: an
MRXS slide's data lives in the folder of the same stem beside it, a VMS slide lists its
JPEGs beside it; those files are hashed too, in a fixed order, with their names.

Hashing reads the whole file (about 1 s per GB here); the digest is remembered in this
process per (path, size, modification time) so asking again is free.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_CHUNK = 8 << 20
_MEMO: dict[tuple, str] = {}


def _companions(path: Path) -> list[Path]:
    """Files that belong to the slide at ``path`` besides itself (multi-file formats)."""
    folder = path.with_suffix("")
    if path.suffix.lower() == ".mrxs" and folder.is_dir():
        return sorted(p for p in folder.rglob("*") if p.is_file())
    return []


def _state(paths: list[Path]) -> tuple:
    return tuple((str(p), st.st_size, st.st_mtime_ns) for p in paths for st in (p.stat(),))


def content_hash(path: str | os.PathLike) -> str:
    """The hex SHA-256 of the slide at ``path`` and its companion files.

    Raises:
        FileNotFoundError: ``path`` does not exist (named).
        IsADirectoryError: ``path`` is a folder.
    """
    path = Path(path).resolve()
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder, not a slide file")
    files = [path, *_companions(path)]
    key = _state(files)  # FileNotFoundError names the file
    if key in _MEMO:
        return _MEMO[key]
    h = hashlib.sha256()
    for p in files:
        if p != path:
            h.update(b"\0" + p.relative_to(path.parent).as_posix().encode() + b"\0")
        with open(p, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
    _MEMO[key] = digest = h.hexdigest()
    return digest
