"""One optimiser step of an image model being fine-tuned: the step both backbone loops share.

LIFT's ``featcache finetune`` (:mod:`featcache.pipelines.finetune`, epochs of SGD with a cosine
schedule, PEFT modules, DistributedDataParallel) and the MedMNIST benchmark's end-to-end
fine-tuning (:func:`featcache.pipelines.bench_medmnist.finetune_once`, iterations of AdamW with
two learning-rate groups) drive their own data, schedules and checkpoints, but every step is
:func:`train_step`: the forward pass under the run's autocast dtype, the loss, the backward
pass (scaled by a ``GradScaler`` for fp16) and the optimiser step. Models on cached features
train in :mod:`featcache.heads.training` instead (G members at once, no image encoder).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from featcache.device import autocast

__all__ = ["train_step"]


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    dtype: torch.dtype,
    scaler: torch.amp.GradScaler | None = None,
) -> torch.Tensor:
    """One step on normalised ``images`` ``[B, 3, S, S]``; returns the (detached) loss.

    ``model(images)`` runs under :func:`featcache.device.autocast` with ``dtype`` (a model may
    leave autocast for its head itself); ``loss_fn(logits, labels)`` is a scalar; gradients
    are cleared (``set_to_none``) before the backward pass.
    """
    with autocast(device, dtype):
        logits = model(images)  # [B, C]
    loss = loss_fn(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.detach()
