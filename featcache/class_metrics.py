"""Per-class figures, binary rates and bootstrap confidence intervals of a run's test rows.

:mod:`featcache.metrics` computes the headline figures of one evaluation; this module adds
what a paper's supplementary tables need, for every run (:class:`featcache.runs.RunWriter`
calls :func:`seed_extras` per seed and :func:`write_extras` once):

- :func:`per_class_table`: precision, recall, F1, one-vs-rest ROC AUC and support per class
  (scikit-learn's ``precision_recall_fscore_support(..., zero_division=0)`` and
  ``roc_auc_score`` per class, from one confusion count), written as ``per_class.parquet`` /
  ``.csv`` (mean and std over seeds; ``support`` the mean test rows per seed) and ``per_class_seeds.parquet`` (one row per seed ×
  class).
- :func:`binary_rates`: sensitivity (recall of class 1, the positive class, as AUC takes it)
  and specificity (recall of class 0) for two-class sets, recorded per seed and as mean ± std
  in ``metrics.json``.
- :func:`bootstrap_ci`: percentile 95 % confidence intervals of ``acc``, ``balanced_acc``,
  ``macro_f1`` and ``auc`` (and, on two-class sets, ``sensitivity`` and ``specificity``) from
  resampling each seed's test rows with replacement (Efron & Tibshirani,
  *An Introduction to the Bootstrap*, 1993, §13.3), seeded, for each seed and for the mean
  over seeds that ``metrics.json`` reports (each replicate resamples every seed's rows
  independently and averages the seeds' figures). A replicate's ``auc`` is
  :func:`featcache.metrics.compute_metrics`'s, from the softmax probabilities of its rows
  (macro one-vs-rest over the classes it drew with positives and negatives; two classes:
  the AUC of class 1); replicates where it is undefined (two classes: a class not drawn)
  are left out of its interval, as for sensitivity and specificity. Multi-label sets
  (``labels`` ``[N, C]``) resample rows too and score each replicate with
  :func:`featcache.metrics.compute_metrics`'s multi-label figures (threshold 0.5 on the
  sigmoid per label; AUC and balanced accuracy over the labels a replicate drew with
  positives and negatives): slower, scikit-learn per label and replicate.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl

from featcache import knobs
from featcache.metrics import _macro_f1, _ovr_auc, _rank_auc, compute_metrics, softmax

BOOTSTRAP_METRICS = ("acc", "balanced_acc", "macro_f1", "auc")
BINARY_METRICS = ("sensitivity", "specificity")  # two-class sets: bootstrapped too
PER_CLASS_FIGURES = ("precision", "recall", "f1", "auc")


def _prf(labels: np.ndarray, pred: np.ndarray, C: int) -> tuple[np.ndarray, ...]:
    """Per-class precision, recall, F1 and support from one count (0 where undefined)."""
    support = np.bincount(labels, minlength=C)[:C]
    pred_n = np.bincount(pred, minlength=C)[:C]
    tp = np.bincount(labels[labels == pred], minlength=C)[:C]
    precision = np.divide(tp, pred_n, out=np.zeros(C), where=pred_n > 0)
    recall = np.divide(tp, support, out=np.zeros(C), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(C), where=denom > 0)
    return precision, recall, f1, support


def per_class_table(labels: np.ndarray, scores: np.ndarray,
                    class_names: list[str] | None = None) -> pl.DataFrame:
    """One row per class: ``class``, ``name``, ``support`` (test rows of the class),
    ``precision``, ``recall``, ``f1`` (argmax predictions; 0 where undefined, as
    scikit-learn's ``zero_division=0``) and ``auc`` (one-vs-rest ROC AUC of the softmax
    probability; NaN when the class has no positive or no negative row). ``labels`` [N] int
    and ``scores`` [N, C]; multi-label ``labels`` [N, C] are scored per label at probability
    0.5 (sigmoid), as :func:`featcache.metrics.compute_metrics` does."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    C = scores.shape[1]
    names = list(class_names) if class_names is not None and len(class_names) == C else [str(c) for c in range(C)]
    if labels.ndim == 2 and labels.shape[1] == 1 and C > 1:
        labels = labels[:, 0]
    rows: dict[str, list] = {"class": list(range(C)), "name": names}
    if labels.ndim == 2:  # multi-label: each label a binary problem
        probs = 1.0 / (1.0 + np.exp(-scores))
        truth, pred = labels.astype(bool), probs > 0.5
        tp = (truth & pred).sum(0)
        support, pred_n = truth.sum(0), pred.sum(0)
        precision = np.divide(tp, pred_n, out=np.zeros(C), where=pred_n > 0)
        recall = np.divide(tp, support, out=np.zeros(C), where=support > 0)
        denom = precision + recall
        f1 = np.divide(2 * precision * recall, denom, out=np.zeros(C), where=denom > 0)
        auc = [_auc(truth[:, c], probs[:, c]) for c in range(C)]
    else:
        precision, recall, f1, support = _prf(labels, scores.argmax(1), C)
        probs = softmax(scores)
        auc = [_auc(labels == c, probs[:, c]) for c in range(C)]
    rows.update(support=[int(s) for s in support], precision=precision.tolist(),
                recall=recall.tolist(), f1=f1.tolist(), auc=auc)
    return pl.DataFrame(rows, schema={"class": pl.Int64, "name": pl.String, "support": pl.Int64,
                                      **{k: pl.Float64 for k in PER_CLASS_FIGURES}})


def _auc(pos: np.ndarray, prob: np.ndarray) -> float:
    if not pos.any() or pos.all():
        return math.nan
    from scipy.stats import rankdata

    return _rank_auc(pos, rankdata(prob))


def binary_rates(labels: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Sensitivity TP / (TP + FN) and specificity TN / (TN + FP) of a two-class problem, class
    1 positive; NaN where a class has no test row."""
    labels, pred = np.asarray(labels), np.asarray(pred)
    pos, neg = labels == 1, labels == 0
    return {"sensitivity": float((pred[pos] == 1).mean()) if pos.any() else math.nan,
            "specificity": float((pred[neg] == 0).mean()) if neg.any() else math.nan}


def seed_extras(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Figures added to one seed's metrics: sensitivity and specificity on two-class sets."""
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    if labels.ndim != 1 or scores.shape[1] != 2:
        return {}
    return binary_rates(labels, scores.argmax(1))


def _point(labels: np.ndarray, pred: np.ndarray, C: int) -> dict[str, float]:
    """acc, balanced_acc, macro_f1 exactly as :func:`featcache.metrics.compute_metrics`."""
    support = np.bincount(labels, minlength=C)
    tp = np.bincount(labels[labels == pred], minlength=C)
    present = support > 0
    return {"acc": float((labels == pred).mean()),
            "balanced_acc": float((tp[present] / support[present]).mean()),
            "macro_f1": _macro_f1(labels, pred, C)}


def bootstrap_ci(evals: list[tuple[np.ndarray, np.ndarray]], n: int, *, seed: int = 0,
                 level: float = 0.95) -> dict:
    """Percentile bootstrap intervals over test rows (see the module docstring).

    ``evals``: one ``(labels [N], scores [N, C])`` per seed. Returns ``{"n", "level", "seed",
    "method", "<metric>_ci": [lo, hi] of the mean over seeds, "per_seed": [{"<metric>_ci":
    [lo, hi]}, ...]}`` for the metrics of :data:`BOOTSTRAP_METRICS` and, when ``C == 2``,
    :data:`BINARY_METRICS` (those and the two-class ``auc`` over the replicates that drew
    rows of both classes); the same ``seed`` gives the same intervals. ``auc`` ranks each
    replicate's probabilities again: about 1 ms per replicate and seed at 2,000 rows × 7
    classes, some 15-20 times the argmax figures (``benchmarks/bench_bootstrap.py``)."""
    if n < 1:
        raise ValueError(f"bootstrap needs n >= 1 replicates, got {n}")
    rng = np.random.default_rng(seed)
    C = max(int(s.shape[1]) for _, s in evals)
    if all(np.asarray(lab).ndim == 2 for lab, _ in evals):
        return _bootstrap_multi_label(evals, n, rng, seed, level)
    keys = BOOTSTRAP_METRICS + (BINARY_METRICS if C == 2 else ())
    preds = [(np.asarray(lab), np.asarray(sc).argmax(1), softmax(np.asarray(sc))) for lab, sc in evals]
    reps = np.empty((n, len(preds), len(keys)))  # [B, seeds, metrics]
    for b in range(n):  # one draw per seed and replicate, in this order: the seed fixes every interval
        for s, (lab, pred, probs) in enumerate(preds):
            idx = rng.integers(0, lab.size, lab.size)
            point = _point(lab[idx], pred[idx], C)
            point["auc"] = _ovr_auc(lab[idx], probs[idx])  # NaN where no class is scorable
            if C == 2:  # NaN where a replicate drew no row of a class
                point.update(binary_rates(lab[idx], pred[idx]))
            reps[b, s] = [point[k] for k in keys]
    return _intervals(reps, keys, n, seed, level)


def _bootstrap_multi_label(evals: list[tuple[np.ndarray, np.ndarray]], n: int, rng: np.random.Generator,
                           seed: int, level: float) -> dict:
    """:func:`bootstrap_ci` for multi-label ``[N, C]`` labels: each replicate's rows scored by
    :func:`featcache.metrics.compute_metrics` (its multi-label figures)."""
    keys = BOOTSTRAP_METRICS
    data = [(np.asarray(lab), np.asarray(sc)) for lab, sc in evals]
    reps = np.empty((n, len(data), len(keys)))  # [B, seeds, metrics]
    for b in range(n):
        for s, (lab, sc) in enumerate(data):
            idx = rng.integers(0, lab.shape[0], lab.shape[0])
            point = compute_metrics(lab[idx], sc[idx])
            reps[b, s] = [point[k] for k in keys]
    return _intervals(reps, keys, n, seed, level)


def _intervals(reps: np.ndarray, keys: tuple[str, ...], n: int, seed: int, level: float) -> dict:
    """Percentile intervals of replicate figures ``reps`` ``[B, seeds, metrics]``: of the mean
    over seeds and per seed, each over the replicates where the figure is defined."""
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2

    def interval(values: np.ndarray) -> list[float]:
        values = values[~np.isnan(values)]  # replicates where the figure is defined
        if not values.size:
            return [math.nan, math.nan]
        return [float(np.percentile(values, lo)), float(np.percentile(values, hi))]

    out: dict = {"n": n, "level": level, "seed": seed,
                 "method": "percentile; test rows resampled with replacement, per seed"}
    mean = reps.mean(1)  # [B, metrics]: the mean over seeds metrics.json reports
    for m, key in enumerate(keys):
        out[f"{key}_ci"] = interval(mean[:, m])
    out["per_seed"] = [{f"{key}_ci": interval(reps[:, s, m]) for m, key in enumerate(keys)}
                       for s in range(reps.shape[1])]
    return out


def write_extras(out_dir: Path, evals: list[tuple[int, np.ndarray, np.ndarray]],
                 class_names: list[str], per_seed: list[dict], *, bootstrap: int = knobs.BOOTSTRAP,
                 bootstrap_seed: int = knobs.BOOTSTRAP_SEED) -> dict:
    """Write ``per_class.parquet``/``.csv`` and ``per_class_seeds.parquet`` of ``evals``
    (``(seed, labels, scores)`` per seed) into ``out_dir``; return what ``metrics.json``
    gains: sensitivity/specificity mean and std (two-class sets, from ``per_seed``) and,
    when ``bootstrap`` > 0, ``bootstrap`` (:func:`bootstrap_ci`, single-label sets)."""
    doc: dict = {}
    if not evals:
        return doc
    frames = [per_class_table(lab, sc, class_names).with_columns(pl.lit(seed, pl.Int64).alias("seed"))
              for seed, lab, sc in evals]
    seeds = pl.concat(frames).select("seed", "class", "name", "support", *PER_CLASS_FIGURES)
    seeds.write_parquet(out_dir / "per_class_seeds.parquet")
    summary = (seeds.with_columns(pl.col(PER_CLASS_FIGURES).fill_nan(None))
               .group_by("class", "name", maintain_order=True)
               .agg(pl.col("support").mean(),
                    *(pl.col(k).mean() for k in PER_CLASS_FIGURES),
                    *(pl.col(k).std(ddof=0).alias(f"{k}_std") for k in PER_CLASS_FIGURES))
               .sort("class"))
    summary.write_parquet(out_dir / "per_class.parquet")
    summary.write_csv(out_dir / "per_class.csv")
    for key in ("sensitivity", "specificity"):
        vals = np.array([m[key] for m in per_seed if m.get(key) is not None], dtype=float)
        vals = vals[~np.isnan(vals)]
        if any(key in m for m in per_seed):
            doc[key] = float(vals.mean()) if vals.size else math.nan
            doc[f"{key}_std"] = float(vals.std()) if vals.size else math.nan
    if bootstrap:
        doc["bootstrap"] = bootstrap_ci([(lab, sc) for _, lab, sc in evals], bootstrap, seed=bootstrap_seed)
    return doc
