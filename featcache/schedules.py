"""Learning-rate schedules, in one place: every training loop in featcache reads its rate here.

- ``cosine``: per epoch, as ``torch.optim.lr_scheduler.CosineAnnealingLR(T_max=E)`` stepped
  once per epoch (eta_min = 0): lr_e = lr · (1 + cos(π e / E)) / 2 for epoch e (0-based).
  Used by the batched head trainer (:mod:`featcache.heads.training`) and ``finetune``.
- ``constant``: lr for every epoch / iteration.
- ``step`` (:func:`step_decay_lr`): lr · γ^⌊t / N⌋ at iteration t (0-based), as
  ``torch.optim.lr_scheduler.StepLR(step_size=N, gamma=γ)`` stepped once per iteration: the
  MedMNIST benchmark's schedule (FMMIC's ``--lr_decay 0.9`` every 200 iterations; see
  :mod:`featcache.pipelines.bench_medmnist`), for its linear probes and the head of its
  fine-tuning; any head can use it (``--schedule step``).

:func:`step_rates` turns a schedule into the rate of every optimiser step of one run: the one
place the batched trainer reads them from.

The formulas are the closed forms torch's schedulers reach in exact arithmetic; the loops call
these instead of holding a scheduler object so a run can resume at any epoch and G members
with different rates can share one batched step (``lr`` may be a tensor ``[G]``).
"""

from __future__ import annotations

import math
from typing import TypeVar

__all__ = ["EPOCH_SCHEDULES", "SCHEDULES", "epoch_lr", "multiplier_at", "step_decay_lr", "step_rates"]

#: The per-epoch schedules (fine-tuning's ``--schedule``).
EPOCH_SCHEDULES = ("cosine", "constant")
#: Every schedule of the batched head trainer: the per-epoch ones and per-iteration step decay.
SCHEDULES = (*EPOCH_SCHEDULES, "step")

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


def step_rates(schedule: str, lr: float, steps: int, per_epoch: int, epochs: int,
               gamma: float, every: int) -> list[float]:
    """The learning rate of each of a run's ``steps`` optimiser steps (0-based).

    Epoch schedules hold :func:`epoch_lr` for the ``per_epoch`` steps of each epoch (of
    ``epochs``; a run cut at ``steps`` ends inside its last epoch); ``step`` is
    :func:`step_decay_lr` at every step, whatever the epochs.
    """
    if schedule == "step":
        return [step_decay_lr(lr, t, gamma, every) for t in range(steps)]
    if schedule not in EPOCH_SCHEDULES:
        raise ValueError(f"Unknown schedule '{schedule}'; expected one of {', '.join(SCHEDULES)}.")
    return [epoch_lr(schedule, lr, t // per_epoch, epochs) for t in range(steps)]
