"""Datasets: recognise a folder's layout, list labelled images, split without leaking patients.

Layouts (:func:`discover_dataset`):

* ``breakhis``: file names ``SOB_<B|M>_<subtype>-<year>-<slide>-<mag>-<seq>.png``
  anywhere below the root (the original folder tree or a flat folder). The
  patient is the number in the slide id (``14-22549AB`` -> ``22549``; letters
  mark several slides of one patient). Tasks ``binary`` (benign, malignant)
  and ``subtype`` (the 8 subtypes); ``magnification`` 40/100/200/400 or all.
* ``bach``: one folder per class named Normal, Benign, InSitu, Invasive (any
  case, ``in_situ`` etc. accepted). Tasks ``4class``, ``binary`` (A-MIL, Patil et
  al., 2019: normal+benign vs in situ+invasive) and ``in_situ_vs_invasive`` (Sureka et
  al., 2020).
  BACH file names carry no patient, so splits are by image (and say so).
* ``folder``: one sub-folder per class, any names.
* ``idc``: invasive-ductal-carcinoma patches ``<patient>_idx5_x<col>_y<row>_class<0|1>.png``
  anywhere below the root (:mod:`histoview.preprocessing.idc`); task ``idc`` (non_idc, idc).
  Split by patient so that patient identity cannot stand for the label
  (:mod:`histoview.training.idc_split`: training on patients with both classes, balanced
  within each; ``balance: none`` uses the plain patient split instead).
* ``phantom``: synthetic phantoms generated on the fly (:mod:`~histoview.preprocessing.phantom`);
  tasks ``binary`` (benign vs in situ+invasive), ``in_situ_vs_invasive`` and ``3class``.
  Each phantom is its own "patient".

Before training, :func:`check_trainable` refuses data with images of fewer than two classes
and :func:`split_warnings` names each split with under :data:`MIN_IMAGES_PER_CLASS` images of
a class (``histoview train`` and the training dock say the same).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
BREAKHIS_RE = re.compile(
    r"^SOB_(?P<group>[BM])_(?P<subtype>[A-Z]+)-(?P<year>\d+)-(?P<slide>\d+[A-Z]*)-(?P<mag>\d+)-(?P<seq>\d+)$"
)
BREAKHIS_SUBTYPES = ("A", "F", "PT", "TA", "DC", "LC", "MC", "PC")
BREAKHIS_SUBTYPE_NAMES = {
    "A": "adenosis",
    "F": "fibroadenoma",
    "PT": "phyllodes_tumor",
    "TA": "tubular_adenoma",
    "DC": "ductal_carcinoma",
    "LC": "lobular_carcinoma",
    "MC": "mucinous_carcinoma",
    "PC": "papillary_carcinoma",
}
BACH_CLASSES = ("normal", "benign", "in_situ", "invasive")
TASKS = {
    "breakhis": ("binary", "subtype"),
    "bach": ("4class", "binary", "in_situ_vs_invasive"),
    "folder": ("folder",),
    "idc": ("idc",),
    "phantom": ("binary", "in_situ_vs_invasive", "3class"),
}


@dataclass(frozen=True)
class Sample:
    """One labelled image: a file, a phantom given by (kind, seed, preset), or a region of
    an IDC patient's mosaic (``(root, IdcRegion)``, :mod:`histoview.training.idc_data`)."""

    label: int
    patient: str | None = None
    path: Path | None = None
    phantom: tuple | None = None
    magnification: int | None = None
    region: tuple | None = None

    @property
    def key(self) -> str:
        if self.region is not None:
            from histoview.training.idc_data import region_key

            return region_key(self.region)
        return (
            str(self.path)
            if self.path is not None
            else "phantom:" + ":".join(map(str, self.phantom))
        )

    def load(self) -> tuple[np.ndarray, float | None]:
        """(H, W, 3) uint8 RGB and its pixel size in micrometres (None if unknown)."""
        if self.phantom is not None:
            from histoview.preprocessing.phantom import make_phantom

            kind, seed, preset = self.phantom
            ph = make_phantom(kind, preset=preset, seed=seed)
            return ph.image, ph.pixel_size_um
        if self.region is not None:
            from histoview.training.idc_data import load_region

            return load_region(self.region)
        from histoview.io import read_rgb

        rgb, src = read_rgb(self.path)
        return rgb, src.pixel_size_um


@dataclass
class Dataset:
    """A discovered dataset: its classes, samples and what the layout offers."""

    layout: str
    task: str
    classes: tuple[str, ...]
    samples: list[Sample]
    root: str | None = None
    has_patients: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """What a user sees before training: classes, counts, patients, magnifications."""
        counts = Counter(s.label for s in self.samples)
        out = {
            "layout": self.layout,
            "task": self.task,
            "root": self.root,
            "classes": list(self.classes),
            "images": len(self.samples),
            "images_per_class": {c: counts.get(i, 0) for i, c in enumerate(self.classes)},
            "patients": len({s.patient for s in self.samples}) if self.has_patients else None,
        }
        for key in ("bag_cells", "bag_stride"):  # IDC regions (training.idc_data)
            if key in self.options:
                out[key] = self.options[key]
        mags = Counter(s.magnification for s in self.samples if s.magnification)
        if mags:
            out["magnifications"] = {f"{m}X": n for m, n in sorted(mags.items())}
        return out


def detect_layout(root: str | Path) -> str:
    """Guess the layout of a folder: ``breakhis``, ``bach`` or ``folder``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset folder not found")
    for i, p in enumerate(root.rglob("SOB_*")):
        if BREAKHIS_RE.match(p.stem):
            return "breakhis"
        if i > 50:
            break
    from histoview.preprocessing.idc import parse_idc_name

    for i, p in enumerate(root.rglob("*_idx5_*")):
        if parse_idc_name(p) is not None:
            return "idc"
        if i > 50:
            break
    subdirs = {_norm(d.name) for d in root.iterdir() if d.is_dir()}
    if {"in_situ", "invasive"} <= subdirs:
        return "bach"
    if len(subdirs) >= 2:
        return "folder"
    if len(subdirs) == 1:
        raise ValueError(
            f"{root}: one class folder only ({next(iter(subdirs))}): training needs "
            "images of at least two classes (one sub-folder per class)"
        )
    raise ValueError(
        f"{root}: cannot recognise the layout (expected BreakHis file names, BACH class "
        "folders, or one sub-folder per class)"
    )


def _norm(name: str) -> str:
    n = re.sub(r"[^a-z]", "", name.lower())
    return {
        "insitu": "in_situ",
        "normal": "normal",
        "benign": "benign",
        "invasive": "invasive",
    }.get(n, name)


def discover_dataset(spec: dict[str, Any]) -> Dataset:
    """Build a :class:`Dataset` from a spec such as ``{"type": "breakhis", "root": ..., "task": "binary"}``.

    ``type`` may be ``auto`` (the default when a root is given) to detect the layout.
    """
    spec = dict(spec)
    kind = spec.pop("type", "auto" if "root" in spec else None)
    if kind == "phantom":
        return _phantom_dataset(**spec)
    if kind == "slide_features":  # bags of cached embeddings: histoview.training.feature_bags
        raise ValueError("data.type slide_features trains an A-MIL head on cached "
                         "embeddings: histoview train CONFIG runs it")  # fmt: skip
    root = Path(spec.pop("root")).expanduser()
    if kind in (None, "auto"):
        kind = detect_layout(root)
        if kind != "breakhis" and spec.get("magnification") not in (None, "all", ""):
            raise ValueError(
                f"{root}: data.magnification is for BreakHis data; this folder is a {kind} dataset"
            )
        if kind != "breakhis":
            spec.pop("magnification", None)
        if spec.get("task") is None:
            spec.pop("task", None)
    read = dict(breakhis=_breakhis_dataset, bach=_bach_dataset, folder=_folder_dataset)
    if kind in (read := {**read, "idc": _idc_dataset}):
        return read[kind](root, **spec)
    known = "breakhis, bach, folder, idc, phantom, slide_features"
    raise ValueError(f"unknown dataset type {kind!r}; known: {known}")


def _images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _breakhis_dataset(
    root: Path, task: str = "binary", magnification: int | str | None = None
) -> Dataset:
    if task not in TASKS["breakhis"]:
        raise ValueError(f"BreakHis task must be one of {TASKS['breakhis']}, got {task!r}")
    mag = None if magnification in (None, "all", "") else int(str(magnification).rstrip("xX"))
    classes = (
        ("benign", "malignant")
        if task == "binary"
        else tuple(BREAKHIS_SUBTYPE_NAMES[s] for s in BREAKHIS_SUBTYPES)
    )
    samples = []
    for p in _images(root):
        m = BREAKHIS_RE.match(p.stem)
        if not m or (mag is not None and int(m["mag"]) != mag):
            continue
        label = (
            int(m["group"] == "M") if task == "binary" else BREAKHIS_SUBTYPES.index(m["subtype"])
        )
        patient = re.match(r"\d+", m["slide"]).group(0)
        samples.append(Sample(label=label, patient=patient, path=p, magnification=int(m["mag"])))
    if not samples:
        raise ValueError(f"{root}: no BreakHis images found" + (f" at {mag}X" if mag else ""))
    return Dataset(
        "breakhis",
        task,
        classes,
        samples,
        str(root),
        has_patients=True,
        options={"magnification": mag},
    )


def _bach_dataset(root: Path, task: str = "4class") -> Dataset:
    if task not in TASKS["bach"]:
        raise ValueError(f"BACH task must be one of {TASKS['bach']}, got {task!r}")
    by_class = {}
    for d in root.iterdir():
        if d.is_dir() and _norm(d.name) in BACH_CLASSES:
            by_class[_norm(d.name)] = _images(d)
    if task == "4class":
        classes, mapping = BACH_CLASSES, {c: i for i, c in enumerate(BACH_CLASSES)}
    elif task == "binary":
        classes, mapping = (
            ("normal_benign", "in_situ_invasive"),
            {"normal": 0, "benign": 0, "in_situ": 1, "invasive": 1},
        )
    else:
        classes, mapping = ("in_situ", "invasive"), {"in_situ": 0, "invasive": 1}
    samples = [
        Sample(label=mapping[c], path=p)
        for c, paths in sorted(by_class.items())
        if c in mapping
        for p in paths
    ]
    if not samples:
        raise ValueError(f"{root}: no BACH images found in class folders {list(BACH_CLASSES)}")
    return Dataset("bach", task, classes, samples, str(root), has_patients=False)


def _folder_dataset(root: Path, task: str = "folder") -> Dataset:
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    classes = tuple(d.name for d in dirs)
    samples = [Sample(label=i, path=p) for i, d in enumerate(dirs) for p in _images(d)]
    if len(classes) < 2 or not samples:
        raise ValueError(f"{root}: need at least two class folders with images")
    return Dataset("folder", "folder", classes, samples, str(root), has_patients=False)


def _idc_dataset(root: Path, task: str = "idc", **options) -> Dataset:
    from histoview.preprocessing.idc import IDC_CLASSES
    from histoview.training.idc_data import idc_rows

    if task not in TASKS["idc"]:
        raise ValueError(f"IDC task must be one of {TASKS['idc']}, got {task!r}")
    rows, options = idc_rows(root, **options)
    samples = [Sample(**row) for row in rows]
    return Dataset("idc", task, IDC_CLASSES, samples, str(root), has_patients=True, options=options)


def _phantom_dataset(
    task: str = "binary", n_per_class: int = 20, preset: str = "breakhis", seed: int = 0
) -> Dataset:
    if task == "binary":
        classes, kinds = ("benign", "malignant"), [("benign", 0), ("in_situ", 1), ("invasive", 1)]
    elif task == "in_situ_vs_invasive":
        classes, kinds = ("in_situ", "invasive"), [("in_situ", 0), ("invasive", 1)]
    elif task == "3class":
        classes, kinds = (
            ("benign", "in_situ", "invasive"),
            [("benign", 0), ("in_situ", 1), ("invasive", 2)],
        )
    else:
        raise ValueError(f"phantom task must be one of {TASKS['phantom']}, got {task!r}")
    per_kind = Counter(label for _, label in kinds)
    samples = []
    for kind, label in kinds:
        n = int(np.ceil(n_per_class / per_kind[label]))
        for i in range(n):
            s = seed * 1_000_000 + BACH_CLASSES.index(kind) * 100_000 + i
            samples.append(Sample(label=label, patient=f"{kind}-{s}", phantom=(kind, s, preset)))
    return Dataset(
        "phantom",
        task,
        classes,
        samples,
        None,
        has_patients=True,
        options={"n_per_class": n_per_class, "preset": preset, "seed": seed},
    )


def split_samples(
    samples: list[Sample],
    fractions=(0.7, 0.15, 0.15),
    *,
    seed: int = 0,
    by: str = "patient",
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Split into train / validation / test.

    ``by="patient"`` keeps every patient's images in one split (stratified by
    the patient's majority label); samples without a patient count as their
    own patient. ``by="image"`` splits images directly: it LEAKS patients
    across splits and is offered only to reproduce papers that did so.
    """
    if by not in ("patient", "image"):
        raise ValueError(f"split by 'patient' or 'image', got {by!r}")
    rng = np.random.default_rng(seed)
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        key = s.key if by == "image" or s.patient is None else s.patient
        groups[key].append(s)
    strata: dict[int, list[str]] = defaultdict(list)
    for key, members in sorted(groups.items()):
        strata[Counter(m.label for m in members).most_common(1)[0][0]].append(key)
    splits: list[list[Sample]] = [[], [], []]
    f = np.asarray(fractions, float) / np.sum(fractions)
    for label in sorted(strata):
        keys = strata[label]
        rng.shuffle(keys)
        n = len(keys)
        n_val = int(round(n * f[1])) if n >= 3 else 0
        n_test = int(round(n * f[2])) if n >= 3 else 0
        if n >= 3:
            n_val, n_test = max(n_val, 1 if f[1] > 0 else 0), max(n_test, 1 if f[2] > 0 else 0)
        n_train = n - n_val - n_test
        for i, key in enumerate(keys):
            part = 0 if i < n_train else 1 if i < n_train + n_val else 2
            splits[part].extend(groups[key])
    return splits[0], splits[1], splits[2]


#: train / validation / test defaults of a run (a config's ``split`` section overrides them)
DEFAULT_SPLIT = {"by": "patient", "fractions": (0.7, 0.15, 0.15), "seed": 0}
#: fewer images of a class than this in a split: its metrics for that class mean little
MIN_IMAGES_PER_CLASS = 5


def check_trainable(dataset: Dataset) -> None:
    """Raise ValueError unless at least two of ``dataset``'s classes have images.

    A classifier trained on one class learns nothing (every prediction is that class), yet
    a BreakHis folder of benign images only, or a class folder left empty, discovers fine.
    """
    counts = Counter(s.label for s in dataset.samples)
    present = [c for i, c in enumerate(dataset.classes) if counts.get(i)]
    if len(present) >= 2:
        return
    found = ", ".join(f"{c}: {counts.get(i, 0)}" for i, c in enumerate(dataset.classes))
    raise ValueError(
        f"images of {len(present)} class{'es' if len(present) != 1 else ''} only "
        f"({found}): training needs images of at least two classes"
    )


def split_dataset(
    dataset: Dataset,
    split: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], tuple[list[Sample], list[Sample], list[Sample]]]:
    """The split settings (:data:`DEFAULT_SPLIT` updated by ``split``) and train / val / test."""
    settings = {**DEFAULT_SPLIT, **(split or {})}
    idc = dataset.layout == "idc" and dataset.options.get("balance") == "within-patient"
    if idc and settings["by"] == "patient":  # patient identity must not stand for the label
        from histoview.training.idc_split import within_patient_split

        parts, patients = within_patient_split(
            dataset.samples,
            settings["fractions"],
            seed=settings["seed"],
            one_class_patients=dataset.options.get("one_class_patients", "test"),
            test_patients=settings.get("test_patients"),
            val_patients=settings.get("val_patients"),
        )
        return {**settings, "design": "idc-within-patient", "patients": patients}, parts
    if settings.get("test_patients") is not None or settings.get("val_patients") is not None:
        raise ValueError("split.test_patients / val_patients apply to IDC data (type idc)")
    parts = split_samples(
        dataset.samples, settings["fractions"], seed=settings["seed"], by=settings["by"]
    )
    return settings, parts


def split_warnings(
    classes,
    parts,
    *,
    minimum: int = MIN_IMAGES_PER_CLASS,
) -> list[str]:
    """One line per split (train, validation, test) where a class has under ``minimum`` images.

    ``parts`` are the three sample lists of :func:`split_samples`. A test split of 2 or 3
    images per class gives accuracies of 0, 50 or 100 %: the numbers are noise, so say so. An
    empty validation or test split is no such split, not a small one.
    """
    out = []
    for name, samples in zip(("training", "validation", "test"), parts):
        if not samples and name != "training":
            continue  # no such split (a fraction of 0, or no patient named for it)
        counts = Counter(s.label for s in samples)
        few = [(c, counts.get(i, 0)) for i, c in enumerate(classes) if counts.get(i, 0) < minimum]
        if not few:
            continue
        listed = ", ".join(f"{n} of {c}" for c, n in few)
        which = "that class" if len(few) == 1 else "these classes"
        why = (
            f"too few to learn {which} from"
            if name == "training"
            else f"its metrics for {which} mean little"
        )
        out.append(f"{name} split too small: {listed} (under {minimum} images per class); {why}")
    return out
