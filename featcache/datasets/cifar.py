"""CIFAR-100-LT, as LDAM-DRW's ``IMBALANCECIFAR100`` builds it (and LIFT uses it).

Reads the standard ``cifar-100-python/{train,test,meta}`` pickles. The training set keeps
``n_c = int(500 * (1 / imbalance)^(c / 99))`` images of class ``c``: LDAM-DRW seeds
NumPy's global generator once (``np.random.seed(seed)``), then for each class in order
shuffles that class's indices and keeps the first ``n_c``; a ``RandomState(seed)`` used the
same way gives the identical subset. The test set is the full, balanced 10,000 images.
LIFT's class groups (many > 100, medium 20-100, few < 20 training images) are computed from
the resulting counts.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from featcache.datasets._io import ArrayLoader, lift_groups, readable, require_file
from featcache.datasets.base import DATASETS, Descriptor, Manifest, load_descriptor, require_root
from featcache.errors import DataError

IMBALANCES = (100, 50, 10)
FOLDER = "cifar-100-python"


def cifar_lt_counts(imbalance: float, num_classes: int = 100, img_max: int = 500) -> list[int]:
    """LDAM-DRW's exponential profile: ``int(img_max * (1 / imbalance)^(c / (C - 1)))``."""
    return [int(img_max * (1.0 / imbalance) ** (c / (num_classes - 1.0))) for c in range(num_classes)]


def _unpickle(path: Path) -> dict:
    require_file(path, "CIFAR-100 pickle")
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as e:
        raise DataError(f"CIFAR-100 pickle {path} could not be read: {e}") from None


def _split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 32, 32, 3] uint8 and fine labels [N] of one CIFAR-100 pickle."""
    d = _unpickle(path)
    if "data" not in d or "fine_labels" not in d:
        raise DataError(f"CIFAR-100 pickle {path} has no 'data'/'fine_labels' entries (keys: {sorted(d)}).")
    data = np.asarray(d["data"], dtype=np.uint8)
    labels = np.asarray(d["fine_labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DataError(f"CIFAR-100 pickle {path}: data {data.shape} and {len(labels)} labels; expected [N, 3072].")
    bad = (labels < 0) | (labels >= 100)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise DataError(f"CIFAR-100 pickle {path}: image {k} has fine label {labels[k]}; expected 0..99.")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


@DATASETS.register("cifar100-lt")
def cifar100_lt(root: Path | None, *, imbalance: int = 100, seed: int = 0) -> Manifest:
    """CIFAR-100-LT: cifar-100-python/{train,test,meta} pickles; train cut to 500*(1/imbalance)^(c/99) per class, full test.

    ``imbalance`` is 100, 50 or 10; ``seed`` seeds the per-class shuffle (LDAM-DRW's
    ``rand_number``, default 0).
    """
    root = require_root(root, "cifar100-lt")
    if str(imbalance) not in {str(i) for i in IMBALANCES}:
        raise DataError(f"cifar100-lt imbalance must be one of {', '.join(map(str, IMBALANCES))}, got {imbalance}.")
    imbalance, seed = int(imbalance), int(seed)
    folder = root / FOLDER if (root / FOLDER).is_dir() else root
    train_x, train_y = _split(folder / "train")
    test_x, test_y = _split(folder / "test")
    meta = _unpickle(folder / "meta")
    names = meta.get("fine_label_names")
    if not names or len(names) != 100:
        raise DataError(f"CIFAR-100 meta {folder / 'meta'} has no list of 100 fine_label_names.")

    counts = cifar_lt_counts(imbalance)
    state = np.random.RandomState(seed)  # LDAM-DRW: np.random.seed(rand_number); np.random.shuffle(idx)
    keep: list[np.ndarray] = []
    for c, n in enumerate(counts):
        idx = np.flatnonzero(train_y == c)
        state.shuffle(idx)
        keep.append(idx[:n])
    train_idx = np.concatenate(keep)

    class_ids = tuple(str(n) for n in names)
    shipped = load_descriptor("cifar100-lt")
    descriptor = Descriptor(
        name="cifar100-lt",
        class_ids=class_ids,
        class_names=tuple(readable(n) for n in names),
        data_type=shipped.data_type if shipped else "photo",
        protocol="lift",
        test_per_class=100,
        groups=lift_groups(np.bincount(train_y[train_idx], minlength=100), class_ids),
        source=shipped.source if shipped else "CIFAR-100-LT",
    )
    arrays = np.concatenate([train_x[train_idx], test_x])  # [N, 32, 32, 3] uint8
    ids = [f"train-{k}" for k in train_idx] + [f"test-{k}" for k in range(len(test_x))]
    return Manifest(
        descriptor=descriptor,
        ids=ids,
        sources=[f"{FOLDER}/train#{k}" for k in train_idx] + [f"{FOLDER}/test#{k}" for k in range(len(test_x))],
        labels=np.concatenate([train_y[train_idx], test_y]),
        splits=["train"] * len(train_idx) + ["test"] * len(test_x),
        loader=ArrayLoader(arrays),
        arrays=arrays,
        options={"imbalance": imbalance, "seed": seed},
    )
