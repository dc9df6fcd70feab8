"""Samplers: which training rows one epoch visits, and in what order (``--sampler``).

A sampler is built once from a member's training labels (on the device) and then draws one
epoch of *local* row positions per call from that member's own ``torch.Generator``, all on the
device with no host synchronisation (class sizes are read once, at construction).

- ``instance``: every row once, shuffled.
- ``wrs``: weighted random sampling with class-balanced probabilities 1/n_c, N draws with
  replacement (TFA-LT stage I, DESIGN.md §1).
- ``rus``: random under-sampling: every class cut to the smallest class, a fresh draw each
  epoch, shuffled (``fresh``).
- ``rus-fixed``: random under-sampling drawn ONCE (from the member's stream seed) and then
  reshuffled every epoch: one re-balanced training set, as the TFA-LT
  paper "generates" it (TFA-LT stage I's default, see ``featcache.pipelines.tfa_lt``).
- ``sqrt``: square-root sampling, class probabilities ∝ sqrt(n_c), N draws with replacement.
"""

from __future__ import annotations

import numpy as np
import torch

from featcache.errors import FeatcacheError
from featcache.registry import Registry
from featcache.seeding import torch_generator


class Sampler:
    """Base class: holds the labels ``[n]`` of a member's training rows and their class counts."""

    def __init__(self, labels: torch.Tensor, num_classes: int) -> None:
        if labels.dim() != 1:
            raise FeatcacheError(
                f"Sampler '{type(self).name}' needs single-label data; multi-label caches "
                "train with --sampler instance."
            )
        if labels.numel() == 0:
            raise FeatcacheError("A sampler got no training rows.")
        self.labels = labels
        self.num_classes = num_classes
        self.counts = np.bincount(labels.cpu().numpy(), minlength=num_classes)  # one host read

    name = ""

    @property
    def epoch_length(self) -> int:
        """Rows per epoch."""
        return int(self.labels.shape[0])

    def draw(self, gen: torch.Generator) -> torch.Tensor:
        """One epoch of local row positions ``[epoch_length]`` (int64, on the labels' device)."""
        raise NotImplementedError


SAMPLERS: Registry[type[Sampler]] = Registry("sampler")


register_sampler = SAMPLERS.register  # sets the class's ``name`` (see Registry.register)


@register_sampler("instance")
class InstanceSampler(Sampler):
    """Every row once per epoch, shuffled. Works for multi-label data too."""

    def __init__(self, labels: torch.Tensor, num_classes: int) -> None:
        if labels.numel() == 0:
            raise FeatcacheError("A sampler got no training rows.")
        self.labels = labels
        self.num_classes = num_classes

    def draw(self, gen: torch.Generator) -> torch.Tensor:
        return torch.randperm(self.epoch_length, generator=gen, device=self.labels.device)


class _WeightedSampler(Sampler):
    power = 1.0  # per-row weight n_y^(−power)

    def __init__(self, labels: torch.Tensor, num_classes: int) -> None:
        super().__init__(labels, num_classes)
        per_class = torch.as_tensor(self.counts, dtype=torch.float64).clamp_min(1) ** -self.power
        self.weights = per_class.to(labels.device)[labels].float()  # [n]

    def draw(self, gen: torch.Generator) -> torch.Tensor:
        return torch.multinomial(self.weights, self.epoch_length, replacement=True, generator=gen)


@register_sampler("wrs")
class WeightedRandomSampler(_WeightedSampler):
    """Class-balanced weighted random sampling: row weight 1/n_y, N draws with replacement."""

    power = 1.0


@register_sampler("sqrt")
class SquareRootSampler(_WeightedSampler):
    """Square-root sampling: row weight n_y^(−1/2), so class probability ∝ sqrt(n_c)."""

    power = 0.5


@register_sampler("rus")
class UnderSampler(Sampler):
    """Random under-sampling: each present class contributes ``min_c n_c`` rows, fresh each epoch."""

    def __init__(self, labels: torch.Tensor, num_classes: int) -> None:
        super().__init__(labels, num_classes)
        present = np.flatnonzero(self.counts > 0)
        self.per_class = int(self.counts[present].min())
        starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])[present]  # in class order
        take = (starts[:, None] + np.arange(self.per_class)[None, :]).reshape(-1)
        self.take = torch.as_tensor(take, device=labels.device)  # [m·C'] positions after sorting
        self.class_key = labels.double()

    @property
    def epoch_length(self) -> int:
        return int(self.take.numel())

    def draw(self, gen: torch.Generator) -> torch.Tensor:
        dev = self.labels.device
        # Sorting by label + a uniform key in [0, 1) shuffles rows within each class; the first
        # m rows of each class block are then a fresh uniform draw without replacement.
        key = self.class_key + torch.rand(self.labels.shape[0], generator=gen, device=dev, dtype=torch.float64)
        chosen = torch.argsort(key)[self.take]
        return chosen[torch.randperm(chosen.numel(), generator=gen, device=dev)]


@register_sampler("rus-fixed")
class FixedUnderSampler(UnderSampler):
    """Random under-sampling drawn once: ``min_c n_c`` rows of each class, chosen by a generator
    seeded with ``gen.initial_seed()`` (the member's stream seed, the same every epoch); each
    :meth:`draw` then returns exactly those rows, shuffled by ``gen``. So, like every sampler,
    a draw is a function of the generator's state alone, and a run is repeatable."""

    def __init__(self, labels: torch.Tensor, num_classes: int) -> None:
        super().__init__(labels, num_classes)
        self._subsets: dict[int, torch.Tensor] = {}  # stream seed -> [m·C'] local rows

    def draw(self, gen: torch.Generator) -> torch.Tensor:
        seed = gen.initial_seed()
        subset = self._subsets.get(seed)
        if subset is None:
            once = torch_generator(seed, self.labels.device)  # featcache.seeding
            subset = self._subsets[seed] = super().draw(once)
        perm = torch.randperm(subset.numel(), generator=gen, device=self.labels.device)
        return subset[perm]
