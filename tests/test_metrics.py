"""Metrics agree with hand computations."""

from __future__ import annotations

import numpy as np
import pytest

from histoview.training.metrics import (
    average_precision,
    classification_metrics,
    roc_auc,
    youden_threshold,
)


def test_binary_metrics_by_hand():
    y = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    p1 = np.array([0.1, 0.4, 0.6, 0.8, 0.7, 0.3, 0.9, 0.2])
    m = classification_metrics(y, np.c_[1 - p1, p1], ["benign", "malignant"])
    # predictions: 0 0 1 1 1 0 1 0 -> TP=3 FN=1 TN=3 FP=1
    assert m["confusion_matrix"] == [[3, 1], [1, 3]]
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["sensitivity"] == pytest.approx(0.75) and m["specificity"] == pytest.approx(0.75)
    assert m["gmean"] == pytest.approx(0.75)
    assert m["iba"] == pytest.approx(0.75 * 0.75)  # dominance 0
    # AUC: positives 0.8, 0.7, 0.9 beat all 4 negatives, 0.3 beats 2: 14 of 16 pairs
    assert m["roc_auc"] == pytest.approx(14 / 16)
    assert 0 < m["pr_auc"] <= 1


def test_auc_perfect_and_random_and_degenerate():
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc(y, [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert np.isnan(roc_auc(np.ones(4), [0.1, 0.2, 0.3, 0.4]))
    assert average_precision(y, [0.1, 0.2, 0.8, 0.9]) == pytest.approx(1.0)


def test_youden_threshold_separates():
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.35, 0.4, 0.8, 0.9])
    t = youden_threshold(y, s)
    assert 0.35 < t <= 0.4
    m = classification_metrics(y, np.c_[1 - s, s], threshold=t)
    assert m["accuracy"] == 1.0


def test_multiclass_macro():
    y = np.array([0, 1, 2, 2])
    p = np.eye(3)[[0, 1, 2, 1]]
    m = classification_metrics(y, p)
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert m["balanced_accuracy"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert set(m["per_class"]) == {"class_0", "class_1", "class_2"}
