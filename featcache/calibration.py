"""Calibration: how far a classifier's probabilities can be trusted, and post-hoc temperature scaling.

One home for the maths (:mod:`featcache.metrics` reports these figures for every run, the run
directory's ``reliability.png`` (:func:`featcache.plots.reliability_figure`) and
``featcache report`` draw from :func:`reliability_bins`):

- **ECE** (:func:`ece`): expected calibration error of the top-label probability in ``M``
  equal-width bins (default 15), Guo et al., "On Calibration of Modern Neural Networks"
  (ICML 2017) §2: bin m holds the rows with confidence in ((m−1)/M, m/M] (the first bin also
  takes confidence 0), and ECE = Σ_m |B_m|/n · |acc(B_m) − conf(B_m)|.
- **Brier score** (:func:`brier`): the multi-class form of Brier (1950),
  mean over rows of Σ_c (p_c − 1[y = c])² (in [0, 2]; for two classes it is twice
  scikit-learn's ``brier_score_loss`` of the positive class).
- **NLL** (:func:`nll`): mean over rows of −log p_y (natural log), scikit-learn's ``log_loss``;
  computed from logits with a log-softmax, so no probability is clipped.
- **Temperature scaling** (:func:`fit_temperature`): Guo et al. §4.2: one scalar T > 0 fitted
  to minimise the NLL of softmax(z / T) on held-out (validation) rows, never on test. The
  argmax, hence accuracy, is unchanged for every T.

All functions take logits ``[n, C]`` (any real scores whose softmax is the prediction) and
integer labels ``[n]``; probabilities are computed in float64.
"""

from __future__ import annotations

import logging
import math

import numpy as np

log = logging.getLogger(__name__)

ECE_BINS = 15
CALIBRATION_KEYS = ("ece", "brier", "nll")
T_BOUNDS = (1e-2, 1e2)  # the temperature search range (log-uniform), generous for CLIP's 1/τ = 100


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of ``[n, C]`` logits, float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / T), ``[n, C]`` float64."""
    return np.exp(log_softmax(np.asarray(logits, dtype=np.float64) / temperature))


def reliability_bins(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Per bin of top-label confidence: ``edges`` [M+1], ``acc``, ``conf`` (NaN where empty),
    ``count`` [M], and ``ece``. ``probs`` are probabilities ``[n, C]`` (rows sum to 1)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    conf = probs.max(1)
    correct = (probs.argmax(1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # bin m (0-based) holds confidence in (edges[m], edges[m+1]]; confidence 0 goes to bin 0
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(which, weights=correct, minlength=bins) / count
        mean_conf = np.bincount(which, weights=conf, minlength=bins) / count
    n = max(int(count.sum()), 1)
    ece_value = float(np.nansum(count * np.abs(acc - mean_conf)) / n) if labels.size else math.nan
    return {"edges": edges, "acc": acc, "conf": mean_conf, "count": count, "ece": ece_value}


def ece(labels: np.ndarray, logits: np.ndarray, bins: int = ECE_BINS, temperature: float = 1.0) -> float:
    """Expected calibration error (top label, ``bins`` equal-width bins) of softmax(logits / T)."""
    return reliability_bins(labels, probabilities(logits, temperature), bins)["ece"]


def brier(labels: np.ndarray, logits: np.ndarray, temperature: float = 1.0) -> float:
    """Multi-class Brier score: mean over rows of Σ_c (p_c − 1[y = c])²."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return math.nan
    p = probabilities(logits, temperature)
    p[np.arange(labels.size), labels] -= 1.0
    return float((p**2).sum(1).mean())


def nll(labels: np.ndarray, logits: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood −log p_y of softmax(logits / T) (natural log)."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return math.nan
    lp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature)
    return float(-lp[np.arange(labels.size), labels].mean())


def calibration_metrics(labels: np.ndarray, logits: np.ndarray, temperature: float = 1.0) -> dict:
    """``{"ece", "brier", "nll"}`` of softmax(logits / T) against ``labels`` ``[n]``."""
    return {"ece": ece(labels, logits, temperature=temperature),
            "brier": brier(labels, logits, temperature),
            "nll": nll(labels, logits, temperature)}


def fit_temperature(labels: np.ndarray, logits: np.ndarray) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T) on these (validation) rows.

    NLL(z / T) is convex in 1/T, so its minimum over log T is found by a bounded Brent search
    (scipy) over :data:`T_BOUNDS`; T = 1 is kept if the search does not beat it, so the fitted
    temperature never raises the NLL of the rows it was fitted on. Argmax is unchanged.
    """
    from scipy.optimize import minimize_scalar

    labels = np.asarray(labels)
    if labels.size == 0:
        raise ValueError("fit_temperature needs at least one row")
    z = np.asarray(logits, dtype=np.float64)
    lo, hi = (math.log(b) for b in T_BOUNDS)
    res = minimize_scalar(lambda s: nll(labels, z, math.exp(s)), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-6})
    t = math.exp(float(res.x))
    if not nll(labels, z, t) < nll(labels, z, 1.0):
        t = 1.0
    log.info("temperature scaling: T = %.4g on %d validation rows", t, labels.size)
    return t

