"""Protocols: which cached rows train, validate and test, drawn from labels with a seed.

- ``tfa-lt``: a class-balanced test set of ``descriptor.test_per_class`` rows per class,
  drawn with the seed from the labelled pool (rows whose source split is ``train`` or ``''``;
  every row if there are none); the rest is the long-tailed training set. Groups many /
  medium / few from the descriptor (DESIGN.md §1), else from training counts.
- ``official``: the cache's own source splits ``train``/``val``/``test`` (e.g. MedMNIST).
  Groups from the descriptor when it has them, else from training counts.
- ``lift``: the official splits, with groups by training count (>100, 20–100, <20; §2).

The default (:func:`resolve_protocol`) is ``official`` when the cache has a test split of its
own, else the descriptor's protocol; with neither, the error says what to pass.

A validation split (grids select on it, never on test) is the official ``val`` rows when the
protocol has them, else ``val_fraction`` of every class's training rows, drawn with the seed.
The chosen indices are saved with every run (:meth:`Split.to_frame`), so a run can be
repeated exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from featcache import knobs
from featcache.datasets.base import Descriptor
from featcache.errors import FeatcacheError
from featcache.metrics import groups_from_counts
from featcache.seeding import numpy_generator

PROTOCOLS = ("tfa-lt", "official", "lift")


@dataclass(frozen=True)
class Split:
    """Row indices (into the cache) of one protocol and seed, with class groups."""

    protocol: str
    seed: int
    train: np.ndarray  # [n_train] int64
    val: np.ndarray  # [n_val]
    test: np.ndarray  # [n_test]
    train_counts: np.ndarray  # [C] training rows per class (positives for multi-label)
    groups: dict[str, list[int]] = field(default_factory=dict)  # class indices

    def to_frame(self, ids: list[str] | None = None) -> pl.DataFrame:
        """One row per used cache row: ``seed, row, id, split``."""
        parts = [("train", self.train), ("val", self.val), ("test", self.test)]
        rows = np.concatenate([r for _, r in parts]).astype(np.int64)
        names = np.concatenate([np.full(len(r), n, dtype=object) for n, r in parts])
        frame = {
            "seed": np.full(len(rows), self.seed, dtype=np.int64),
            "row": rows,
            "split": names.tolist(),
        }
        if ids is not None:
            frame["id"] = [ids[i] for i in rows]
        return pl.DataFrame(frame)


def resolve_protocol(protocol: str | None, source_splits: np.ndarray, descriptor: Descriptor) -> str:
    """The protocol to use: the one asked for, else official / the descriptor's / an error."""
    if protocol is not None:
        if protocol not in PROTOCOLS:
            from featcache.errors import unknown

            raise unknown("protocol", protocol, PROTOCOLS)
        return protocol
    if np.any(source_splits == "test"):
        return "official"
    if descriptor.protocol in PROTOCOLS:
        return descriptor.protocol
    raise FeatcacheError(
        f"Data set {descriptor.name} has no test split of its own and its descriptor names no "
        "protocol: pass --protocol tfa-lt (a class-balanced test set; needs --test-per-class "
        "or a descriptor with test_per_class) or cache a data set with official splits."
    )


def _rng(seed: int, purpose: str) -> np.random.Generator:
    return numpy_generator(seed, sum(map(ord, purpose)), len(purpose))  # featcache.seeding (numbers as before)


def _counts(labels: np.ndarray, rows: np.ndarray, num_classes: int) -> np.ndarray:
    sel = labels[rows]
    if sel.ndim == 2:
        return sel.sum(0).astype(np.int64)
    return np.bincount(sel, minlength=num_classes).astype(np.int64)


def make_split(
    labels: np.ndarray,
    source_splits: np.ndarray,
    descriptor: Descriptor,
    protocol: str | None,
    seed: int,
    *,
    val_fraction: float = knobs.VAL_FRACTION,
    test_per_class: int | None = None,
    where: str = "the cache",
) -> Split:
    """Draw the split of ``protocol`` for ``seed`` from labels ``[N]`` and source splits ``[N]``."""
    labels = np.asarray(labels)
    source_splits = np.asarray(source_splits, dtype=object)
    C = descriptor.num_classes
    protocol = resolve_protocol(protocol, source_splits, descriptor)
    if not 0 <= val_fraction < 1:
        raise FeatcacheError(f"--val-fraction must be in [0, 1), got {val_fraction}.")
    val = np.zeros(0, dtype=np.int64)
    if protocol == "tfa-lt":
        if labels.ndim != 1:
            raise FeatcacheError("Protocol tfa-lt needs single-label data; use --protocol official.")
        per_class = test_per_class or descriptor.test_per_class
        if not per_class:
            raise FeatcacheError(
                f"Protocol tfa-lt needs a test size per class, and the descriptor of "
                f"{descriptor.name} gives none; pass --test-per-class N."
            )
        pool = np.flatnonzero(np.isin(source_splits, ["train", ""]))
        if pool.size == 0:
            pool = np.arange(len(labels))
        rng = _rng(seed, "tfa-lt-test")
        test_parts, train_parts = [], []
        for c in range(C):
            rows_c = pool[labels[pool] == c]
            if len(rows_c) <= per_class:
                raise FeatcacheError(
                    f"Protocol tfa-lt takes {per_class} test images per class, but class "
                    f"'{descriptor.class_ids[c]}' has only {len(rows_c)} in {where}; it needs "
                    f"at least {per_class + 1} (one left to train on). Pass a smaller "
                    "--test-per-class or use --protocol official."
                )
            rows_c = rows_c[rng.permutation(len(rows_c))]
            test_parts.append(rows_c[:per_class])
            train_parts.append(rows_c[per_class:])
        test = np.sort(np.concatenate(test_parts))
        train = np.sort(np.concatenate(train_parts))
    else:
        test = np.flatnonzero(source_splits == "test")
        train = np.flatnonzero(source_splits == "train")
        val = np.flatnonzero(source_splits == "val")
        if test.size == 0 or train.size == 0:
            raise FeatcacheError(
                f"Protocol {protocol} uses the data set's own train/test splits, but {where} "
                f"has {train.size} train and {test.size} test rows. Use --protocol tfa-lt."
            )
    if val.size == 0 and val_fraction > 0:
        train, val = carve_validation(labels, train, val_fraction, seed)
    train_counts = _counts(labels, train, C)
    if protocol == "lift" and descriptor.protocol == "lift" and descriptor.groups:
        # a LIFT data set's own groups (CIFAR-100-LT: from the IR100 counts at every ratio, as
        # LIFT's trainer.py:158-164; the others: from their training lists, i.e. train_counts)
        groups = {g: [descriptor.class_ids.index(cid) for cid in descriptor.groups.get(g, ())]
                  for g in ("many", "medium", "few")}
    elif protocol == "lift" or not descriptor.groups:
        groups = groups_from_counts(train_counts)
    else:
        groups = {
            g: [descriptor.class_ids.index(cid) for cid in descriptor.groups.get(g, ())]
            for g in ("many", "medium", "few")
        }
    return Split(protocol, seed, train.astype(np.int64), val.astype(np.int64),
                 test.astype(np.int64), train_counts, groups)


def carve_validation(
    labels: np.ndarray, train: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Move ``round(fraction · n_c)`` rows of each class (at least one row stays) to validation.

    Multi-label data is carved without stratification.
    """
    rng = _rng(seed, "validation")
    if labels.ndim == 2:
        perm = train[rng.permutation(len(train))]
        k = int(round(fraction * len(train)))
        return np.sort(perm[k:]), np.sort(perm[:k])
    keep, val = [], []
    for c in np.unique(labels[train]):
        rows_c = train[labels[train] == c]
        rows_c = rows_c[rng.permutation(len(rows_c))]
        k = min(int(round(fraction * len(rows_c))), len(rows_c) - 1)
        val.append(rows_c[:k])
        keep.append(rows_c[k:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(val))


def draw_shots(split: Split, labels: np.ndarray, shots: int) -> tuple[Split, dict[int, int]]:
    """The K-shot protocol: keep ``shots`` training rows of every class, drawn with the split's
    seed (its own stream, so the same seed gives the same draw); classes with fewer rows keep
    all of them. Validation and test rows are unchanged, and so are the class groups (many /
    medium / few describe the classes' place in the full training distribution, so a K-shot
    run is scored on the same groups as the full-data run).

    Returns the new split and ``{class: rows kept}`` for the classes short of ``shots``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise FeatcacheError("--shots draws K training images per class; it needs single-label "
                             "data (this cache is multi-label).")
    if isinstance(shots, bool) or not isinstance(shots, int | np.integer) or shots < 1:
        raise FeatcacheError(f"--shots must be an integer >= 1, got {shots!r}.")
    rng = _rng(split.seed, "shots")
    kept, short = [], {}
    for c in range(len(split.train_counts)):
        rows_c = split.train[labels[split.train] == c]  # sorted
        if rows_c.size <= shots:
            kept.append(rows_c)
            if rows_c.size < shots:
                short[c] = int(rows_c.size)
            continue
        kept.append(np.sort(rows_c[rng.permutation(rows_c.size)[:shots]]))
    train = np.sort(np.concatenate(kept)).astype(np.int64)
    counts = _counts(labels, train, len(split.train_counts))
    return Split(split.protocol, split.seed, train, split.val, split.test, counts, split.groups), short
