"""Writing output files whole or not at all, and never over a file a user made.

One writer serves every output of histoview (maps, JSON records, GeoJSON and CSV exports,
figures, reports, checkpoints, caches): :func:`atomic_write` writes into a temporary file
in the target's folder, flushes it to disk (``fsync``) and only then moves it under its
final name, so a reader sees the whole file or none, and an error (or a kill) mid-way
leaves no partial file under the final name. The temporary is removed on any error.

What happens when the final name is taken:

* ``overwrite=True``: the new file replaces it (``os.replace``, atomic on POSIX and Windows);
* else, ``numbered=True`` (the default): the file lands under the first free name of
  :func:`unique_path` (``a.csv`` -> ``a-1.csv``, ``a-2.csv``...);
* else FileExistsError, and the existing file is untouched.

Without ``overwrite`` the final name is claimed with a hard link (``os.link``), which fails
when the name exists, so two writers racing for one name never clobber each other: the
second gets the next number (or FileExistsError). On file systems without hard links the
name is reserved with ``O_CREAT | O_EXCL`` first, then replaced.

An operating-system error while writing (a full disk, ``EFBIG`` past a file-size limit)
reaches the caller as an :class:`OSError` whose ``filename`` is the wanted name, never the
temporary's. :func:`check_writable_dir` lets a command refuse an output folder it cannot
write to before it starts its work, and :func:`output_stem` names outputs after an input.
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path
from typing import IO, Any

__all__ = [
    "AtomicWriter",
    "OutputDirError",
    "atomic_write",
    "check_writable_dir",
    "output_stem",
    "unique_path",
    "write_bytes",
    "write_text",
]

#: suffixes of image files besides histoview's own (``histoview.io.image``), stripped by
#: :func:`output_stem` (the longest that matches: ``.ome.btf`` before ``.btf``).
OTHER_IMAGE_SUFFIXES = (
    ".ome.btf",
    ".btf",
    ".ndpi",
    ".scn",
    ".bif",
    ".qptiff",
    ".mrxs",
    ".vsi",
    ".jp2",
    ".bmp",
    ".gif",
    ".webp",
    ".dcm",
)


def unique_path(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """``path`` itself when it is free (or ``overwrite``), else the first free name with
    ``-1``, ``-2``... before the last two suffixes at most, ``.ome.tif`` counting as one
    (``x.graph.geojson`` -> ``x-1.graph.geojson``, ``x.amil.ome.tif`` ->
    ``x-1.amil.ome.tif``; an input's own dots stay with its name: ``case.1.amil.json`` ->
    ``case.1-1.amil.json``, never a name that reads as another input's).

    A name is only a guess until something is written under it: :func:`atomic_write`
    claims it without a race.
    """
    path = Path(path)
    if overwrite or not os.path.lexists(path):
        return path
    # ".ome.tif" is one suffix: a run's map and its JSON get the same number
    # (x.amil.ome.tif -> x-1.amil.ome.tif beside x-1.amil.json)
    ome = "".join(path.suffixes[-2:]).lower() in (".ome.tif", ".ome.tiff")
    suffixes = "".join(path.suffixes[-3:] if ome else path.suffixes[-2:])
    base = path.name[: len(path.name) - len(suffixes)] if suffixes else path.name
    i = 1
    while os.path.lexists(cand := path.with_name(f"{base}-{i}{suffixes}")):
        i += 1
    return cand


def _exists_error(path: Path) -> FileExistsError:
    return FileExistsError(f"{path} exists; choose another name (or pass overwrite=True)")


class AtomicWriter:
    """Context manager behind :func:`atomic_write`; :attr:`path` is where the file landed."""

    def __init__(
        self,
        path: str | os.PathLike,
        mode: str | None = "wb",
        *,
        overwrite: bool = False,
        numbered: bool = True,
        encoding: str | None = "utf-8",
        newline: str | None = None,
    ) -> None:
        if mode not in (None, "w", "wt", "wb"):
            raise ValueError(f"mode must be 'w', 'wt', 'wb' or None, not {mode!r}")
        self.target = Path(path)
        self.mode = mode
        self.overwrite = overwrite
        self.numbered = numbered
        self.encoding = encoding if mode in ("w", "wt") else None
        self.newline = newline if mode in ("w", "wt") else None
        #: the final name: a guess while the block runs, where the file is after it
        self.path = self.target
        #: the temporary file, in the target's folder (gone after the block)
        self.tmp: Path | None = None
        self._file: IO[Any] | None = None

    def __enter__(self) -> IO[Any] | Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        if not self.overwrite:
            if not self.numbered and os.path.lexists(self.target):
                raise _exists_error(self.target)
            self.path = unique_path(self.target)
        self._file = self._create_tmp()
        if self.mode is None:
            self._file.close()  # the caller's library writes by name
            self._file = None
            return self.tmp
        return self._file

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._finish()
        except OSError as err:
            named = self._named(err)
            if named is err:
                raise
            raise named from err
        finally:
            if self._file is not None and not self._file.closed:
                try:  # closing flushes what is buffered: on a full disk that fails again
                    self._file.close()
                except OSError:
                    pass
            self._discard()
        if isinstance(exc, OSError) and (named := self._named(exc)) is not exc:
            raise named from exc
        full = _storage_full(exc)
        if full is not None and full is not exc:
            # A library's clean-up failed on the full disk and hid the error that matters
            # (Matplotlib's PDF writer raises AttributeError 'Stream' object has no
            # attribute 'pos' while handling EFBIG): the user gets the full disk.
            raise self._named(full) from exc

    def _finish(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        else:
            _fsync_file(self.tmp)
        self._commit()
        _fsync_dir(self.path.parent)

    def _named(self, err: OSError) -> OSError:
        """``err`` naming the wanted file: an error of the write itself (``EFBIG``, ``ENOSPC``,
        or a library's partial write: NumPy's ``tofile`` says "10000 requested and 956
        written") carries no file name, or the temporary's, which the user never asked for."""
        if err.filename not in (None, str(self.tmp)):
            return err
        if err.errno is not None:
            return OSError(err.errno, err.strerror or os.strerror(err.errno), str(self.target))
        if type(err) is not OSError:  # a library's own error type: keep it
            return err
        named = OSError(f"cannot write {self.target}: {err}")
        named.filename = str(self.target)
        return named

    def _create_tmp(self) -> IO[Any]:
        # Not mkstemp: its 0600 mode would stay on the final file, where a plain open()
        # gives 0666 minus the umask; opened by name, so ``file.name`` is a path (tifffile
        # needs one). The target's suffix is kept for libraries that pick the format from
        # the name.
        mode = "xb" if self.mode in (None, "wb") else "x"
        while True:
            name = f".{self.target.name}.{secrets.token_hex(4)}.tmp{self.target.suffix}"
            self.tmp = self.target.with_name(name)
            try:
                return open(self.tmp, mode, encoding=self.encoding, newline=self.newline)
            except FileExistsError:
                continue

    def _commit(self) -> None:
        if self.overwrite:
            os.replace(self.tmp, self.path)
            return
        while True:
            try:
                _link_new(self.tmp, self.path)
                return
            except FileExistsError:
                if not self.numbered:
                    raise _exists_error(self.path) from None
                self.path = unique_path(self.target)  # taken since the guess: the next one

    def _discard(self) -> None:
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)


def atomic_write(
    path: str | os.PathLike,
    mode: str | None = "wb",
    *,
    overwrite: bool = False,
    numbered: bool = True,
    encoding: str | None = "utf-8",
    newline: str | None = None,
) -> AtomicWriter:
    """Write a file whole or not at all, without replacing one that exists (module docstring).

    Use as a context manager; it yields an open file object on the temporary file (``"wb"``
    binary, ``"w"`` text with ``encoding`` and ``newline`` as in :func:`open`), or, with
    ``mode=None``, the temporary's path (same folder, same suffix) for libraries that
    write by name. After the block the writer's ``path`` is the name the file got::

        writer = atomic_write(out / "metrics.csv", "w", newline="")
        with writer as fh:
            csv.writer(fh).writerows(rows)
        print(writer.path)  # metrics.csv, or metrics-1.csv if that existed

    An exception inside the block leaves no file under any final name. Missing parent
    folders are created.

    Args:
        path: the wanted name.
        mode: ``"wb"``, ``"w"`` (or ``"wt"``) or None.
        overwrite: replace an existing ``path``.
        numbered: without ``overwrite``, take the next free numbered name
            (:func:`unique_path`) when ``path`` exists; False raises FileExistsError.
    """
    return AtomicWriter(
        path, mode, overwrite=overwrite, numbered=numbered, encoding=encoding, newline=newline
    )


def write_bytes(
    path: str | os.PathLike, data: bytes, *, overwrite: bool = False, numbered: bool = True
) -> Path:
    """Write ``data`` with :func:`atomic_write`; returns the path written."""
    writer = atomic_write(path, "wb", overwrite=overwrite, numbered=numbered)
    with writer as fh:
        fh.write(data)
    return writer.path


def write_text(
    path: str | os.PathLike,
    text: str,
    *,
    overwrite: bool = False,
    numbered: bool = True,
    encoding: str = "utf-8",
    newline: str | None = None,
) -> Path:
    """Write ``text`` with :func:`atomic_write`; returns the path written."""
    writer = atomic_write(
        path, "w", overwrite=overwrite, numbered=numbered, encoding=encoding, newline=newline
    )
    with writer as fh:
        fh.write(text)
    return writer.path


class OutputDirError(ValueError):
    """An output folder histoview cannot write to; the message names it and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"output folder {path}: {problem}")


def check_writable_dir(path: str | os.PathLike) -> Path:
    """Make sure files can be written in the folder ``path`` (made later if missing).

    For commands to call before their work: a folder that is a file, lies under a file, or
    where (or, when missing, in whose nearest existing parent) nothing can be created is
    refused at once. The check creates and removes a probe file, so it sees what a write
    would see (read-only file systems, access lists, root), not only the permission bits.
    Nothing is left behind; a missing folder is not made.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OutputDirError: (a ValueError) naming the folder and what is wrong.
    """
    path = Path(path)
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if existing.is_symlink() and not existing.exists():
        raise OutputDirError(path, f"{existing} is a broken symbolic link")
    if not existing.is_dir():
        where = "is a file" if existing == path else f"lies under {existing}, which is a file"
        raise OutputDirError(path, f"{where}, not a folder")
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows): the usual limit
        name_max = 255
    missing = path.relative_to(existing).parts if existing != path else ()
    for part in missing:
        if len(os.fsencode(part)) > name_max:
            raise OutputDirError(path, f"the name {part[:40]!r}... is longer than {name_max} bytes")
    probe = existing / f".histoview-write-test.{secrets.token_hex(4)}.tmp"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        where = "" if existing == path else f" (its nearest existing parent {existing})"
        raise OutputDirError(path, f"cannot write files{where}: {reason}") from None
    os.unlink(probe)
    return path


def output_stem(path: str | os.PathLike) -> str:
    """The name outputs of the input ``path`` start with: its file name without its image
    suffix, so inputs that differ anywhere in their names get different outputs
    (``case.1.png`` -> ``case.1``, ``slide.ome.tif`` -> ``slide``, ``x.TIFF`` -> ``x``).

    Only a known image suffix (:mod:`histoview.io.image`'s and :data:`OTHER_IMAGE_SUFFIXES`,
    any case) is removed; any other name is kept whole (``scan.v2`` -> ``scan.v2``).
    """
    from histoview.io.image import PLAIN_SUFFIXES, SUPPORTED_SUFFIXES, TIFF_SUFFIXES

    name = Path(path).name
    known = {*TIFF_SUFFIXES, *PLAIN_SUFFIXES, *SUPPORTED_SUFFIXES, *OTHER_IMAGE_SUFFIXES}
    lower = name.lower()
    for suffix in sorted(known, key=len, reverse=True):
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


#: errors that say the storage is full (a file-size limit, no space, a quota)
_FULL = {errno.EFBIG, errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _storage_full(exc: BaseException | None) -> OSError | None:
    """The first "storage is full" OSError in ``exc`` or the exceptions it was raised while
    handling (``__cause__``/``__context__``), else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FULL:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _link_new(src: Path, dest: Path) -> None:
    """Give ``src``'s file the name ``dest`` (which must not exist) and drop ``src``."""
    try:
        os.link(src, dest)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (FAT, some network shares): reserve, then replace
        os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        try:
            os.replace(src, dest)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
    else:
        os.unlink(src)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make the new name durable too (POSIX); folders cannot be opened on Windows."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
