"""Any image folder with one subfolder per class (torchvision's ImageFolder layout).

``root/<class>/*.jpg`` (images may sit in deeper subfolders of a class folder), or with
source splits ``root/{train,val,test}/<class>/...``. Class ids are the sorted folder names;
readable names replace ``_`` with a space.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from featcache.datasets._io import IMAGE_EXTENSIONS, PathLoader, list_images, readable
from featcache.datasets.base import DATASETS, Descriptor, Manifest, require_root
from featcache.errors import DataError

SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


@DATASETS.register("folder")
def folder(root: Path | None, *, data_type: str = "medical") -> Manifest:
    """Image folder: root/<class>/*.{jpg,jpeg,png,bmp,tif,tiff}, optionally root/{train,val,test}/<class>/.

    ``data_type`` is the image type used in prompts ("The category of this {data_type}
    image is ..."). Split folders are detected when every subfolder of root is a split name
    (train, val/valid/validation, test).
    """
    root = require_root(root, "folder")
    if not root.is_dir():
        raise DataError(f"--root {root} is not a folder; expected root/<class>/<images>.")
    top = _subfolders(root)
    if not top:
        raise DataError(f"No class folders in {root}; expected root/<class>/<images> or root/train/<class>/<images>.")
    split_layout = all(p.name.lower() in SPLIT_FOLDERS for p in top)
    # (split, class folder) pairs
    class_dirs = (
        [(SPLIT_FOLDERS[s.name.lower()], c) for s in top for c in _subfolders(s)]
        if split_layout
        else [("", c) for c in top]
    )
    if not class_dirs:
        raise DataError(f"Split folders {', '.join(p.name for p in top)} in {root} hold no class folders.")
    class_ids = tuple(sorted({c.name for _, c in class_dirs}))
    index = {c: k for k, c in enumerate(class_ids)}

    paths: list[Path] = []
    labels: list[int] = []
    splits: list[str] = []
    for split, class_dir in class_dirs:
        images = list_images(class_dir)
        paths += images
        labels += [index[class_dir.name]] * len(images)
        splits += [split] * len(images)
    descriptor = Descriptor(
        name="folder",
        class_ids=class_ids,
        class_names=tuple(readable(c) for c in class_ids),
        data_type=data_type,
        protocol="official" if split_layout else None,
        source=str(root),
    )
    if not paths:
        raise DataError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) under the class folders of {root}.")
    return Manifest(
        descriptor=descriptor,
        ids=[p.relative_to(root).as_posix() for p in paths],
        sources=[str(p) for p in paths],
        labels=np.array(labels, dtype=np.int64),
        splits=splits,
        loader=PathLoader(paths),
        options={"data_type": data_type},
    )
