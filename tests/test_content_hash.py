"""A slide is known by its content: same bytes, same key wherever it lies; new bytes, new key."""

from __future__ import annotations

import hashlib
import os

import pytest

from histoview.io.content_hash import content_hash


def test_same_bytes_same_key_anywhere(tmp_path):
    a = tmp_path / "a.tif"
    a.write_bytes(b"slide bytes" * 1000)
    (tmp_path / "copy").mkdir()
    b = tmp_path / "copy" / "renamed.tif"
    b.write_bytes(a.read_bytes())
    assert content_hash(a) == content_hash(b) == hashlib.sha256(a.read_bytes()).hexdigest()


def test_rewritten_file_gets_a_new_key(tmp_path):
    a = tmp_path / "a.tif"
    a.write_bytes(b"one")
    first = content_hash(a)
    a.write_bytes(b"two")
    os.utime(a, ns=(1, 1))  # even with an old modification time the size differs
    assert content_hash(a) != first


def test_mrxs_counts_its_data_folder(tmp_path):
    slide = tmp_path / "s.mrxs"
    slide.write_bytes(b"index")
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "Data0000.dat").write_bytes(b"tiles")
    first = content_hash(slide)
    (tmp_path / "s" / "Data0000.dat").write_bytes(b"other tiles")
    assert content_hash(slide) != first


def test_missing_file_and_folder_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.svs"):
        content_hash(tmp_path / "nope.svs")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        content_hash(tmp_path)
