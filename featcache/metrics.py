"""Evaluation the way the long-tail and MedMNIST literature does it, in one place.

:func:`compute_metrics` takes labels and scores (logits or probabilities) and returns a dict
with ``acc``, ``balanced_acc``, ``macro_f1``, ``auc``, ``many_acc``, ``medium_acc``,
``few_acc`` (fractions in [0, 1]) and ``per_class_acc``.

- ``acc``: fraction of correct predictions. On a class-balanced test set (TFA-LT) this is
  TFA-LT's "total accuracy", the mean over classes.
- ``balanced_acc``: mean per-class recall over the classes present in the test labels.
- ``macro_f1``: scikit-learn's macro F1 over the classes present in the test labels or in
  the predictions (a class absent from both has no defined F1 and is left out; a class
  predicted but absent from the test labels counts with F1 = 0).
- ``auc``: macro one-vs-rest ROC AUC over softmax probabilities, averaged over the classes
  that have both positives and negatives in the test labels (scikit-learn per class).
- ``many_acc``/``medium_acc``/``few_acc``: mean per-class accuracy over the group's classes
  present in the test set (as LIFT's code computes them); groups come from the descriptor
  (TFA-LT) or from training counts (>100, 20–100, <20; :func:`groups_from_counts`).

A class missing from the test set has ``per_class_acc`` NaN and is left out of every mean;
a group with no class in the test set gets NaN (written as ``null`` in JSON).

Calibration (:mod:`featcache.calibration`, single-label only): ``ece`` (top label, 15
equal-width bins), ``brier`` (multi-class, Σ_c (p_c − 1[y = c])², mean over rows) and
``nll`` (mean −log p_y) of the softmax of the scores; NaN for multi-label caches.

Multi-label caches (MedMNIST ChestMNIST): ``acc`` is the accuracy at threshold 0.5 over all
labels (MedMNIST's ACC), ``auc`` the mean ROC AUC over labels, ``balanced_acc`` the mean over
labels of (TPR + TNR)/2, ``macro_f1`` the macro F1 over labels; group figures are NaN.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import f1_score, roc_auc_score

from featcache.calibration import CALIBRATION_KEYS, calibration_metrics

METRIC_KEYS = ("acc", "balanced_acc", "macro_f1", "auc", "many_acc", "medium_acc", "few_acc")
# every figure a run summarises per seed and as mean ± std (accuracy figures, then calibration);
# METRIC_KEYS alone are the ones a grid may select on (higher is better)
SUMMARY_KEYS = METRIC_KEYS + CALIBRATION_KEYS
GROUPS = ("many", "medium", "few")


def groups_from_counts(train_counts: np.ndarray, many: int = 100, few: int = 20) -> dict[str, list[int]]:
    """LIFT's groups by training images per class: many > 100, medium 20–100, few < 20."""
    counts = np.asarray(train_counts)
    return {
        "many": np.flatnonzero(counts > many).tolist(),
        "medium": np.flatnonzero((counts >= few) & (counts <= many)).tolist(),
        "few": np.flatnonzero(counts < few).tolist(),
    }


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``[N, C]`` scores (float64)."""
    z = scores.astype(np.float64) - scores.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _nanmean(values: np.ndarray | list[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else math.nan


def compute_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    *,
    num_classes: int | None = None,
    train_counts: np.ndarray | None = None,
    groups: dict[str, list[int]] | None = None,
) -> dict:
    """All figures for one evaluation. ``labels`` [N] int (or [N, C] {0,1}), ``scores`` [N, C].

    ``labels`` of shape ``[N, 1]`` with ``C > 1`` score columns are class indices (the layout
    of MedMNIST's npz files), not one binary label.

    Groups: ``groups`` (class indices per many/medium/few) if given, else from
    ``train_counts``, else group figures are NaN.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    C = num_classes or scores.shape[1]
    if scores.ndim != 2 or scores.shape[1] != C:
        raise ValueError(f"scores must be [N, {C}], got {scores.shape}")
    if labels.shape[0] != scores.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels but {scores.shape[0]} score rows")
    if labels.ndim == 2 and labels.shape[1] == 1 and C > 1:
        labels = labels[:, 0]  # [N, 1] class indices (MedMNIST's own label layout), not 1 label
    if labels.ndim == 2:
        if labels.shape[1] != C:
            raise ValueError(f"multi-label labels must be [N, {C}] like the scores, got {labels.shape}")
        return _multi_label(labels, scores)
    pred = scores.argmax(1)
    correct = pred == labels
    per_class = np.full(C, np.nan)
    for c in range(C):
        mask = labels == c
        if mask.any():
            per_class[c] = correct[mask].mean()
    if groups is None and train_counts is not None:
        groups = groups_from_counts(train_counts)
    out = {
        "acc": float(correct.mean()) if labels.size else math.nan,
        "balanced_acc": _nanmean(per_class),
        "macro_f1": _macro_f1(labels, pred, C) if labels.size else math.nan,
        "auc": _ovr_auc(labels, softmax(scores)),
    }
    for g in GROUPS:
        members = (groups or {}).get(g, [])
        out[f"{g}_acc"] = _nanmean(per_class[members]) if len(members) else math.nan
    out.update(calibration_metrics(labels, scores) if labels.size
               else dict.fromkeys(CALIBRATION_KEYS, math.nan))
    out["per_class_acc"] = per_class.tolist()
    return out


def _ovr_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Macro one-vs-rest AUC over classes with both positives and negatives (binary: class 1)."""
    C = probs.shape[1]
    classes = [1] if C == 2 else range(C)
    aucs = []
    ranks = None
    for c in classes:
        pos = labels == c
        if pos.any() and (~pos).any():
            if ranks is None:  # average ranks of every class's scores, one sort per column
                ranks = rankdata(probs, axis=0)
            aucs.append(_rank_auc(pos, ranks[:, c]))
    return float(np.mean(aucs)) if aucs else math.nan


def _rank_auc(pos: np.ndarray, ranks: np.ndarray) -> float:
    """ROC AUC from average ranks (Mann-Whitney U / (n+ n-)): sklearn's ``roc_auc_score``
    value, ties counted one half, without its per-call input validation (a grid scores
    thousands of columns)."""
    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _macro_f1(labels: np.ndarray, pred: np.ndarray, C: int) -> float:
    """sklearn's ``f1_score(average="macro", zero_division=0)``: the mean F1 over the classes
    that occur in ``labels`` or ``pred``, from one confusion count."""
    n = max(C, int(labels.max()) + 1, int(pred.max()) + 1)
    true_n = np.bincount(labels, minlength=n)
    pred_n = np.bincount(pred, minlength=n)
    tp = np.bincount(labels[labels == pred], minlength=n)
    present = (true_n + pred_n) > 0
    precision = np.divide(tp, pred_n, out=np.zeros(n), where=pred_n > 0)
    recall = np.divide(tp, true_n, out=np.zeros(n), where=true_n > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(n), where=denom > 0)
    return float(f1[present].mean())


def _multi_label(labels: np.ndarray, scores: np.ndarray) -> dict:
    probs = 1.0 / (1.0 + np.exp(-scores))
    pred = probs > 0.5
    truth = labels.astype(bool)
    aucs, bal = [], []
    for c in range(labels.shape[1]):
        pos = truth[:, c]
        if pos.any() and (~pos).any():
            aucs.append(roc_auc_score(pos, probs[:, c]))
            bal.append((pred[pos, c].mean() + (~pred[~pos, c]).mean()) / 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f1 = f1_score(truth, pred, average="macro", zero_division=0)
    per_label = (pred == truth).mean(0)
    return {
        "acc": float((pred == truth).mean()),
        "balanced_acc": float(np.mean(bal)) if bal else math.nan,
        "macro_f1": float(f1),
        "auc": float(np.mean(aucs)) if aucs else math.nan,
        "many_acc": math.nan,
        "medium_acc": math.nan,
        "few_acc": math.nan,
        **dict.fromkeys(CALIBRATION_KEYS, math.nan),
        "per_class_acc": per_label.tolist(),
    }


def summarize(per_seed: list[dict]) -> dict:
    """Mean and std (population, ddof = 0) over seeds of every key in :data:`SUMMARY_KEYS`
    (accuracy and calibration figures; ``ece_before``/``nll_before``/``brier_before`` and
    ``temperature`` too when the seeds have them, i.e. after temperature scaling).

    Returns ``{key: mean, key_std: std, ...}``; NaN where no seed has a figure.
    """
    out: dict[str, float] = {}
    extra = [k for k in CALIBRATED_EXTRA if any(k in m for m in per_seed)]
    for key in (*SUMMARY_KEYS, *extra):
        vals = np.array([m.get(key, math.nan) for m in per_seed], dtype=np.float64)
        vals = vals[~np.isnan(vals)]
        out[key] = float(vals.mean()) if vals.size else math.nan
        out[f"{key}_std"] = float(vals.std()) if vals.size else math.nan
    return out


# per-seed figures of a run with ``--calibrate temperature``: the fitted T and the figures
# before scaling (``ece``, ``brier``, ``nll`` are then the calibrated ones)
CALIBRATED_EXTRA = ("temperature", "ece_before", "brier_before", "nll_before")


def confusion_matrix(labels: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``[C, C]`` counts, rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    return cm
