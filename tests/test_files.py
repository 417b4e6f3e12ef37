"""The one output writer (histoview.io.files): whole or absent, numbered, never clobbering."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from histoview.io import files
from histoview.io.files import atomic_write, unique_path, write_bytes, write_text


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_unique_path_numbers_before_all_suffixes(tmp_path):
    target = tmp_path / "x.graph.geojson"
    assert unique_path(target) == target
    target.write_text("mine")
    assert unique_path(target) == tmp_path / "x-1.graph.geojson"
    (tmp_path / "x-1.graph.geojson").write_text("mine too")
    assert unique_path(target) == tmp_path / "x-2.graph.geojson"
    assert unique_path(target, overwrite=True) == target
    (tmp_path / "noext").write_text("")
    assert unique_path(tmp_path / "noext") == tmp_path / "noext-1"
    # a slide run's map and summary are numbered alike (the map was x.amil-1.ome.tif)
    for name in ("x.amil.ome.tif", "x.amil.json"):
        (tmp_path / name).write_text("an earlier run")
    assert unique_path(tmp_path / "x.amil.ome.tif") == tmp_path / "x-1.amil.ome.tif"
    assert unique_path(tmp_path / "x.amil.json") == tmp_path / "x-1.amil.json"
    (tmp_path / "m.ome.tif").write_text("")
    assert unique_path(tmp_path / "m.ome.tif") == tmp_path / "m-1.ome.tif"


def test_writes_text_and_binary_and_makes_folders(tmp_path):
    writer = atomic_write(tmp_path / "sub" / "a.csv", "w", newline="")
    with writer as fh:
        fh.write("a,b\r\nµ,2\n")
    assert writer.path == tmp_path / "sub" / "a.csv"
    assert writer.path.read_bytes() == "a,b\r\nµ,2\n".encode()
    assert write_bytes(tmp_path / "b.bin", b"\x00\x01\n") == tmp_path / "b.bin"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01\n"
    assert _names(tmp_path) == ["b.bin", "sub"]  # no temporary left behind


def test_existing_files_get_a_number_and_stay_untouched(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("mine")
    assert write_text(target, "new") == tmp_path / "metrics-1.json"
    assert write_text(target, "newer") == tmp_path / "metrics-2.json"
    assert target.read_text() == "mine"
    assert (tmp_path / "metrics-1.json").read_text() == "new"
    assert _names(tmp_path) == ["metrics-1.json", "metrics-2.json", "metrics.json"]


def test_overwrite_replaces_and_numbered_false_refuses(tmp_path):
    target = tmp_path / "a.png"
    target.write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="a.png"):
        write_bytes(target, b"new", numbered=False)
    assert target.read_bytes() == b"mine"
    assert write_bytes(target, b"new", overwrite=True) == target
    assert target.read_bytes() == b"new"
    assert _names(tmp_path) == ["a.png"]


@pytest.mark.parametrize("exists", [False, True])
@pytest.mark.parametrize("overwrite", [False, True])
def test_an_error_midway_leaves_no_partial_file(tmp_path, exists, overwrite):
    target = tmp_path / "report.pdf"
    if exists:
        target.write_bytes(b"mine")
    seen = {}
    writer = atomic_write(target, "wb", overwrite=overwrite)
    with pytest.raises(RuntimeError, match="midway"):
        with writer as fh:
            fh.write(b"half of it")
            fh.flush()
            seen["tmp"] = Path(fh.name)
            assert seen["tmp"] == writer.tmp
            assert seen["tmp"].parent == tmp_path and seen["tmp"].read_bytes() == b"half of it"
            assert not (tmp_path / "report-1.pdf").exists()
            raise RuntimeError("failed midway")
    assert not seen["tmp"].exists()  # the temporary is removed
    assert _names(tmp_path) == (["report.pdf"] if exists else [])
    if exists:
        assert target.read_bytes() == b"mine"


def test_nothing_is_visible_under_the_final_name_while_writing(tmp_path):
    target = tmp_path / "map.tif"
    with atomic_write(target) as fh:
        fh.write(b"x" * 1000)
        assert not target.exists()
    assert target.read_bytes() == b"x" * 1000


def test_path_mode_hands_a_temporary_name_with_the_suffix(tmp_path):
    writer = atomic_write(tmp_path / "shot.png", None)
    with writer as tmp:
        assert isinstance(tmp, Path) and tmp.parent == tmp_path and tmp.suffix == ".png"
        tmp.write_bytes(b"png bytes")  # as a library writing by name would
    assert writer.path.read_bytes() == b"png bytes"
    assert _names(tmp_path) == ["shot.png"]
    with pytest.raises(OSError):
        with atomic_write(tmp_path / "gone.png", None) as tmp:
            tmp.unlink()  # a library that failed and removed its file
    assert _names(tmp_path) == ["shot.png"]


def test_files_get_the_usual_permissions(tmp_path):
    if os.name != "posix":
        pytest.skip("POSIX permission bits")
    umask = os.umask(0o022)
    os.umask(umask)
    path = write_bytes(tmp_path / "a.json", b"{}")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_name_taken_while_writing_is_never_clobbered(tmp_path):
    target = tmp_path / "a.csv"
    writer = atomic_write(target, "w")
    with writer as fh:
        fh.write("second")
        target.write_text("first")  # another program took the name meanwhile
    assert target.read_text() == "first"
    assert writer.path == tmp_path / "a-1.csv" and writer.path.read_text() == "second"
    with pytest.raises(FileExistsError):
        with atomic_write(tmp_path / "b.csv", "w", numbered=False) as fh:
            fh.write("second")
            (tmp_path / "b.csv").write_text("first")
    assert (tmp_path / "b.csv").read_text() == "first"
    assert _names(tmp_path) == ["a-1.csv", "a.csv", "b.csv"]


def test_without_hard_links_the_name_is_reserved_exclusively(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError("no hard links on this file system")

    monkeypatch.setattr(files.os, "link", no_links)
    target = tmp_path / "a.txt"
    assert write_text(target, "one") == target and target.read_text() == "one"
    assert write_text(target, "two") == tmp_path / "a-1.txt"
    assert target.read_text() == "one" and _names(tmp_path) == ["a-1.txt", "a.txt"]


def test_racing_writers_each_get_their_own_name(tmp_path):
    target = tmp_path / "out.json"
    barrier = threading.Barrier(8)
    paths = []

    def write(i):
        writer = atomic_write(target, "w")
        with writer as fh:
            fh.write(str(i))
            barrier.wait()  # all guessed the same free name before anyone commits
        paths.append(writer.path)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(paths)) == 8
    assert sorted(p.read_text() for p in paths) == [str(i) for i in range(8)]
    assert len(_names(tmp_path)) == 8


def test_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        atomic_write("x", "a")
