"""The IDC layout on a tiny generated patch folder: names, the mosaic builder and its files,
the dataset and its patient-level split that leaves patient identity nothing to predict."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from histoview.preprocessing.idc import (
    IDC_PIXEL_SIZE_UM,
    TRUTH_IDC,
    TRUTH_NO_PATCH,
    TRUTH_NON_IDC,
    IdcPatch,
    build_mosaic,
    find_idc_patches,
    parse_idc_name,
    read_mosaic,
    write_mosaic,
)
from histoview.training.datasets import detect_layout, discover_dataset, split_dataset
from histoview.training.idc_split import within_patient_split

# patient -> {(col, row): label}: three paired patients, one IDC-only, one non-IDC-only
LAYOUT = {
    "1001": {
        (0, 0): 0,
        (1, 0): 0,
        (2, 0): 1,
        (0, 1): 0,
        (1, 1): 1,
        (2, 1): 1,
        (3, 1): 0,
        (3, 2): 0,  # the last row's only patch, cropped to 42 rows (an edge crop)
    },
    "1002": {(c, r): int(c >= 2) for c in range(4) for r in range(2)},
    "1003": {(0, 0): 0, (1, 0): 0, (2, 0): 0, (3, 0): 0, (0, 1): 1, (1, 1): 1},
    "1004": {(0, 0): 1, (1, 0): 1, (2, 0): 1},
    "1005": {(0, 0): 0, (0, 1): 0, (0, 2): 0},
}
X0, Y0 = 101, 51  # the data set's offsets are 1 more than multiples of 50


def colour(patient: str, col: int, row: int) -> tuple[int, int, int]:
    return (int(patient) % 97 + 10, 40 + 20 * col, 60 + 30 * row)


@pytest.fixture(scope="module")
def idc_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("idc")
    for patient, cells in LAYOUT.items():
        for (col, row), label in cells.items():
            h = 42 if (patient, col, row) == ("1001", 3, 2) else 50  # an edge crop
            patch = np.zeros((h, 50, 3), np.uint8) + np.array(colour(patient, col, row), np.uint8)
            folder = root / patient / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{patient}_idx5_x{X0 + 50 * col}_y{Y0 + 50 * row}_class{label}.png"
            Image.fromarray(patch).save(folder / name)
    (root / "README.txt").write_text("not a patch")
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(root / "other.png")
    return root


def test_names_parse():
    p = parse_idc_name("8863_idx5_x1001_y1051_class0.png")
    assert (p.patient, p.x, p.y, p.label) == ("8863", 1001, 1051, 0)
    for bad in (
        "8863_idx5_x1001_y1051_class2.png",
        "SOB_B_A-14-22549AB-100-001.png",
        "8863_idx5_x1001_y1051_class0.jpg",
        "8863_idx5_x10_class1.png",
    ):
        assert parse_idc_name(bad) is None


def test_find_patches_and_their_folders(idc_dir, tmp_path):
    patches = find_idc_patches(idc_dir)
    assert len(patches) == sum(len(c) for c in LAYOUT.values())
    assert {p.patient for p in patches} == set(LAYOUT)
    wrong = tmp_path / "0"
    wrong.mkdir()
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(wrong / "1_idx5_x1_y1_class1.png")
    with pytest.raises(ValueError, match="in class folder 0 but named class1"):
        find_idc_patches(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(empty / "patch.png")
    with pytest.raises(ValueError, match="no IDC patches found"):
        find_idc_patches(empty)


def test_the_mosaic_puts_every_patch_where_its_name_says(idc_dir):
    mosaic = build_mosaic(find_idc_patches(idc_dir), patient="1001")
    assert mosaic.origin == (X0, Y0) and mosaic.pixel_size_um == IDC_PIXEL_SIZE_UM == 4.0
    assert mosaic.patch_labels.shape == (3, 4)
    assert mosaic.image.shape == (100 + 42, 200, 3)  # trimmed to the edge crop's 42 rows
    for (col, row), label in LAYOUT["1001"].items():
        h = 42 if (col, row) == (3, 2) else 50
        cell = mosaic.image[50 * row : 50 * row + h, 50 * col : 50 * col + 50]
        assert np.all(cell == colour("1001", col, row)), (col, row)
        assert mosaic.patch_labels[row, col] == label
        assert mosaic.tissue[50 * row : 50 * row + h, 50 * col : 50 * col + 50].all()
    assert mosaic.patch_labels[2, 1] == -1 and not mosaic.tissue[100:142, 50:100].any()
    assert np.all(mosaic.image[100:142, 50:100] == 255)  # white where no patch
    assert mosaic.tissue.sum() == 7 * 2500 + 42 * 50
    lm = mosaic.label_map
    assert lm[0, 120] == 1 and lm[0, 0] == 0 and lm[120, 70] == -1
    assert mosaic.idc_mask.sum() == 3 * 2500
    assert mosaic.counts() == {"non_idc": 5, "idc": 3}


def test_mosaic_refusals(idc_dir):
    patches = find_idc_patches(idc_dir)
    with pytest.raises(ValueError, match="patches of 5 patients"):
        build_mosaic(patches)
    with pytest.raises(ValueError, match="no IDC patches of patient 42"):
        build_mosaic(patches, patient="42")
    one = [p for p in patches if p.patient == "1004"]
    off = [*one, IdcPatch("1004", X0 + 25, Y0, 1, one[0].path)]
    with pytest.raises(ValueError, match="off the 50-pixel grid"):
        build_mosaic(off)
    with pytest.raises(ValueError, match="two patches at"):
        build_mosaic([*one, IdcPatch("1004", one[0].x, one[0].y, 0, one[0].path)])


def test_mosaic_files_open_with_their_pixel_size_and_truth(idc_dir, tmp_path):
    from histoview.io import open_image

    mosaic = build_mosaic(find_idc_patches(idc_dir), patient="1001")
    paths = write_mosaic(mosaic, tmp_path / "1001")
    with open_image(paths["image"]) as src:
        assert src.pixel_size_um == pytest.approx(4.0) and src.pixel_size_source == "file"
        assert np.array_equal(np.asarray(src.read_level(0)), mosaic.image)
    with open_image(paths["truth"]) as src:
        truth = np.asarray(src.read_level(0))
        assert src.pixel_size_um == pytest.approx(4.0)
    assert truth[0, 0] == TRUTH_NON_IDC and truth[0, 120] == TRUTH_IDC
    assert truth[120, 70] == TRUTH_NO_PATCH
    meta = json.loads(paths["meta"].read_text())
    assert meta["patient"] == "1001" and "estimate" in meta["pixel_size_basis"]
    assert meta["patch_counts"] == {"non_idc": 5, "idc": 3} and "CC0" in meta["citation"]
    back = read_mosaic(tmp_path / "1001.tif")
    assert np.array_equal(back.image, mosaic.image)
    assert np.array_equal(back.label_map, mosaic.label_map)
    with pytest.raises(FileExistsError):
        write_mosaic(mosaic, tmp_path / "1001")


def test_the_dataset_is_found_by_type_and_by_layout(idc_dir):
    assert detect_layout(idc_dir) == "idc"
    for spec in ({"type": "idc", "root": str(idc_dir)}, {"root": str(idc_dir)}):
        ds = discover_dataset(spec)
        assert ds.layout == "idc" and ds.classes == ("non_idc", "idc") and ds.has_patients
        assert ds.summary()["patients"] == 5
        labels = Counter(label for cells in LAYOUT.values() for label in cells.values())
        assert ds.summary()["images_per_class"] == {"non_idc": labels[0], "idc": labels[1]}
        assert labels[0] == 16 and labels[1] == 12


def test_the_split_gives_patient_identity_nothing_to_predict(idc_dir):
    ds = discover_dataset({"type": "idc", "root": str(idc_dir)})
    settings, (train, val, test) = split_dataset(ds, {"fractions": [0.34, 0.33, 0.33]})
    patients = settings["patients"]
    assert settings["design"] == "idc-within-patient"
    splits = [{s.patient for s in part} for part in (train, val, test)]
    assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])
    assert splits[0] == set(patients["train"]) and len(splits[0]) == 1
    assert splits[0] <= {"1001", "1002", "1003"}  # only patients with both classes train
    assert {"1004", "1005"} <= splits[2]  # one-class patients are only tested on
    for patient in splits[0]:  # as many non-IDC as IDC patches per training patient
        counts = Counter(s.label for s in train if s.patient == patient)
        assert counts[0] == counts[1] > 0
    for part, names in ((val, patients["val"]), (test, patients["test"])):  # all their patches
        assert len(part) == sum(len(LAYOUT[p]) for p in names)
    again = split_dataset(ds, {"fractions": [0.34, 0.33, 0.33]})[1]
    assert [s.key for s in again[0]] == [s.key for s in train]  # deterministic
    excluded, names = within_patient_split(ds.samples, seed=0, one_class_patients="exclude")
    assert names["excluded"] == ["1004", "1005"]
    assert not {"1004", "1005"} & {s.patient for part in excluded for s in part}
    plain = discover_dataset({"type": "idc", "root": str(idc_dir), "balance": "none"})
    settings, _ = split_dataset(plain, None)
    assert "design" not in settings  # the plain patient split


def test_no_paired_patient_is_refused_by_reason(idc_dir):
    ds = discover_dataset({"type": "idc", "root": str(idc_dir)})
    one_class = [s for s in ds.samples if s.patient in ("1004", "1005")]
    with pytest.raises(ValueError, match="learn who the patient is instead of carcinoma"):
        within_patient_split(one_class)


def test_a_model_trains_on_the_layout_with_stain_normalisation(idc_dir, tmp_path, one_torch_thread):
    from histoview.models.sidecar import sidecar_problem
    from histoview.training.run import train_from_config

    cfg = {
        "model": "test_cnn",
        "data": {"type": "idc", "root": str(idc_dir)},
        "split": {"fractions": [0.34, 0.33, 0.33]},
        "stain": {"method": "reinhard", "on_no_tissue": "keep"},
        "train": {"epochs": 1, "batch_size": 4, "device": "cpu"},
        "output_dir": str(tmp_path / "run"),
    }
    result = train_from_config(cfg)
    meta = json.loads(result["checkpoint"].with_suffix(".json").read_text())
    assert sidecar_problem(meta) is None
    split = meta["data"]["split"]
    assert split["design"] == "idc-within-patient" and {"1004", "1005"} <= set(
        split["patients"]["test"]
    )
    assert meta["pixel_size_um"] == 4.0 and meta["stain_normalisation"]["method"] == "reinhard"


@pytest.mark.realdata
def test_the_development_sample_lays_out_and_splits_as_documented():
    from conftest import shared_data_dir

    ds = discover_dataset({"root": str(shared_data_dir("idc"))})
    assert ds.layout == "idc" and ds.summary()["patients"] == 12
    patches = find_idc_patches(ds.root)
    non_idc = {s.patient for s in ds.samples if s.label == 0}
    assert non_idc == {"8863", "8864", "8865", "8913"}  # the imbalance the split is built for
    for patient in sorted({p.patient for p in patches}):
        mosaic = build_mosaic(patches, patient=patient)  # every patient on its 50-px grid
        assert mosaic.counts()["idc"] + mosaic.counts()["non_idc"] == sum(
            p.patient == patient for p in patches
        )
    settings, (train, _, test) = split_dataset(ds, None)
    assert set(settings["patients"]["train"]) <= {"8863", "8864", "8865"}
    counts = Counter(s.label for s in train)
    assert counts[0] == counts[1] > 0
    assert {"8913", "8975"} <= {s.patient for s in test}
