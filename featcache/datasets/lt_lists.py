"""ImageNet-LT and Places-LT: path-label list files (as in OLTR, decoupling and LIFT).

Each list file line is ``relative/path.jpg label`` (label = class index); paths are relative
to the image root. Files: ``ImageNet_LT_{train,val,test}.txt`` / ``Places_LT_{train,val,test}.txt``
(train required, val and test read when present). Class names come from an optional
``classnames.txt`` in LIFT's format (one line per class in label order, ``<folder> <name ...>``,
or just ``<name>``); underscores become spaces (``airplane_cabin`` -> ``airplane cabin``), as
LIFT does when it builds its prompts (shijxcs/LIFT trainer.py:306,
``template.format(c.replace("_", " "))``). Without the file the names are placeholders
``class N`` and a warning says so: they are no use in a prompt, so ``featcache finetune
--init text`` refuses them (:func:`has_placeholder_names`). LIFT's class groups (many > 100, medium 20-100,
few < 20 training images) are computed from the training list.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from featcache.datasets._io import (
    PathLoader,
    as_bool,
    lift_groups,
    missing_files_error,
    readable,
    require_file,
)
from featcache.datasets.base import DATASETS, Descriptor, Manifest, require_root
from featcache.errors import DataError

LIST_SPLITS = ("train", "val", "test")
PLACEHOLDER_NAME = "class {}"  # the names of a list data set without classnames.txt

log = logging.getLogger(__name__)


def has_placeholder_names(class_names: tuple[str, ...] | list[str]) -> bool:
    """True when the names are exactly ``class 0 .. class C-1`` (no classnames.txt was found)."""
    return list(class_names) == [PLACEHOLDER_NAME.format(c) for c in range(len(class_names))]


def read_list_file(path: Path) -> list[tuple[int, str, int]]:
    """``(line, relative_path, label)`` for each non-blank line of a path-label list file."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) == 1:
                raise DataError(f"{path}, line {line_no}: '{line.strip()}' has no label; expected 'path label'.")
            if len(parts) > 2:
                raise DataError(
                    f"{path}, line {line_no}: '{line.strip()}' has several labels or a path with spaces; "
                    "expected 'path label'."
                )
            rel, label = parts
            if not label.isdigit():
                raise DataError(f"{path}, line {line_no}: label '{label}' is not a class index (0, 1, ...).")
            rows.append((line_no, rel, int(label)))
    return rows


def read_classnames(path: Path) -> list[str]:
    """Class names in label order from LIFT's ``classnames.txt`` (``<folder> <name ...>`` or ``<name>``)."""
    names = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if parts:
                names.append(readable(" ".join(parts[1:]) if len(parts) > 1 else parts[0]))
    return names


def lt_list_manifest(
    root: Path,
    *,
    name: str,
    prefix: str,
    lists: Path,
    classnames: Path | None,
    data_type: str,
    check_files: bool,
) -> Manifest:
    """Manifest of a ``<prefix>_{train,val,test}.txt`` data set (shared by imagenet-lt and places-lt)."""
    files = {s: lists / f"{prefix}_{s}.txt" for s in LIST_SPLITS}
    require_file(files["train"], f"{name} training list")
    ids: list[str] = []
    paths: list[Path] = []
    labels: list[int] = []
    splits: list[str] = []
    where: list[str] = []
    for split, path in files.items():
        if not path.is_file():
            continue
        for line, rel, label in read_list_file(path):
            ids.append(rel)
            paths.append(root / rel)
            labels.append(label)
            splits.append(split)
            where.append(f"{path}, line {line}")

    if classnames is None and (lists / "classnames.txt").is_file():
        classnames = lists / "classnames.txt"
    names = read_classnames(require_file(classnames, "class name file")) if classnames else None
    num_classes = len(names) if names else max(labels) + 1
    if names is None:
        log.warning(
            "%s: no classnames.txt in %s and no classnames option, so the %d classes are named "
            "'class 0' .. 'class %d'. Prompts built from them mean nothing: put LIFT's classnames.txt "
            "(github.com/shijxcs/LIFT, datasets/%s/classnames.txt) there or pass --option classnames=FILE.",
            name, lists, num_classes, num_classes - 1, prefix,
        )
    label_arr = np.array(labels, dtype=np.int64)
    bad = np.flatnonzero(label_arr >= num_classes)
    if len(bad):
        k = int(bad[0])
        raise DataError(
            f"{where[k]}: label {labels[k]}, but {classnames} lists only {num_classes} classes "
            f"(labels 0..{num_classes - 1})."
        )
    seen: dict[str, int] = {}
    for k, image_id in enumerate(ids):
        if image_id in seen:
            raise DataError(f"{where[k]}: duplicate image '{image_id}' (first at {where[seen[image_id]]}).")
        seen[image_id] = k
    if as_bool(check_files, "check_files"):
        missing = [(where[k], str(p)) for k, p in enumerate(paths) if not os.path.isfile(p)]
        if missing:
            raise missing_files_error(f"the {name} lists in {lists} (image root {root})", missing, len(paths))

    class_ids = tuple(str(c) for c in range(num_classes))
    train_counts = np.bincount(label_arr[np.array(splits) == "train"], minlength=num_classes)
    descriptor = Descriptor(
        name=name,
        class_ids=class_ids,
        class_names=tuple(names) if names else tuple(PLACEHOLDER_NAME.format(c) for c in range(num_classes)),
        data_type=data_type,
        protocol="lift",
        groups=lift_groups(train_counts, class_ids),
        source=f"{name} list files in {lists}",
    )
    return Manifest(
        descriptor=descriptor,
        ids=ids,
        sources=[str(p) for p in paths],
        labels=label_arr,
        splits=splits,
        loader=PathLoader(paths),
        options={"lists": str(lists), "classnames": str(classnames) if classnames else None},
    )


def _resolve(root: Path, value: str | Path | None) -> Path | None:
    if value is None:
        return None
    p = Path(value).expanduser()
    return p if p.is_absolute() else root / p


@DATASETS.register("imagenet-lt")
def imagenet_lt(
    root: Path | None,
    *,
    lists: str | Path | None = None,
    classnames: str | Path | None = None,
    check_files: bool = True,
) -> Manifest:
    """ImageNet-LT: ImageNet_LT_{train,val,test}.txt ('relative/path.JPEG label' lines) + the images under root.

    ``lists`` is the folder holding the list files (default: root); ``classnames`` a
    ``classnames.txt`` (default: ``<lists>/classnames.txt`` if present, else ``class N`` with a
    warning; ``finetune --init text`` then refuses to train);
    ``check_files`` checks that every listed image exists (one ``stat`` per image).
    """
    root = require_root(root, "imagenet-lt")
    return lt_list_manifest(
        root,
        name="imagenet-lt",
        prefix="ImageNet_LT",
        lists=_resolve(root, lists) or root,
        classnames=_resolve(root, classnames),
        data_type="photo",
        check_files=check_files,
    )


@DATASETS.register("places-lt")
def places_lt(
    root: Path | None,
    *,
    lists: str | Path | None = None,
    classnames: str | Path | None = None,
    check_files: bool = True,
) -> Manifest:
    """Places-LT: Places_LT_{train,val,test}.txt ('relative/path.jpg label' lines) + the images under root.

    Options as for ``imagenet-lt``.
    """
    root = require_root(root, "places-lt")
    return lt_list_manifest(
        root,
        name="places-lt",
        prefix="Places_LT",
        lists=_resolve(root, lists) or root,
        classnames=_resolve(root, classnames),
        data_type="scene",
        check_files=check_files,
    )
