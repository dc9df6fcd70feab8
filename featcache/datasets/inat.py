"""iNaturalist 2018: the official COCO-style ``train2018.json`` / ``val2018.json``.

Each json holds ``images`` (``id``, ``file_name`` relative to the image root),
``annotations`` (``image_id``, ``category_id``) and ``categories`` (``id``, ``name``).
Class ``k`` is the ``k``-th category id in increasing order; the validation set is the test
set (as in LIFT and every iNat2018 long-tail paper), so its rows get source split ``test``.
LIFT's class groups (many > 100, medium 20-100, few < 20 training images) are computed from
the training annotations. The descriptor carries LIFT's 20 fine-tuning epochs for this set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from featcache.datasets._io import (
    PathLoader,
    as_bool,
    lift_groups,
    missing_files_error,
    require_file,
)
from featcache.datasets.base import DATASETS, Descriptor, Manifest, require_root
from featcache.errors import DataError

JSON_SPLITS = (("train", "train2018.json"), ("test", "val2018.json"))


def _load_json(path: Path) -> dict:
    require_file(path, "iNaturalist 2018 annotation file")
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"iNaturalist 2018 annotation file {path} could not be read: {e}") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(d.get(key), list):
            raise DataError(f"{path} has no '{key}' list; expected the COCO-style iNat2018 json.")
    return d


@DATASETS.register("inat2018")
def inat2018(root: Path | None, *, annotations: str | Path | None = None, check_files: bool = True) -> Manifest:
    """iNaturalist 2018: train2018.json / val2018.json (COCO-style images, annotations, categories); val is the test split.

    ``annotations`` is the folder holding the two json files (default: root); image
    ``file_name`` paths are relative to root. ``check_files`` checks every image exists.
    """
    root = require_root(root, "inat2018")
    folder = Path(annotations).expanduser() if annotations is not None else root
    if not folder.is_absolute():
        folder = root / folder
    ids: list[str] = []
    paths: list[Path] = []
    cats: list[int] = []
    splits: list[str] = []
    where: list[str] = []
    categories: dict[int, str] = {}
    for split, filename in JSON_SPLITS:
        path = folder / filename
        if split == "test" and not path.is_file():
            continue
        d = _load_json(path)
        for cat in d["categories"]:
            categories.setdefault(int(cat["id"]), str(cat.get("name", cat["id"])))
        by_image: dict[int, int] = {}
        for k, ann in enumerate(d["annotations"]):
            image_id = ann.get("image_id")
            if image_id in by_image:
                raise DataError(
                    f"{path}, annotations[{k}]: image {image_id} has several labels "
                    f"({by_image[image_id]} and {ann.get('category_id')}); expected one per image."
                )
            by_image[image_id] = ann.get("category_id")
        for k, image in enumerate(d["images"]):
            image_id = image.get("id")
            if image_id not in by_image or by_image[image_id] is None:
                raise DataError(f"{path}, images[{k}]: image {image_id} ({image.get('file_name')}) has no label.")
            ids.append(str(image["file_name"]))
            paths.append(root / image["file_name"])
            cats.append(int(by_image[image_id]))
            splits.append(split)
            where.append(f"{path}, images[{k}]")

    cat_ids = sorted(categories)
    index = {c: k for k, c in enumerate(cat_ids)}
    for k, c in enumerate(cats):
        if c not in index:
            raise DataError(f"{where[k]}: category_id {c} is not among the file's categories.")
    labels = np.array([index[c] for c in cats], dtype=np.int64)
    seen: dict[str, int] = {}
    for k, image_id in enumerate(ids):
        if image_id in seen:
            raise DataError(f"{where[k]}: duplicate image '{image_id}' (first at {where[seen[image_id]]}).")
        seen[image_id] = k
    if as_bool(check_files, "check_files"):
        missing = [(where[k], str(p)) for k, p in enumerate(paths) if not os.path.isfile(p)]
        if missing:
            raise missing_files_error(f"the iNat2018 json files in {folder} (image root {root})", missing, len(paths))

    class_ids = tuple(str(c) for c in cat_ids)
    train_counts = np.bincount(labels[np.array(splits) == "train"], minlength=len(cat_ids))
    descriptor = Descriptor(
        name="inat2018",
        class_ids=class_ids,
        class_names=tuple(categories[c] for c in cat_ids),
        data_type="nature",
        protocol="lift",
        groups=lift_groups(train_counts, class_ids),
        source=f"iNaturalist 2018 json files in {folder}",
        # LIFT trains iNat2018 for 20 epochs (shijxcs/LIFT scripts/run_tab1to4_main_results.sh:10,
        # `num_epochs 20`), every other set for its config's 10 (configs/model/clip_vit_b16.yaml:13)
        finetune_epochs=20,
    )
    return Manifest(
        descriptor=descriptor,
        ids=ids,
        sources=[str(p) for p in paths],
        labels=labels,
        splits=splits,
        loader=PathLoader(paths),
        options={"annotations": str(folder)},
    )
