"""ISIC 2018 Task 3 (= HAM10000): 10,015 dermoscopy images, 7 classes.

Two packagings are read, detected automatically:

- official: ``ISIC2018_Task3_Training_Input/*.jpg`` and
  ``ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv``
  (``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC``, one-hot floats);
- HAM10000: ``HAM10000_metadata.csv`` (``lesion_id,image_id,dx,...``; ``dx`` lowercase) with
  the images ``<image_id>.jpg`` in any subfolder of the root.

There is no official test split here (source split ``""``); the ``tfa-lt`` protocol carves a
class-balanced test set of 60 images per class out of it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from featcache.datasets._io import PathLoader, index_images, missing_files_error, read_csv_rows
from featcache.datasets.base import DATASETS, Descriptor, Manifest, load_descriptor, require_root
from featcache.errors import DataError, unknown

GROUND_TRUTH = "ISIC2018_Task3_Training_GroundTruth.csv"
INPUT_DIR = "ISIC2018_Task3_Training_Input"
HAM_METADATA = "HAM10000_metadata.csv"
LAYOUTS = ("auto", "official", "ham10000")


def _find(root: Path, filename: str) -> Path | None:
    """``root/filename``, else the shallowest ``**/filename`` under root, else ``None``."""
    if (root / filename).is_file():
        return root / filename
    hits = sorted(root.rglob(filename), key=lambda p: (len(p.parts), str(p)))
    return hits[0] if hits else None


def _descriptor() -> Descriptor:
    descriptor = load_descriptor("isic2018")
    if descriptor is None:  # pragma: no cover - the descriptor ships with the package
        raise DataError("descriptor data/datasets/isic2018.json is missing from this install.")
    return descriptor


def _official_rows(csv_path: Path, descriptor: Descriptor) -> list[tuple[int, str, int]]:
    """``(line, image_id, label)`` for each row of the one-hot ground-truth CSV."""
    rows = []
    columns = descriptor.class_ids
    for line, row in read_csv_rows(csv_path, ("image", *columns)):
        image_id = row["image"]
        if not image_id:
            raise DataError(f"{csv_path}, line {line}: empty image id.")
        try:
            onehot = np.array([float(row[c]) for c in columns])
        except ValueError:
            cells = ",".join(row[c] for c in columns)
            raise DataError(
                f"{csv_path}, line {line}: label cells '{cells}' for {image_id} are not numbers; "
                "expected one-hot 0.0/1.0 values."
            ) from None
        if not (np.isclose(onehot, 0.0) | np.isclose(onehot, 1.0)).all():  # soft, negative or NaN cells
            cells = ",".join(row[c] for c in columns)
            raise DataError(
                f"{csv_path}, line {line}: label cells '{cells}' for {image_id} are not all 0.0 or 1.0; "
                "soft or negative labels are not supported (expected one-hot 0.0/1.0 values)."
            )
        positives = np.flatnonzero(onehot > 0.5)
        if len(positives) != 1 or not np.isclose(onehot.sum(), 1.0):
            what = "no label" if len(positives) == 0 else f"several labels ({', '.join(columns[k] for k in positives)})"
            raise DataError(
                f"{csv_path}, line {line}: image {image_id} has {what}; "
                f"expected exactly one 1.0 among {', '.join(columns)}."
            )
        rows.append((line, image_id, int(positives[0])))
    return rows


def _ham_rows(csv_path: Path, descriptor: Descriptor) -> list[tuple[int, str, int]]:
    """``(line, image_id, label)`` for each row of ``HAM10000_metadata.csv`` (``dx`` column)."""
    rows = []
    for line, row in read_csv_rows(csv_path, ("image_id", "dx")):
        image_id, dx = row["image_id"], row["dx"]
        if not image_id:
            raise DataError(f"{csv_path}, line {line}: empty image_id.")
        if not dx:
            raise DataError(f"{csv_path}, line {line}: image {image_id} has no label (empty dx).")
        label = descriptor.class_index(dx, where=f"{csv_path}, line {line} (column dx)")
        rows.append((line, image_id, label))
    return rows


@DATASETS.register("isic2018")
def isic2018(root: Path | None, *, layout: str = "auto") -> Manifest:
    """ISIC2018 Task 3 / HAM10000: official GroundTruth CSV + Input/*.jpg, or HAM10000_metadata.csv + <image_id>.jpg anywhere under root.

    ``layout`` is ``auto`` (the official ground truth if present, else the HAM10000
    metadata), ``official`` or ``ham10000``.
    """
    root = require_root(root, "isic2018")
    if layout not in LAYOUTS:
        raise unknown("isic2018 layout", layout, LAYOUTS)
    descriptor = _descriptor()
    official = _find(root, GROUND_TRUTH) if layout in ("auto", "official") else None
    ham = _find(root, HAM_METADATA) if layout in ("auto", "ham10000") and official is None else None
    if official is not None:
        csv_path, rows = official, _official_rows(official, descriptor)
        image_dir = root / INPUT_DIR if (root / INPUT_DIR).is_dir() else root
    elif ham is not None:
        csv_path, rows = ham, _ham_rows(ham, descriptor)
        image_dir = root
    else:
        wanted = {"auto": f"{GROUND_TRUTH} or {HAM_METADATA}", "official": GROUND_TRUTH, "ham10000": HAM_METADATA}
        raise DataError(f"No ISIC2018 labels found under {root}: expected {wanted[layout]}.")

    index = index_images(image_dir, (".jpg", ".jpeg"))
    first_line: dict[str, int] = {}
    paths: list[Path] = []
    missing: list[tuple[str, str]] = []
    for line, image_id, _ in rows:
        if image_id in first_line:
            raise DataError(
                f"{csv_path}, line {line}: duplicate image id '{image_id}' "
                f"(first on line {first_line[image_id]})."
            )
        first_line[image_id] = line
        hits = index.get(image_id, [])
        if len(hits) > 1:
            raise DataError(
                f"{csv_path}, line {line}: image id '{image_id}' matches several files "
                f"({', '.join(map(str, hits))}); keep one."
            )
        if not hits:
            missing.append((f"line {line}", f"{image_id}.jpg"))
        else:
            paths.append(hits[0])
    if missing:
        raise missing_files_error(f"{csv_path} (searched {image_dir} recursively)", missing, len(rows))

    return Manifest(
        descriptor=descriptor,
        ids=[image_id for _, image_id, _ in rows],
        sources=[str(p) for p in paths],
        labels=np.array([label for _, _, label in rows], dtype=np.int64),
        splits=[""] * len(rows),
        loader=PathLoader(paths),
        options={"layout": "official" if official is not None else "ham10000"},
    )
