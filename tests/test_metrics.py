"""Metrics: known values, missing classes, groups, multi-label."""

from __future__ import annotations

import math

import numpy as np
import pytest

from featcache.metrics import compute_metrics, groups_from_counts, summarize


def _scores(pred: list[int], C: int) -> np.ndarray:
    s = np.zeros((len(pred), C))
    s[np.arange(len(pred)), pred] = 5.0
    return s


def test_known_values() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    pred = [0, 0, 0, 1, 1, 0, 2, 1]
    m = compute_metrics(labels, _scores(pred, 3), groups={"many": [0], "medium": [1], "few": [2]})
    assert m["acc"] == pytest.approx(5 / 8)
    assert m["per_class_acc"] == pytest.approx([0.75, 0.5, 0.5])
    assert m["balanced_acc"] == pytest.approx((0.75 + 0.5 + 0.5) / 3)
    assert (m["many_acc"], m["medium_acc"], m["few_acc"]) == pytest.approx((0.75, 0.5, 0.5))
    f1 = [2 * 3 / (2 * 3 + 1 + 1), 2 * 1 / (2 + 2 + 1), 2 * 1 / (2 + 0 + 1)]
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    assert 0 <= m["auc"] <= 1


def test_class_missing_from_the_test_set_is_left_out() -> None:
    labels = np.array([0, 0, 1, 1])  # class 2 absent
    m = compute_metrics(labels, _scores([0, 0, 1, 0], 3), groups={"many": [0], "medium": [1], "few": [2]})
    assert math.isnan(m["per_class_acc"][2])
    assert m["balanced_acc"] == pytest.approx(0.75)
    assert math.isnan(m["few_acc"])  # the group has no class in the test set
    assert m["many_acc"] == 1.0 and m["medium_acc"] == 0.5
    assert np.isfinite(m["auc"])


def test_perfect_scores_give_auc_one_and_groups_from_counts() -> None:
    labels = np.repeat(np.arange(3), 4)
    m = compute_metrics(labels, _scores(labels.tolist(), 3), train_counts=np.array([500, 50, 5]))
    assert m["auc"] == 1.0 and m["macro_f1"] == 1.0
    assert groups_from_counts(np.array([500, 100, 20, 19])) == {"many": [0], "medium": [1, 2], "few": [3]}
    assert m["few_acc"] == 1.0


def test_multi_label() -> None:
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    scores = np.array([[3.0, -3], [-3, 3], [3, -3], [-3, -3]])
    m = compute_metrics(labels, scores)
    assert m["acc"] == pytest.approx(7 / 8)
    assert m["auc"] == pytest.approx(np.mean([1.0, 0.75]))
    assert math.isnan(m["few_acc"])


def test_summarize_mean_and_std() -> None:
    s = summarize([{"acc": 0.5}, {"acc": 0.7}])
    assert s["acc"] == pytest.approx(0.6) and s["acc_std"] == pytest.approx(0.1)
    assert math.isnan(s["auc"])


def test_auc_and_macro_f1_equal_sklearn() -> None:
    from sklearn.metrics import f1_score, roc_auc_score

    from featcache.metrics import _ovr_auc, softmax

    rng = np.random.default_rng(0)
    for C, n in ((2, 50), (7, 300), (5, 40)):
        labels = rng.integers(0, C, n)
        labels[:C] = np.arange(C)
        scores = np.round(rng.normal(size=(n, C)), 1)  # rounded: ties in the scores
        scores[labels == 0, 1] += 0.5
        probs = softmax(scores)
        classes = [1] if C == 2 else range(C)
        expected = np.mean([roc_auc_score(labels == c, probs[:, c]) for c in classes])
        assert abs(_ovr_auc(labels, probs) - expected) < 1e-12
        pred = scores.argmax(1)
        got = compute_metrics(labels, scores, num_classes=C)["macro_f1"]
        assert abs(got - f1_score(labels, pred, average="macro", zero_division=0)) < 1e-12
        pred[:] = 0  # a class never predicted, and one predicted but absent from the labels
        few = labels[labels != C - 1]
        got = compute_metrics(few, np.eye(C)[pred[: few.size] + 1], num_classes=C)["macro_f1"]
        assert abs(got - f1_score(few, pred[: few.size] + 1, average="macro", zero_division=0)) < 1e-12


def test_labels_n_by_1_are_class_indices_not_multi_label() -> None:
    """MedMNIST's npz labels are [N, 1]; they must give the figures of the same labels as [N]
    (before: the multi-label path, which failed inside scikit-learn for C > 1 scores)."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 60)
    scores = rng.normal(size=(60, 4)) + np.eye(4)[labels]
    flat = compute_metrics(labels, scores)
    column = compute_metrics(labels[:, None], scores)
    for key in ("acc", "balanced_acc", "macro_f1", "auc"):
        assert column[key] == pytest.approx(flat[key])
    with pytest.raises(ValueError, match="multi-label labels must be"):
        compute_metrics(np.zeros((5, 3), dtype=int), np.zeros((5, 4)))
