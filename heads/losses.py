"""Losses for long-tailed classification, in a registry (``--loss``).

Every loss maps batched logits ``[G, B, C]`` and labels ``[G, B]`` to per-sample losses
``[G, B]``; the trainer takes each member's masked mean. Knobs are ``[G]`` tensors so that
every member of a batched run has its own (``gamma``, ``la_tau``, ``cb_beta``), and class
priors ``[G, C]`` come from each member's own training rows.

- ``ce``: cross-entropy.
- ``focal``: −(1 − p_y)^γ log p_y (Lin et al. 2017; DESIGN.md §1: γ = 2). γ = 0 is CE.
- ``la``: logit-adjusted CE(z + τ·log π) (Menon et al. 2021; DESIGN.md §2: τ = 1). τ = 0 is CE.
- ``bs``: balanced softmax CE(z + log n_c) (Ren et al. 2020).
- ``cb``: class-balanced CE, each sample weighted by (1 − β)/(1 − β^{n_y}), weights
  normalised to sum to C (Cui et al. 2019; β = 0.9999).
- ``bce``: binary cross-entropy over labels, for multi-label caches (labels ``[G, B, C]``).

:func:`posthoc_adjust` is post-hoc logit adjustment, an evaluation option: z − τ·log π.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from featcache.registry import Registry


@dataclass(frozen=True)
class ClassPrior:
    """Per-member class statistics of the training rows: counts and log prior, ``[G, C]``."""

    counts: torch.Tensor  # [G, C] float
    log_prior: torch.Tensor  # [G, C]

    @classmethod
    def from_counts(cls, counts: torch.Tensor) -> ClassPrior:
        """Build from ``[G, C]`` (or ``[C]``) counts; empty classes get a tiny prior, not −inf."""
        counts = counts.float()
        if counts.dim() == 1:
            counts = counts[None]
        prior = counts.clamp_min(1e-3) / counts.sum(-1, keepdim=True).clamp_min(1.0)
        return cls(counts=counts, log_prior=prior.log())


LossFn = Callable[[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], ClassPrior], torch.Tensor]
LOSSES: Registry[LossFn] = Registry("loss")
MULTI_LABEL_LOSSES = ("bce",)


def log_softmax(logits: torch.Tensor) -> torch.Tensor:  # [G, B, C] -> [G, B, C] (a view)
    """``logits.log_softmax(-1)`` computed with the classes as the OUTER dimension.

    On the CPU, log-softmax over a short innermost dimension (C = 7 classes) runs one row at a
    time: ~0.5 ms for a grid's [64, 128, 7] step, as long as the matrix product itself. Over
    the outer dimension of a ``[C, G·B]`` copy it is vectorised across rows (~12x faster),
    forward and backward; the values are the same up to float rounding.
    """
    if logits.shape[-1] > 64:  # wide rows: the innermost kernel is the fast one
        return logits.log_softmax(-1)
    return logits.movedim(-1, 0).contiguous().log_softmax(0).movedim(0, -1)


def _ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # [G,B,C],[G,B] -> [G,B]
    logp = log_softmax(logits)
    return -logp.gather(-1, labels[..., None]).squeeze(-1)


@LOSSES.register("ce")
def cross_entropy(logits, labels, knobs, prior):  # noqa: ANN001, ANN201
    """Cross-entropy."""
    return _ce(logits, labels)


@LOSSES.register("focal")
def focal(logits, labels, knobs, prior):  # noqa: ANN001, ANN201
    """Focal loss −(1 − p_y)^γ log p_y with per-member γ (``knobs['gamma']`` [G])."""
    logp = log_softmax(logits).gather(-1, labels[..., None]).squeeze(-1)  # [G, B]
    gamma = knobs["gamma"][:, None]
    return -((1 - logp.exp()).clamp_min(0) ** gamma) * logp


@LOSSES.register("la")
def logit_adjusted(logits, labels, knobs, prior):  # noqa: ANN001, ANN201
    """Logit-adjusted CE(z + τ·log π) with per-member τ (``knobs['la_tau']`` [G])."""
    return _ce(logits + knobs["la_tau"][:, None, None] * prior.log_prior[:, None, :], labels)


@LOSSES.register("bs")
def balanced_softmax(logits, labels, knobs, prior):  # noqa: ANN001, ANN201
    """Balanced softmax CE(z + log n_c) (= ``la`` with τ = 1 up to a constant)."""
    return _ce(logits + prior.log_prior[:, None, :], labels)


@LOSSES.register("cb")
def class_balanced(logits, labels, knobs, prior):  # noqa: ANN001, ANN201
    """Class-balanced CE: weight (1 − β)/(1 − β^{n_y}), normalised to sum to C per member."""
    beta = knobs["cb_beta"][:, None].double()  # [G, 1]
    eff = (1 - beta) / (1 - beta ** prior.counts.double()).clamp_min(1e-12)  # [G, C]
    w = (eff / eff.sum(-1, keepdim=True) * prior.counts.shape[-1]).to(logits.dtype)
    return w.gather(-1, labels) * _ce(logits, labels)


@LOSSES.register("bce")
def binary_cross_entropy(logits, labels, knobs, prior):  # noqa: ANN001, ANN201
    """Multi-label BCE averaged over labels (labels [G, B, C] in {0, 1})."""
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none").mean(-1)


def posthoc_adjust(logits: torch.Tensor, log_prior: torch.Tensor, tau: float) -> torch.Tensor:
    """Post-hoc logit adjustment: ``logits − τ·log π`` (logits [..., C], log_prior [C])."""
    if tau == 0:
        return logits
    return logits - tau * log_prior.to(logits)


LOSS_KNOBS = ("gamma", "la_tau", "cb_beta")
