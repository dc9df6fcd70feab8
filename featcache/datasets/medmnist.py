"""MedMNIST v2 (and MedMNIST+ sizes): the 12 2D data sets as the official ``.npz`` files.

Each file holds ``{train,val,test}_images`` (``[N, H, W]`` grey or ``[N, H, W, 3]`` RGB,
uint8) and ``{train,val,test}_labels`` (``[N, 1]`` or ``[N]`` class indices, or ``[N, C]``
0/1 for the multi-label ChestMNIST). Sizes 28 (``<subset>.npz``) and 64/128/224
(``<subset>_<size>.npz``). The official splits are kept as source splits.

The whole file is decoded once into ``Manifest.arrays`` (``[N, H, W, C]`` uint8, contiguous;
C = 1 for the grey sets, 3 for RGB) so extraction never touches PIL. Grey images stay one
channel in memory (TissueMNIST at 224: ~12 GB, not ~35 GB) and are broadcast to three on
the device, batch by batch.

:func:`locate_files` finds (or, with ``download``, fetches: :func:`download_npz`) the npz file of
every data set × size for ``featcache bench medmnist``.
"""

from __future__ import annotations

import json
import logging
import zipfile
from functools import cache
from pathlib import Path

import numpy as np

from featcache.datasets._io import ArrayLoader
from featcache.datasets.base import (
    DATASETS,
    Descriptor,
    Manifest,
    data_dir,
    load_descriptor,
    require_root,
)
from featcache.errors import DataError, FeatcacheError, unknown

SUBSETS = (
    "pathmnist",
    "chestmnist",
    "dermamnist",
    "octmnist",
    "pneumoniamnist",
    "retinamnist",
    "breastmnist",
    "bloodmnist",
    "tissuemnist",
    "organamnist",
    "organcmnist",
    "organsmnist",
)
SIZES = (28, 64, 128, 224)
NPZ_SPLITS = ("train", "val", "test")
TASKS = ("multi-class", "binary-class", "multi-label, binary-class", "ordinal-regression")

log = logging.getLogger(__name__)


def medmnist_descriptor(subset: str) -> Descriptor:
    """The descriptor ``medmnist-<subset>`` (class names from MedMNIST's INFO); unknown subsets raise."""
    if subset not in SUBSETS:
        raise unknown("MedMNIST subset", subset, SUBSETS)
    descriptor = load_descriptor(f"medmnist-{subset}")
    if descriptor is None:  # pragma: no cover - the descriptors ship with the package
        raise DataError(f"descriptor data/datasets/medmnist-{subset}.json is missing from this install.")
    return descriptor


@cache
def medmnist_info(subset: str) -> dict:
    """The official facts of ``subset`` kept in its descriptor file: ``task`` (one of
    :data:`TASKS`), ``n_channels`` (1 or 3) and ``n_samples`` (``{train, val, test}`` rows),
    copied from the ``medmnist`` package's ``INFO`` dict (medmnist 3.0.2, ``medmnist/info.py``).
    """
    medmnist_descriptor(subset)  # unknown subsets raise
    raw = json.loads((data_dir() / "datasets" / f"medmnist-{subset}.json").read_text())
    missing = [k for k in ("task", "n_channels", "n_samples") if k not in raw]
    if missing or raw["task"] not in TASKS:
        raise DataError(  # pragma: no cover - the descriptors ship with the package
            f"descriptor data/datasets/medmnist-{subset}.json lacks {', '.join(missing) or 'a known task'}; "
            "reinstall featcache."
        )
    return {"task": raw["task"], "n_channels": int(raw["n_channels"]), "n_samples": dict(raw["n_samples"])}


def check_against_info(path: Path, subset: str, split: str, images: np.ndarray) -> None:
    """Compare one split of a file with the official INFO facts of its descriptor.

    A grey file for an RGB set (colour lost, or another data set) is refused; an RGB file for a
    grey set (e.g. grey stored as three equal channels) and a split size that differs
    (subsets, synthetic test files) are allowed but logged as warnings naming the file, the
    split and both values, because figures from such a file are not comparable with the
    paper's. Label shapes are refused by :func:`_labels` (``[N]``/``[N, 1]``, or ``[N, C]``
    for ChestMNIST).
    """
    info = medmnist_info(subset)
    where = f"{path} [{split}]"
    channels = int(images.shape[3])
    if channels == 3 and info["n_channels"] == 1:
        log.warning(
            "%s: images have 3 channels, but official %s is grey (1 channel, medmnist INFO); "
            "they are used as they are.", where, subset,
        )
    elif channels != info["n_channels"]:
        raise DataError(
            f"{where}: images have {channels} channel(s), but official {subset} has {info['n_channels']} "
            f"(task {info['task']}); is this the right file for --subset {subset}?"
        )
    expected = int(info["n_samples"][split])
    if len(images) != expected:
        log.warning(
            "%s: %d rows, but official %s has %d in its %s split (medmnist INFO); figures from this "
            "file are not comparable with published MedMNIST results.",
            where, len(images), subset, expected, split,
        )


def find_npz(root: Path, subset: str, size: int | None) -> Path:
    """The npz file of ``subset`` at ``size`` under ``root`` (or ``root`` itself if it is a file)."""
    if root.is_file():
        return root
    if size is not None:
        names = [f"{subset}_{size}.npz"] + ([f"{subset}.npz"] if size == 28 else [])
        for name in names:
            if (root / name).is_file():
                return root / name
        raise DataError(f"MedMNIST file not found: expected {' or '.join(str(root / n) for n in names)}.")
    if (root / f"{subset}.npz").is_file():
        return root / f"{subset}.npz"
    sized = sorted(
        p for p in root.glob(f"{subset}_*.npz") if p.stem.removeprefix(f"{subset}_").isdigit()
    )
    if len(sized) == 1:
        return sized[0]
    if not sized:
        raise DataError(
            f"MedMNIST file not found: expected {root / (subset + '.npz')} or "
            f"{root / (subset + '_<size>.npz')} (sizes {', '.join(map(str, SIZES))})."
        )
    raise DataError(
        f"Several MedMNIST files for {subset} in {root} ({', '.join(p.name for p in sized)}); "
        "choose one with the size option."
    )


def download_npz(root: Path, subset: str, size: int) -> Path:
    """Fetch ``subset`` at ``size`` into ``root`` with the ``medmnist`` package (needs network)."""
    try:
        import medmnist
    except ImportError:
        raise FeatcacheError(
            "--download needs the medmnist package: pip install 'featcache[medmnist]' "
            "(or pip install medmnist), or put the npz files under --root yourself."
        ) from None
    root.mkdir(parents=True, exist_ok=True)
    info = medmnist.INFO[subset]
    data_class = getattr(medmnist, info["python_class"])
    try:
        data_class(split="train", download=True, root=str(root), size=size)
    except Exception as e:  # network / zenodo errors come in many kinds
        raise FeatcacheError(f"Downloading {subset} (size {size}) into {root} failed: {e}") from e
    return find_npz(root, subset, size)


def locate_files(root: str | Path | None, datasets: tuple[str, ...], sizes: tuple[int, ...], *,
                 download: bool = False) -> dict[tuple[str, int], Path]:
    """The npz file of every data set × size (``featcache bench medmnist``'s ``--root``,
    ``--datasets``, ``--sizes``); missing ones are downloaded (``download``) or reported together."""
    if root is None:
        raise FeatcacheError("featcache bench medmnist needs --root DIR (the folder of the MedMNIST npz files).")
    root = Path(root)
    found, missing = {}, []
    for subset in datasets:
        for size in sizes:
            try:
                found[(subset, size)] = find_npz(root, subset, size)
            except DataError as e:
                if download:
                    found[(subset, size)] = download_npz(root, subset, size)
                else:
                    missing.append(str(e))
    if missing:
        raise DataError(
            "\n".join(missing) + "\nPut the official MedMNIST npz files under --root, or pass "
            "--download (needs the medmnist package and network access)."
        )
    return found


def _labels(raw: np.ndarray, descriptor: Descriptor, where: str) -> np.ndarray:
    """Validate one split's labels: ``[N]`` int64 class indices, or ``[N, C]`` 0/1 for multi-label."""
    c = descriptor.num_classes
    if descriptor.multi_label:
        if raw.ndim != 2 or raw.shape[1] != c:
            raise DataError(f"{where}: labels have shape {raw.shape}; expected [N, {c}] (multi-label 0/1).")
        bad = ~np.isin(raw, (0, 1))
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise DataError(f"{where}: row {row} has labels {raw[row].tolist()}; expected only 0/1.")
        return raw.astype(np.int64)
    if raw.ndim == 2 and raw.shape[1] == 1:
        raw = raw[:, 0]
    if raw.ndim != 1:
        raise DataError(
            f"{where}: labels have shape {raw.shape}; expected [N] or [N, 1] class indices "
            f"({descriptor.name} has one label per image)."
        )
    bad = (raw < 0) | (raw >= c) | (raw != np.round(raw))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{where}: row {row} has label {raw[row]}; expected an integer in 0..{c - 1}.")
    return raw.astype(np.int64)


def _images(raw: np.ndarray, where: str) -> np.ndarray:
    """Validate one split's images and bring them to ``[N, H, W, C]`` uint8 (C = 1 grey, 3 RGB)."""
    if raw.dtype != np.uint8:
        raise DataError(f"{where}: images are {raw.dtype}; expected uint8.")
    if raw.ndim == 3:
        return raw[..., None]
    if raw.ndim == 4 and raw.shape[3] in (1, 3):
        return raw
    raise DataError(f"{where}: images have shape {raw.shape}; expected [N, H, W] or [N, H, W, 3].")


@DATASETS.register("medmnist")
def medmnist(root: Path | None, *, subset: str, size: int | None = None) -> Manifest:
    """MedMNIST v2 2D: <subset>.npz or <subset>_<size>.npz ({train,val,test}_{images,labels}) under root.

    ``subset`` (required) is one of the 12 2D sets, e.g. ``pneumoniamnist``; ``size``
    (28/64/128/224) picks ``<subset>_<size>.npz`` (default: the plain file, or the only one).
    """
    root = require_root(root, "medmnist")
    descriptor = medmnist_descriptor(subset)
    if size is not None and int(size) not in SIZES:
        raise DataError(f"MedMNIST size {size} is not available; choose from {', '.join(map(str, SIZES))}.")
    size = None if size is None else int(size)
    path = find_npz(root, subset, size)

    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"MedMNIST file {path} could not be read: {e}") from None
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    ids: list[str] = []
    sources: list[str] = []
    splits: list[str] = []
    with npz:
        present = [s for s in NPZ_SPLITS if f"{s}_images" in npz.files]
        if not present:
            raise DataError(
                f"MedMNIST file {path} has no {{train,val,test}}_images arrays (keys: {', '.join(npz.files)})."
            )
        for split in present:
            where = f"{path} [{split}]"
            if f"{split}_labels" not in npz.files:
                raise DataError(f"{where}: {split}_images has no matching {split}_labels array.")
            try:
                x = _images(npz[f"{split}_images"], where)
                y = _labels(npz[f"{split}_labels"], descriptor, where)
            except (OSError, ValueError, zipfile.BadZipFile) as e:
                raise DataError(f"{where}: could not be read: {e}") from None
            if len(x) != len(y):
                raise DataError(f"{where}: {len(x)} images but {len(y)} labels.")
            check_against_info(path, subset, split, x)
            if size is not None and x.shape[1:3] != (size, size):
                raise DataError(f"{where}: images are {x.shape[1]}x{x.shape[2]}, but size={size} was asked.")
            images.append(x)
            labels.append(y)
            ids += [f"{split}-{k}" for k in range(len(x))]
            sources += [f"{path.name}#{split}/{k}" for k in range(len(x))]
            splits += [split] * len(x)
    shapes = {x.shape[1:] for x in images}
    if len(shapes) > 1:
        raise DataError(f"MedMNIST file {path}: splits have different image shapes {sorted(shapes)}.")
    arrays = np.concatenate(images) if len(images) > 1 else images[0]  # [N, H, W, C] uint8
    return Manifest(
        descriptor=descriptor,
        ids=ids,
        sources=sources,
        labels=np.concatenate(labels),
        splits=splits,
        loader=ArrayLoader(arrays),
        arrays=arrays,
        options={"subset": subset, "size": int(arrays.shape[1]), "file": path.name},
    )
