"""Learning-rate schedules, in one place: every training loop in featcache reads its rate here.

- ``cosine``: per epoch, as ``torch.optim.lr_scheduler.CosineAnnealingLR(T_max=E)`` stepped
  once per epoch (eta_min = 0): lr_e = lr · (1 + cos(π e / E)) / 2 for epoch e (0-based).
  Used by the batched head trainer (:mod:`featcache.heads.training`) and ``finetune``.
- ``constant``: lr for every epoch / iteration.
- step decay (:func:`step_decay_lr`): lr · γ^⌊t / N⌋ at iteration t (0-based), as
  ``torch.optim.lr_scheduler.StepLR(step_size=N, gamma=γ)`` stepped once per iteration: the
  MedMNIST benchmark's schedule (FMMIC's ``--lr_decay 0.9`` every 200 iterations; see
  :mod:`featcache.pipelines.bench_medmnist`), for its linear probes and the head of its
  fine-tuning.

The formulas are the closed forms torch's schedulers reach in exact arithmetic; the loops call
these instead of holding a scheduler object so a run can resume at any epoch and G members
with different rates can share one batched step (``lr`` may be a tensor ``[G]``).
"""

from __future__ import annotations

import math
from typing import TypeVar

__all__ = ["EPOCH_SCHEDULES", "epoch_lr", "multiplier_at", "step_decay_lr"]

#: The per-epoch schedules a ``--schedule`` option accepts.
EPOCH_SCHEDULES = ("cosine", "constant")

Rate = TypeVar("Rate")  # float, or a torch.Tensor of per-member rates


def epoch_lr(schedule: str, lr: float, epoch: int, epochs: int) -> float:
    """The learning rate during ``epoch`` (0-based) of ``epochs`` under ``schedule``.

    ``cosine``: ``lr (1 + cos(π e / E)) / 2`` (CosineAnnealingLR per epoch); ``constant`` (and
    ``epochs == 0``): ``lr``.
    """
    if schedule not in EPOCH_SCHEDULES:
        raise ValueError(f"Unknown schedule '{schedule}'; expected one of {', '.join(EPOCH_SCHEDULES)}.")
    if schedule == "constant" or epochs == 0:
        return lr
    return lr * (1 + math.cos(math.pi * epoch / epochs)) / 2


def step_decay_lr(lr: Rate, it: int, gamma: float, every: int) -> Rate:
    """The learning rate at iteration ``it`` (0-based): ``lr · gamma^⌊it / every⌋`` (StepLR per
    iteration). ``lr`` may be a float or a tensor of per-member rates."""
    return lr * gamma ** (it // every)


def multiplier_at(it: int, gamma: float, every: int) -> float:
    """The step-decay factor ``gamma^⌊it / every⌋`` (for ``torch.optim.lr_scheduler.LambdaLR``)."""
    return step_decay_lr(1.0, it, gamma, every)
