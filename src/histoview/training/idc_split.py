"""A patient-level split of IDC patches that leaves a classifier nothing to learn from who
the patient is.

**The confound.** In the IDC patches (:mod:`histoview.preprocessing.idc`) a patient's slide
has its own stain, scanner settings and tissue; many patients contribute patches of one
class only. In the development sample (``../shared/data/idc``) the non-IDC patches come from
four patients (8863, 8864, 8865, 8913) and the IDC patches from eleven, eight of them with IDC
patches only. Trained on all of them, a classifier can score well by recognising the
patients (their colour and texture) instead of carcinoma: "looks like 8975" means IDC.

**The design** (:func:`within_patient_split`):

1. Patients are never shared between splits (the split is by patient).
2. Only *paired* patients, those with patches of both classes, are trained on; each
   training patient gives as many non-IDC as IDC patches (its larger class is subsampled at
   random, seeded, to the size of its smaller one). Within the training split every
   patient's share of IDC is then 1/2: a patient's appearance carries no information about
   the label, so the only signal left is the tissue inside each patch.
3. Paired patients are shuffled (seeded) into training, validation and test by the split
   fractions (at least one each for validation and test when there are three or more and
   those fractions are above 0). Validation and test patients keep all their patches: they
   are unseen, so their identity cannot help, and their class balance is reported as is.
4. One-class patients go to the test split (``one_class_patients="test"``: they measure
   sensitivity on IDC-only patients and specificity on non-IDC-only ones) or are left out
   (``"exclude"``); never to training or validation.

With the development sample this trains on one or two of the three paired patients: few,
and the split's warnings say so; the full data set (279 patients) gives the design room.

**Named patients** (``split: {test_patients: [...], val_patients: [...]}``). Instead of
fractions, a config can name the held-out patients: those named go to test (or
validation) whatever their classes, every other paired patient is trained on (balanced as
in item 2), the other one-class patients follow item 4. This is how the bundled IDC weights
hold out one paired patient (whose mosaic, with both classes, is the sample image and the
localisation benchmark) and how ``benchmarks/bench_idc.py`` runs leave-one-patient-out
folds over the paired patients.

The samples are any objects with ``patient`` and ``label`` attributes (the training layer's
:class:`~histoview.training.datasets.Sample`); the order within each split follows the input.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

#: ``balance`` choices of an IDC dataset
BALANCE_CHOICES = ("within-patient", "none")
#: ``one_class_patients`` choices
ONE_CLASS_CHOICES = ("test", "exclude")


def _counts(members: list) -> tuple[int, int]:
    ones = sum(1 for m in members if m.label == 1)
    return len(members) - ones, ones


def within_patient_split(
    samples: Sequence[Any],
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    *,
    seed: int = 0,
    one_class_patients: str = "test",
    test_patients: Sequence[str] | None = None,
    val_patients: Sequence[str] | None = None,
) -> tuple[tuple[list, list, list], dict[str, list[str]]]:
    """Split binary-labelled patches by patient as the module docstring says.

    Args:
        samples: objects with ``patient`` (str) and ``label`` (0 or 1).
        fractions: train / validation / test shares of the paired patients.
        seed: shuffles the patients and picks each training patient's subsample.
        one_class_patients: ``"test"`` or ``"exclude"`` (module docstring, item 4).
        test_patients, val_patients: patients held out by name (module docstring, "Named
            patients"); with either, ``fractions`` are not used.

    Returns:
        ``((train, val, test), patients)``: the three sample lists, and the patient ids of
        each split (``"train"``, ``"val"``, ``"test"``; ``"excluded"`` one-class patients left
        out).

    Raises:
        ValueError: no patient has patches of both classes, a sample has no patient, a
            named patient is not in the data or named twice, or no paired patient is left
            to train on.
    """
    if one_class_patients not in ONE_CLASS_CHOICES:
        raise ValueError(
            f"one_class_patients must be one of {ONE_CLASS_CHOICES}, got {one_class_patients!r}"
        )
    groups: dict[str, list] = defaultdict(list)
    for s in samples:
        if s.patient is None:
            raise ValueError("an IDC patch without a patient: a patient-level split needs them")
        groups[str(s.patient)].append(s)
    paired = sorted(p for p, members in groups.items() if min(_counts(members)) > 0)
    one_class = sorted(p for p in groups if p not in paired)
    if not paired:
        raise ValueError(
            f"no IDC patient has patches of both classes ({len(one_class)} patients with one "
            "class only): trained on them, a classifier could learn who the patient is instead "
            "of carcinoma; add patients with both IDC and non-IDC patches"
        )
    if test_patients is not None or val_patients is not None:
        names = _named(groups, paired, test_patients or (), val_patients or ())
        one_class = [p for p in one_class if p not in names["test"] + names["val"]]
    else:
        names = _by_fractions(paired, fractions, seed)
    if one_class_patients == "test":
        names["test"] = sorted(names["test"] + one_class)
    else:
        names["excluded"] = one_class
    train = []
    for patient in names["train"]:
        train.extend(_balanced(groups[patient], seed, patient))
    chosen = {id(s) for s in train}
    order = [s for s in samples if id(s) in chosen]  # the input's order
    val_set, test_set = set(names["val"]), set(names["test"])
    val = [s for s in samples if str(s.patient) in val_set]
    test = [s for s in samples if str(s.patient) in test_set]
    return (order, val, test), names


def _by_fractions(paired: list[str], fractions: Sequence[float], seed: int) -> dict:
    """Paired patients shuffled (seeded) into train / val / test (module docstring, item 3)."""
    rng = np.random.default_rng(seed)
    keys = list(paired)
    rng.shuffle(keys)
    f = np.asarray(fractions, float) / np.sum(fractions)
    n = len(keys)
    n_val = n_test = 0
    if n >= 3:
        n_val = max(int(round(n * f[1])), 1 if f[1] > 0 else 0)
        n_test = max(int(round(n * f[2])), 1 if f[2] > 0 else 0)
    elif n == 2 and f[2] > 0:
        n_test = 1
    return {
        "train": sorted(keys[: n - n_val - n_test]),
        "val": sorted(keys[n - n_val - n_test : n - n_test]),
        "test": sorted(keys[n - n_test :]),
        "excluded": [],
    }


def _named(groups: dict, paired: list[str], test: Sequence[str], val: Sequence[str]) -> dict:
    """Named held-out patients; every other paired patient trains (module docstring)."""
    test, val = sorted(map(str, test)), sorted(map(str, val))
    unknown = sorted(set(test + val) - set(groups))
    if unknown:
        raise ValueError(
            f"held-out patients not in the data: {', '.join(unknown)} "
            f"(patients: {', '.join(sorted(groups))})"
        )
    if set(test) & set(val) or len(set(test)) < len(test) or len(set(val)) < len(val):
        raise ValueError(f"a patient is named twice in test {test} / validation {val}")
    train = [p for p in paired if p not in test and p not in val]
    if not train:
        raise ValueError(
            f"every patient with both classes ({', '.join(paired)}) is held out: none is "
            "left to train on"
        )
    return {"train": train, "val": val, "test": test, "excluded": []}


def _balanced(members: list, seed: int, patient: str) -> list:
    """As many class-0 as class-1 members, the larger class subsampled at random (seeded by
    the split's seed and the patient, so one patient's pick does not depend on the others)."""
    rng = np.random.default_rng([seed, zlib.crc32(patient.encode())])
    by_label = {0: [m for m in members if m.label == 0], 1: [m for m in members if m.label == 1]}
    k = min(len(v) for v in by_label.values())
    out = []
    for label in (0, 1):
        items = by_label[label]
        picks = np.sort(rng.choice(len(items), size=k, replace=False))
        out.extend(items[i] for i in picks)
    return out
