"""CIFAR-100-LT, as LDAM-DRW's ``IMBALANCECIFAR100`` builds it (and LIFT uses it).

Reads the standard ``cifar-100-python/{train,test,meta}`` pickles. The training set keeps
``n_c = int(500 * (1 / imbalance)^(c / 99))`` images of class ``c``: LDAM-DRW seeds
NumPy's global generator once (``np.random.seed(seed)``), then for each class in order
shuffles that class's indices and keeps the first ``n_c``; a ``RandomState(seed)`` used the
same way gives the identical subset. The test set is the full, balanced 10,000 images.
LIFT's class groups (many > 100, medium 20-100, few < 20 training images) are computed from
the IR100 counts for every imbalance ratio, as LIFT's code does (shijxcs/LIFT trainer.py:158-164:
``split_cls_num_list = datasets.CIFAR100_IR100(root, train=True).cls_num_list`` for
CIFAR100, CIFAR100_IR10 and CIFAR100_IR50), so IR50 and IR10 report the same many / medium /
few classes as IR100 (with their own counts IR10 would have no few class at all).
"""

from __future__ import annotations

import codecs
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from featcache.datasets._io import ArrayLoader, lift_groups, readable, require_file
from featcache.datasets.base import DATASETS, Descriptor, Manifest, load_descriptor, require_root
from featcache.errors import DataError

IMBALANCES = (100, 50, 10)
FOLDER = "cifar-100-python"


def cifar_lt_counts(imbalance: float, num_classes: int = 100, img_max: int = 500) -> list[int]:
    """LDAM-DRW's exponential profile: ``int(img_max * (1 / imbalance)^(c / (C - 1)))``."""
    return [int(img_max * (1.0 / imbalance) ** (c / (num_classes - 1.0))) for c in range(num_classes)]


def _numpy_global(name: str) -> object:
    """``numpy._core.multiarray._reconstruct`` etc., wherever this numpy keeps it (1.x: ``numpy.core``)."""
    import importlib

    module, attr = name.rsplit(".", 1)
    try:
        return getattr(importlib.import_module(f"numpy._core.{module}"), attr)
    except ImportError:  # numpy < 2
        return getattr(importlib.import_module(f"numpy.core.{module}"), attr)


# Every global the official CIFAR-100 pickles (and numpy's own pickles of uint8 arrays) name:
# the numpy array reconstructors, ndarray and dtype, and ``_codecs.encode`` (protocol-2
# pickles written by Python 3 store bytes through it). Nothing else is ever looked up.
_CIFAR_GLOBALS: dict[tuple[str, str], Callable[[], object]] = {
    **{(m, "_reconstruct"): lambda: _numpy_global("multiarray._reconstruct")
       for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_frombuffer"): lambda: _numpy_global("numeric._frombuffer")
       for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: codecs.encode,
}


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that admits only what the CIFAR-100 format holds: dicts, lists, str/bytes,
    ints and numpy arrays. Any other class or function a pickle names (the way a hostile pickle
    runs code) is refused before it is looked up, let alone called."""

    def __init__(self, f: BinaryIO, path: Path) -> None:
        super().__init__(f, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> object:  # noqa: D102 - pickle's hook
        make = _CIFAR_GLOBALS.get((module, name))
        if make is None:
            raise DataError(
                f"CIFAR-100 pickle {self.path} refers to {module}.{name}, which the CIFAR-100 "
                "format does not hold (only dicts, lists, text, integers and numpy arrays); "
                "refusing to load it, since a pickle like this can run code. Download the "
                "official cifar-100-python.tar.gz again."
            )
        return make()


def _unpickle(path: Path) -> dict:
    require_file(path, "CIFAR-100 pickle")
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, path).load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError,
            IndexError, KeyError) as e:
        raise DataError(f"CIFAR-100 pickle {path} could not be read: {e}") from None
    if not isinstance(d, dict):
        raise DataError(f"CIFAR-100 pickle {path} holds a {type(d).__name__}; expected a dict.")
    for key, value in d.items():
        if isinstance(value, np.ndarray) and value.dtype == object:
            raise DataError(f"CIFAR-100 pickle {path}: '{key}' is an array of Python objects; "
                            "the format holds uint8 image arrays.")
    return d


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
        groups=lift_groups(np.array(cifar_lt_counts(100)), class_ids),  # IR100's counts, as LIFT
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
