"""APTOS 2019 Blindness Detection: 3,662 fundus photographs graded 0-4 for diabetic retinopathy.

Layout: ``train.csv`` (``id_code,diagnosis``) beside ``train_images/<id_code>.png``. There is
no official test split with labels (source split ``""``); the ``tfa-lt`` protocol carves a
class-balanced test set of 150 images per grade out of it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from featcache.datasets._io import (
    PathLoader,
    missing_files_error,
    read_csv_rows,
    require_dir,
    require_file,
)
from featcache.datasets.base import DATASETS, Manifest, load_descriptor, require_root
from featcache.errors import DataError


@DATASETS.register("aptos2019")
def aptos2019(root: Path | None, *, csv: str | Path = "train.csv", images: str | Path = "train_images") -> Manifest:
    """APTOS 2019: train.csv (id_code,diagnosis 0-4) + train_images/<id_code>.png.

    ``csv`` and ``images`` name the label file and the image folder (relative to root).
    """
    root = require_root(root, "aptos2019")
    descriptor = load_descriptor("aptos2019")
    if descriptor is None:  # pragma: no cover - the descriptor ships with the package
        raise DataError("descriptor data/datasets/aptos2019.json is missing from this install.")
    csv_path = require_file(root / csv, "APTOS 2019 label file")
    image_dir = require_dir(root / images, "APTOS 2019 image folder")
    present = set(os.listdir(image_dir))

    ids: list[str] = []
    labels: list[int] = []
    paths: list[Path] = []
    first_line: dict[str, int] = {}
    missing: list[tuple[str, str]] = []
    for line, row in read_csv_rows(csv_path, ("id_code", "diagnosis")):
        image_id, grade = row["id_code"], row["diagnosis"]
        if not image_id:
            raise DataError(f"{csv_path}, line {line}: empty id_code.")
        if not grade:
            raise DataError(f"{csv_path}, line {line}: image {image_id} has no label (empty diagnosis).")
        if any(sep in grade for sep in ";|,") or " " in grade:
            raise DataError(
                f"{csv_path}, line {line}: image {image_id} has several labels '{grade}'; "
                "expected one grade 0-4."
            )
        label = descriptor.class_index(grade, where=f"{csv_path}, line {line} (column diagnosis)")
        if image_id in first_line:
            raise DataError(
                f"{csv_path}, line {line}: duplicate id_code '{image_id}' "
                f"(first on line {first_line[image_id]})."
            )
        first_line[image_id] = line
        name = f"{image_id}.png"
        if name not in present:
            missing.append((f"line {line}", str(image_dir / name)))
        ids.append(image_id)
        labels.append(label)
        paths.append(image_dir / name)
    if missing:
        raise missing_files_error(str(csv_path), missing, len(ids))

    return Manifest(
        descriptor=descriptor,
        ids=ids,
        sources=[str(p) for p in paths],
        labels=np.array(labels, dtype=np.int64),
        splits=[""] * len(ids),
        loader=PathLoader(paths),
        options={"csv": str(csv), "images": str(images)},
    )
