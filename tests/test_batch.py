"""histoview.batch without a cluster: inputs, task keys, placing a slide's folder, cleaning up
after killed attempts, the summary table and the progress lines (the cluster runs are in
tests/test_batch_cluster.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from histoview.batch.inputs import InputError, collect_inputs
from histoview.batch.keys import BatchSettings, settings_hash, task_key
from histoview.batch.progress import Progress
from histoview.batch.summary import Summary
from histoview.batch.task import TEMP_DIR, clean_temporaries, place, read_record, run_slide


@pytest.fixture
def slide_folder(tmp_path):
    """A folder as a user has it: slides, a phantom's ground truth, histoview outputs, junk."""
    root = tmp_path / "slides"
    (root / "sub").mkdir(parents=True)
    for name in ("a.tif", "sub/b.svs", "sub/c.ndpi"):
        (root / name).write_bytes(b"slide " + name.encode())
    (root / "a.labels.tif").write_bytes(b"labels")
    (root / "a.phantom.json").write_text("{}")
    (root / "a.amil.ome.tif").write_bytes(b"map")
    (root / "a.amil.json").write_text("{}")
    (root / "notes.txt").write_text("not a slide")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.tif").write_bytes(b"hidden")
    (root / "thumb.png").write_bytes(b"png")
    return root


def test_folder_inputs_are_its_slides_only(slide_folder):
    found = [s.path.relative_to(slide_folder).as_posix() for s in collect_inputs([slide_folder])]
    assert found == ["a.tif", "sub/b.svs", "sub/c.ndpi"]


def test_the_output_folder_is_never_an_input(slide_folder):
    out = slide_folder / "sub"
    found = [s.path.name for s in collect_inputs([slide_folder], out_dir=out)]
    assert found == ["a.tif"]


def test_csv_list_resolves_relative_paths_and_keeps_labels(slide_folder, tmp_path):
    listing = slide_folder / "cohort.csv"
    listing.write_text("Path,label\na.tif,benign\nsub/b.svs,\n")
    slides = collect_inputs([listing, slide_folder / "a.tif"])  # a.tif once, with its label
    assert [(s.path, s.label) for s in slides] == [
        (slide_folder / "a.tif", "benign"),
        (slide_folder / "sub" / "b.svs", None),
    ]


def test_csv_errors_name_the_file_and_the_problem(tmp_path):
    no_column = tmp_path / "bad.csv"
    no_column.write_text("file,label\nx.tif,benign\n")
    with pytest.raises(InputError, match=r"bad\.csv: a slide list needs a 'path' column"):
        collect_inputs([no_column])
    missing = tmp_path / "missing.csv"
    missing.write_text("path\nnope.tif\n")
    with pytest.raises(InputError, match=r"missing\.csv: line 2: .*nope\.tif: no such slide"):
        collect_inputs([missing])
    with pytest.raises(InputError, match="no such file or folder"):
        collect_inputs([tmp_path / "absent"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: no slides in this folder"):
        collect_inputs([tmp_path / "empty"])


def test_task_key_follows_content_and_settings(tmp_path):
    a, b = tmp_path / "a.tif", tmp_path / "copy" / "a.tif"
    a.write_bytes(b"same bytes")
    b.parent.mkdir()
    shutil.copy(a, b)
    base = BatchSettings(methods=("amil",))
    ident = base.identity({"amil": "0" * 64})
    digest = settings_hash(ident)
    assert task_key(a, digest) == task_key(b, digest)  # a copy is the same slide
    other = BatchSettings(methods=("amil",), pixel_size_um=0.5).identity({"amil": "0" * 64})
    assert task_key(a, settings_hash(other)) != task_key(a, digest)
    new_weights = base.identity({"amil": "1" * 64})
    assert task_key(a, settings_hash(new_weights)) != task_key(a, digest)
    # how the work is done does not change what is written: same key
    faster = BatchSettings(methods=("amil",), device="cuda", batch_size=64, tile_workers=4)
    assert settings_hash(faster.identity({"amil": "0" * 64})) == digest
    b.write_bytes(b"other bytes")
    assert task_key(b, digest) != task_key(a, digest)


def _finished(tmp_path, name, key, marker):
    folder = tmp_path / TEMP_DIR / f"{name}.{os.getpid()}.{marker}"
    folder.mkdir(parents=True)
    (folder / "map.txt").write_text(marker)
    (folder / "batch.json").write_text(json.dumps({"key": key, "status": "done"}))
    return folder


def test_place_moves_a_whole_folder_and_never_twice(tmp_path):
    final = tmp_path / "s1"
    first = _finished(tmp_path, "s1", "k1", "first")
    assert place(first, final, "k1") == "new"
    assert not first.exists() and (final / "map.txt").read_text() == "first"
    again = _finished(tmp_path, "s1", "k1", "again")  # a retried attempt of a done slide
    assert place(again, final, "k1") == "duplicate"
    assert not again.exists() and (final / "map.txt").read_text() == "first"
    changed = _finished(tmp_path, "s1", "k2", "new-settings")
    assert place(changed, final, "k2") == "replaced"
    assert (final / "map.txt").read_text() == "new-settings"
    assert read_record(final)["key"] == "k2"
    assert list((tmp_path / TEMP_DIR).iterdir()) == []  # the old folder is gone too


def test_clean_temporaries_removes_dead_attempts_only(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        root = tmp_path / TEMP_DIR
        (root / f"s1.{dead.pid}.aaaa").mkdir(parents=True)
        (root / f"s1.{dead.pid}.aaaa" / "part.zarr").mkdir()
        (root / f"s.2.{live.pid}.bbbb").mkdir()
        (root / "s3.old.cccc").mkdir()
        assert clean_temporaries(tmp_path) == 2
        assert [p.name for p in root.iterdir()] == [f"s.2.{live.pid}.bbbb"]
    finally:
        live.kill()
        live.wait()
    assert clean_temporaries(tmp_path) == 1 and not root.exists()


def test_a_failing_slide_is_a_failed_record_not_an_exception(tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00" + b"\x07" * 500)
    settings = BatchSettings(methods=("amil",), device="cpu", tile_workers=0).to_dict()
    record = run_slide(str(bad), "bad", "k", str(tmp_path / "out"), settings, label="benign")
    assert record["status"] == "failed" and record["label"] == "benign"
    assert "bad.tif" in record["error"] and "\n" not in record["error"]
    assert not (tmp_path / "out" / "bad").exists()
    assert not any((tmp_path / "out" / TEMP_DIR).iterdir())


def test_summary_is_rewritten_whole_and_read_back(tmp_path):
    summary = Summary(tmp_path, ["s1", "s2"])
    summary.add({"name": "s2", "slide": "/x/s2.tif", "status": "failed", "error": "bad"})
    summary.add(
        {
            "name": "s1",
            "slide": "/x/s1.tif",
            "status": "done",
            "prediction": "benign",
            "probabilities": {"benign": 0.9, "malignant": 0.1},
            "methods": ["amil", "gradcam"],
            "key": "k1",
        }
    )
    csv_path, json_path = summary.write()
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "slide,name,label,status,prediction,probabilities,methods,time_s,error,key"
    assert lines[1].startswith("/x/s1.tif,s1,,done,benign,") and "amil;gradcam" in lines[1]
    assert lines[2].startswith("/x/s2.tif,s2,,failed,")
    doc = json.loads(json_path.read_text())
    assert doc["counts"] == {"done": 1, "failed": 1, "skipped": 0}
    assert "not for diagnosis" in doc["notice"]
    assert Summary.load(tmp_path)["s2"]["error"] == "bad"
    assert Summary.load(tmp_path / "nothing-here") == {}


def test_progress_lines_count_rate_and_time_left():
    lines = []
    progress = Progress(4, done=1, write=lines.append)
    progress.start -= 60  # a minute into the run
    progress.finished({"name": "s2", "status": "done", "prediction": "benign", "time_s": 30})
    progress.finished({"name": "s3", "status": "failed", "error": "bad.tif: unreadable"})
    assert lines[0].startswith("[##########----------] 2/4 slides  s2: done (benign) 30.0 s")
    assert "60 slides/h" in lines[0] and "~2 min left" in lines[0]
    assert "3/4 slides  s3: failed: bad.tif: unreadable" in lines[1]


def test_embedded_workers_keep_glibc_memory_trimming_adaptive(monkeypatch):
    """Dask's nanny would start workers with MALLOC_TRIM_THRESHOLD_=65536, which slows the
    slide engine by a quarter or more (freed tensors handed back and paged in again)."""
    from histoview.batch.cluster import batch_client

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    with batch_client(workers=1, gpus=[]) as client:
        seen = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
    assert list(seen.values()) == [None]
    assert "MALLOC_TRIM_THRESHOLD_" not in os.environ  # nor set in this process
