"""Dataset layouts and splits that never leak a patient."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from histoview.training.datasets import detect_layout, discover_dataset, split_samples


def _png(path, value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 48, 3), value, np.uint8)).save(path)


def _fake_breakhis(root):
    names = []
    for group, sub, patients in (
        ("B", "A", ["22549AB", "22549CD", "14134"]),
        ("B", "F", ["21998"]),
        ("M", "DC", ["2523", "4372", "13412"]),
        ("M", "LC", ["15570", "14134"]),
    ):
        for slide in patients:
            for mag in (40, 100):
                for seq in (1, 2):
                    name = f"SOB_{group}_{sub}-14-{slide}-{mag}-{seq:03d}.png"
                    _png(root / name)
                    names.append(name)
    return names


def test_breakhis_layout_tasks_and_patients(tmp_path):
    _fake_breakhis(tmp_path)
    assert detect_layout(tmp_path) == "breakhis"
    ds = discover_dataset({"root": tmp_path, "task": "binary"})
    assert ds.classes == ("benign", "malignant") and ds.has_patients
    assert len(ds.samples) == 36
    # 22549AB and 22549CD are one patient; 14134 appears under two subtypes
    assert len({s.patient for s in ds.samples}) == 7
    sub = discover_dataset(
        {"type": "breakhis", "root": tmp_path, "task": "subtype", "magnification": "100X"}
    )
    assert len(sub.classes) == 8 and len(sub.samples) == 18
    assert {s.magnification for s in sub.samples} == {100}
    summary = sub.summary()
    assert summary["magnifications"] == {"100X": 18} and summary["patients"] == 7


def test_patient_split_never_leaks(tmp_path):
    _fake_breakhis(tmp_path)
    ds = discover_dataset({"root": tmp_path, "task": "binary"})
    for seed in range(5):
        parts = split_samples(ds.samples, (0.5, 0.25, 0.25), seed=seed)
        patients = [{s.patient for s in part} for part in parts]
        assert (
            not (patients[0] & patients[1])
            and not (patients[0] & patients[2])
            and not (patients[1] & patients[2])
        )
        assert sum(len(p) for p in parts) == len(ds.samples)
    # an image-level split does leak here, which is why it is only an option
    leaks = 0
    for seed in range(5):
        tr, va, te = split_samples(ds.samples, (0.5, 0.25, 0.25), seed=seed, by="image")
        leaks += bool({s.patient for s in tr} & {s.patient for s in te})
    assert leaks > 0


def test_bach_layout_and_groupings(tmp_path):
    for cls in ("Normal", "Benign", "InSitu", "Invasive"):
        for i in range(3):
            _png(tmp_path / cls / f"{cls.lower()}{i:03d}.png")
    assert detect_layout(tmp_path) == "bach"
    four = discover_dataset({"root": tmp_path, "task": "4class"})
    assert four.classes == ("normal", "benign", "in_situ", "invasive") and len(four.samples) == 12
    binary = discover_dataset({"root": tmp_path, "task": "binary"})
    assert [sum(s.label == c for s in binary.samples) for c in (0, 1)] == [6, 6]
    isi = discover_dataset({"type": "bach", "root": tmp_path, "task": "in_situ_vs_invasive"})
    assert len(isi.samples) == 6 and not isi.has_patients


def test_folder_layout_and_errors(tmp_path):
    for cls in ("tumour", "stroma"):
        for i in range(2):
            _png(tmp_path / cls / f"{i}.jpg")
    ds = discover_dataset({"root": tmp_path})
    assert ds.layout == "folder" and set(ds.classes) == {"tumour", "stroma"}
    img, mpp = ds.samples[0].load()
    assert img.shape == (32, 48, 3) and mpp is None
    with pytest.raises(FileNotFoundError):
        discover_dataset({"root": tmp_path / "missing"})
    with pytest.raises(ValueError, match="task"):
        discover_dataset({"type": "breakhis", "root": tmp_path, "task": "nonsense"})


def test_phantom_dataset_generates_on_the_fly():
    ds = discover_dataset({"type": "phantom", "task": "in_situ_vs_invasive", "n_per_class": 2})
    assert ds.classes == ("in_situ", "invasive") and len(ds.samples) == 4
    img, mpp = ds.samples[0].load()
    assert img.shape == (460, 700, 3) and mpp == 0.5


@pytest.mark.realdata
def test_real_breakhis_folder(breakhis_dir):
    ds = discover_dataset({"root": breakhis_dir, "task": "binary"})
    assert ds.layout == "breakhis" and len(ds.samples) > 50
    tr, va, te = split_samples(ds.samples, seed=0)
    assert not ({s.patient for s in tr} & {s.patient for s in te})
