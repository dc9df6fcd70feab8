"""``logreg``: CLIP's own linear-probe protocol (Radford et al. 2021, appendix A.3).

The CLIP paper trains its linear probes with "scikit-learn's L-BFGS implementation, with
maximum 1,000 iterations", determines "the L2 regularization strength λ using a
hyperparameter sweep on the validation sets over the range between 10^-6 and 10^6, with 96
logarithmically spaced steps", and for data sets without a validation split "randomly
split[s] the training dataset to perform the hyperparameter search"; to save compute the
sweep is "a parametric binary search that starts with λ = [10^-6, 10^-4, 10^-2, 1, 10^2,
10^4, 10^6] and iteratively halves the interval around the peak until it reaches a
resolution of 8 steps per decade"; the final classifier is refit on training + validation.

Here, per member (one seed's training rows):

1. carve a stratified validation split (``VAL_FRACTION`` of each class, at least one row of
   every class with two or more rows) from the member's training rows, with the member's own
   generator (stream ``val``), so the choice is repeatable;
2. sweep the inverse regularisation strength ``C`` (scikit-learn's parameter; the sweep is
   symmetric in log space, so sweeping C over [1e-6, 1e6] is sweeping λ = 1/C over the same
   range) with CLIP's parametric binary search, each fit multinomial logistic regression by
   L-BFGS (max 1,000 iterations; each fit warm-started from the nearest C already fitted,
   which changes the iterations, not the optimum), scored by balanced accuracy (mean per-class recall) on the
   validation rows — the TFA-LT protocol's metric (mean accuracy over classes on a balanced
   test set); CLIP scores each data set with its own metric;
3. refit on all of the member's training rows with the chosen ``C``.

Validation-free (``fit(..., search=False)``, ``train-head --validation-free``: the realistic
few-shot setting, where a 1-shot split has no rows to carve): no search, ``C =``
:data:`VALIDATION_FREE_C` (1.0, scikit-learn's ``LogisticRegression`` default; CLIP's paper
gives no value without validation), fitted on all training rows.

Two solvers give the same optimum: ``sklearn`` (``LogisticRegression(solver="lbfgs")``,
CLIP's own) and ``torch`` (``torch.optim.LBFGS`` with a strong-Wolfe line search on the same
objective, float64). :data:`DEFAULT_SOLVER` is the faster on an ISIC-sized cache
(README, "CLIP linear probe"). The trained head is a plain linear map ``W f + b``; the
SGD knobs of a member (``lr``, ``epochs``, ``sampler``, ...) are not used, and any loss but
``ce`` is refused.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from featcache.errors import FeatcacheError
from featcache.heads.base import Head, register_head

log = logging.getLogger(__name__)

VAL_FRACTION = 0.2
MAX_ITER = 1000  # CLIP, appendix A.3
START_LOG10_C = (-6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0)  # CLIP's starting grid
STEPS_PER_DECADE = 8  # CLIP's final resolution
SOLVERS = ("sklearn", "torch")
DEFAULT_SOLVER = "sklearn"
VALIDATION_FREE_C = 1.0  # scikit-learn's default C, used when no validation split may be carved


@dataclass
class FitResult:
    """What :meth:`LogRegHead.fit` returns (the shape of ``featcache.heads.training.TrainResult``)."""

    epoch_loss: list[list[float]]  # per member: [final training loss]
    steps: list[int]  # per member: number of L-BFGS fits (sweep + refit)
    seconds: float
    chosen_c: list[float]  # per member


def fit_logreg(x: np.ndarray, y: np.ndarray, num_classes: int, c: float, *,
               solver: str = DEFAULT_SOLVER, max_iter: int = MAX_ITER, tol: float = 1e-4,
               warm: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial L2 logistic regression ``min 1/2 ||W||² + C Σ_i CE(W x_i + b, y_i)`` (bias
    not penalised), by L-BFGS. Returns ``W [C, D]`` and ``b [C]`` over all ``num_classes``
    (a class absent from ``y`` gets weight 0 and bias -inf-like -1e4: never predicted).
    ``warm``: a previous ``(W, b)`` on the same rows to start from (the C search: the optimum
    is unique, only the number of iterations changes).
    """
    present = np.unique(y)
    W = np.zeros((num_classes, x.shape[1]))
    b = np.full(num_classes, -1e4)
    if present.size == 1:  # one class: predict it
        b[present[0]] = 0.0
        return W, b
    if solver == "sklearn":
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter, tol=tol,
                                 warm_start=warm is not None)
        if warm is not None:  # sklearn's own form: one row per present class (binary: one)
            w0, b0 = warm[0][present], warm[1][present]
            clf.coef_ = w0[1:] - w0[:1] if present.size == 2 else w0.copy()
            clf.intercept_ = b0[1:] - b0[:1] if present.size == 2 else b0.copy()
        clf.fit(x, y)
        coef, icpt = clf.coef_, clf.intercept_
        if present.size == 2:  # sklearn's binary form: one logit for the second class
            coef = np.concatenate([-coef / 2, coef / 2])
            icpt = np.concatenate([-icpt / 2, icpt / 2])
    elif solver == "torch":
        start = None if warm is None else np.concatenate([warm[0][present], warm[1][present, None]], 1)
        coef, icpt = _torch_lbfgs(x, np.searchsorted(present, y), present.size, c,
                                  max_iter=max_iter, tol=tol, start=start)
    else:
        from featcache.errors import unknown

        raise unknown("logreg solver", solver, SOLVERS)
    W[present], b[present] = coef, icpt
    return W, b


def _torch_lbfgs(x: np.ndarray, y: np.ndarray, k: int, c: float, *, max_iter: int,
                 tol: float, start: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The same objective as scikit-learn's (scaled by 1/n: mean CE + ||W||²/(2Cn)), float64."""
    X = torch.as_tensor(x, dtype=torch.float64)  # [n, D]
    Y = torch.as_tensor(y, dtype=torch.int64)
    n, d = X.shape
    w = torch.zeros(k, d + 1, dtype=torch.float64)  # [k, D+1], bias last
    if start is not None:
        w.copy_(torch.as_tensor(start))
    w.requires_grad_(True)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=max_iter, history_size=10,
                            tolerance_grad=tol / n, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = torch.addmm(w[:, d], X, w[:, :d].T)  # [n, k]
        loss = torch.nn.functional.cross_entropy(logits, Y) + (w[:, :d] ** 2).sum() / (2 * c * n)
        loss.backward()
        return loss

    opt.step(closure)
    w = w.detach().numpy()
    return w[:, :d], w[:, d]


def balanced_accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``y``."""
    return float(np.mean([(pred[y == k] == k).mean() for k in np.unique(y)]))


def stratified_val(y: np.ndarray, gen: torch.Generator, fraction: float = VAL_FRACTION) -> np.ndarray:
    """A boolean mask of validation rows: ``round(fraction·n_c)`` of each class (at least one
    for every class with two or more rows, never all of a class), drawn from ``gen``."""
    mask = np.zeros(y.shape[0], dtype=bool)
    for k in np.unique(y):
        rows = np.flatnonzero(y == k)
        if rows.size < 2:
            continue
        m = min(max(1, round(fraction * rows.size)), rows.size - 1)
        perm = torch.randperm(rows.size, generator=gen).numpy()
        mask[rows[perm[:m]]] = True
    return mask


def search_c(x: np.ndarray, y: np.ndarray, val: np.ndarray, num_classes: int, *,
             solver: str = DEFAULT_SOLVER) -> tuple[float, dict[float, float]]:
    """CLIP's parametric binary search over log10 C: start at ``START_LOG10_C``, then halve the
    step around the best point until 1/``STEPS_PER_DECADE`` decade. Returns the chosen C and
    every (log10 C -> validation balanced accuracy) tried; ties go to the smaller C."""
    tried: dict[float, float] = {}
    fits: dict[float, tuple[np.ndarray, np.ndarray]] = {}

    def score(e: float) -> float:
        e = round(e, 6)
        if e not in tried:  # warm start from the nearest C already fitted (same rows)
            near = min(fits, key=lambda f: abs(f - e)) if fits else None
            W, b = fit_logreg(x[~val], y[~val], num_classes, 10.0 ** e, solver=solver,
                              warm=fits[near] if near is not None else None)
            fits[e] = (W, b)
            tried[e] = balanced_accuracy((x[val] @ W.T + b).argmax(1), y[val])
        return tried[e]

    for e in START_LOG10_C:
        score(e)
    best = max(sorted(tried), key=lambda e: tried[e])
    step = START_LOG10_C[1] - START_LOG10_C[0]
    while step > 1.0 / STEPS_PER_DECADE + 1e-9:
        step /= 2
        for e in (best - step, best + step):
            if START_LOG10_C[0] <= e <= START_LOG10_C[-1]:
                score(e)
        best = max(sorted(tried), key=lambda e: tried[e])
    return 10.0 ** best, tried


@register_head("logreg")
class LogRegHead(Head):
    """``logits = W f + b`` fitted by CLIP's linear-probe protocol (see the module docstring)."""

    solver = DEFAULT_SOLVER

    def init_params(self, g: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        m = self.members[g]
        if m.loss != "ce":
            raise FeatcacheError(
                f"Head 'logreg' is L-BFGS logistic regression (cross-entropy), got --loss "
                f"{m.loss!r}; use --loss ce, or --head linear for other losses.")
        if m.sampler != "instance":
            raise FeatcacheError(
                f"Head 'logreg' fits on every training row once (CLIP's protocol), got "
                f"--sampler {m.sampler!r}; use --sampler instance.")
        return {"weight": torch.zeros(self.num_classes, self.in_dim),  # [C, D]
                "bias": torch.zeros(self.num_classes)}  # [C]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [G, B, D] -> [G, B, C]
        self.check_input(x)
        return self.linear(x)

    def fit(self, feats: torch.Tensor, labels: torch.Tensor, pools: list[torch.Tensor], *,
            solver: str | None = None, search: bool = True) -> FitResult:
        """Fit every member on its pool ``feats[pool]`` (C chosen on a carved validation split,
        then refit on the whole pool; ``search=False``: C = :data:`VALIDATION_FREE_C`, no
        validation rows); writes the weights in place."""
        if labels.dim() != 1:
            raise FeatcacheError("Head 'logreg' needs single-label data; multi-label caches "
                                 "train with --head linear --loss bce.")
        solver = solver or self.solver
        t0 = time.perf_counter()
        losses, steps, chosen = [], [], []
        for g, pool in enumerate(pools):
            x = feats[pool].double().cpu().numpy()  # [n, D]
            y = labels[pool].cpu().numpy()
            if not search:
                c, tried = VALIDATION_FREE_C, {}
            else:
                val = stratified_val(y, self.members[g].generator("val"))
                if val.sum() == 0 or np.unique(y[~val]).size < 2:
                    raise FeatcacheError(
                        f"Head 'logreg': seed {self.members[g].seed}'s training rows are too few "
                        "to carve a validation split for choosing C (every class needs two rows); "
                        "pass --validation-free (fixed C = 1) for few-shot runs.")
                c, tried = search_c(x, y, val, self.num_classes, solver=solver)
            W, b = fit_logreg(x, y, self.num_classes, c, solver=solver)
            with torch.no_grad():
                self.weight[g] = torch.as_tensor(W, dtype=self.weight.dtype)
                self.bias[g] = torch.as_tensor(b, dtype=self.bias.dtype)
            logits = torch.as_tensor(x @ W.T + b)
            ce = torch.nn.functional.cross_entropy(logits, torch.as_tensor(y)).item()
            log.info("logreg member %d: C = %.3g (val balanced acc %.4f, %d fits)", g, c,
                     max(tried.values()) if tried else math.nan, len(tried) + 1)
            losses.append([ce if math.isfinite(ce) else math.nan])
            steps.append(len(tried) + 1)
            chosen.append(c)
        return FitResult(losses, steps, time.perf_counter() - t0, chosen)
