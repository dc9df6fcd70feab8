"""Random generators, in one place: every training loop and sampler takes its generator here.

The scheme: a run's integer ``seed`` and a *stream* (a tuple of names or integers: what the
numbers are for) give one generator, independent of every other stream, of the device count,
of worker processes and of which other members train alongside.

- :func:`stream_seed` ``(seed, *stream)`` -> a 63-bit integer (SHA-256 of ``"seed|name|..."``);
  :func:`stream_generator` puts it into a ``torch.Generator``. The batched head trainer's
  members use it (``MemberSpec.generator``: stream ``(member stream, "init"|"sample"|"val")``).
- :func:`torch_generator` ``(seed, device)``: a ``torch.Generator`` seeded with ``seed`` as is.
- :func:`numpy_generator` ``(seed, *stream)``: ``np.random.default_rng([seed, *stream])``
  (numpy's own SeedSequence mixes the entropy words); string names become 63-bit words via
  :func:`name_word`, integer tags are used as they are.

Numbers kept as they were (deliberately): the loops that existed before this module keep
their generator construction exactly, so their results do not change: the MedMNIST
benchmark's subset draw (``numpy_generator(seed, n, 0x4D4544)``);
``finetune``'s per-image augmentation (``numpy_generator(seed, epoch, row, 0x11F7)``) and its
on-device crops (:func:`mixed_seed`, its older arithmetic mix of (seed, purpose, epoch));
the split draws of :mod:`featcache.splits` (``numpy_generator(seed, Σ ord(purpose),
len(purpose))``); FMMIC's first-n ChestMNIST draw (:func:`legacy_random_state`, numpy's ``RandomState`` as
FMMIC's dataset.py l. 236-239). New code uses :func:`stream_generator` / :func:`numpy_generator`
with string stream names. (The MedMNIST probes' batch plan and initial values moved to the
scheme when the probes became members of the one trainer: stream ``medmnist/probe``.)

:func:`seed_global` seeds torch's process-wide generator, for module constructors that draw
from it (``nn.Linear``/adapter initial values in fine-tuning); nothing else calls
``torch.manual_seed``.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

__all__ = [
    "legacy_random_state",
    "mixed_seed",
    "name_word",
    "numpy_generator",
    "seed_global",
    "stream_generator",
    "stream_seed",
    "torch_generator",
]


def stream_seed(seed: int, *stream: object) -> int:
    """A 63-bit seed for ``stream`` of run ``seed``: the first 15 hex digits of
    SHA-256(``"seed|name|..."``)."""
    key = "|".join(str(part) for part in (seed, *stream)).encode()
    return int(hashlib.sha256(key).hexdigest()[:15], 16)


def torch_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with ``seed`` (an int, used as is)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


def stream_generator(seed: int, *stream: object, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` for ``stream`` of run ``seed`` (:func:`stream_seed`)."""
    return torch_generator(stream_seed(seed, *stream), device)


def name_word(name: str) -> int:
    """A stream name as one 63-bit entropy word (SHA-256), for :func:`numpy_generator`."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:15], 16)


def numpy_generator(seed: int, *stream: int | str) -> np.random.Generator:
    """``np.random.default_rng([seed, *stream])``; a string in ``stream`` counts as :func:`name_word`."""
    words = [int(seed)] + [name_word(s) if isinstance(s, str) else int(s) for s in stream]
    return np.random.default_rng(words)


def mixed_seed(seed: int, purpose: str, epoch: int) -> int:
    """``finetune``'s seed of (seed, purpose, epoch), kept so its runs' numbers do not change:
    ``(seed · 1000003 + Σ ord(purpose) · 10007 + epoch) mod 2^63``."""
    return (seed * 1_000_003 + sum(map(ord, purpose)) * 10_007 + epoch) % (2**63)


def legacy_random_state(seed: int) -> np.random.RandomState:
    """numpy's legacy ``RandomState(seed)``, where a public recipe draws from it (FMMIC)."""
    return np.random.RandomState(int(seed))


def seed_global(seed: int) -> None:
    """Seed torch's process-wide generator (for constructors that draw from it)."""
    torch.manual_seed(int(seed))
