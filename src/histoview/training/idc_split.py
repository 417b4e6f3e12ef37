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
) -> tuple[tuple[list, list, list], dict[str, list[str]]]:
    """Split binary-labelled patches by patient as the module docstring says.

    Args:
        samples: objects with ``patient`` (str) and ``label`` (0 or 1).
        fractions: train / validation / test shares of the paired patients.
        seed: shuffles the patients and picks each training patient's subsample.
        one_class_patients: ``"test"`` or ``"exclude"`` (module docstring, item 4).

    Returns:
        ``((train, val, test), patients)``: the three sample lists, and the patient ids of
        each split (``"train"``, ``"val"``, ``"test"``; ``"excluded"`` one-class patients left
        out).

    Raises:
        ValueError: no patient has patches of both classes, or a sample has no patient.
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
    names = {
        "train": sorted(keys[: n - n_val - n_test]),
        "val": sorted(keys[n - n_val - n_test : n - n_test]),
        "test": sorted(keys[n - n_test :]),
        "excluded": [],
    }
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
