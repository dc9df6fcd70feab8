"""Any image set described by a CSV file: one row per image with its path and label.

Columns ``path,label`` and optionally ``split`` (train/val/test, or empty) and ``id``.
Paths are relative to ``--root`` or, failing that, to the CSV's own folder. A path that
points outside both (an absolute path elsewhere, or ``../`` climbing out) is refused unless
the option ``allow_outside_root=true`` is given: a CSV from someone else should not make
featcache read arbitrary files. The check is on the written path, normalised (symbolic
links inside the root are followed, since whoever made the root placed them). Class ids
are the sorted distinct labels; readable names replace ``_`` with a space.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from featcache.datasets._io import (
    PathLoader,
    as_bool,
    missing_files_error,
    read_csv_rows,
    readable,
    require_file,
)
from featcache.datasets.base import DATASETS, Descriptor, Manifest
from featcache.errors import DataError, did_you_mean

SPLIT_VALUES = {"": "", "train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
MULTI_LABEL_SEPARATORS = (";", "|", ",")


def _class_list(classes: str | list[str] | None) -> tuple[str, ...] | None:
    """The ``classes`` option as a tuple of ids (``None`` when not given)."""
    if classes is None:
        return None
    if isinstance(classes, int | float) and not isinstance(classes, bool):
        classes = str(classes)  # --option classes=5 arrives as a number: one class id "5"
    if not isinstance(classes, str | list | tuple):
        raise DataError(f"The classes option must be class ids separated by commas, got {classes!r}.")
    items = classes.split(",") if isinstance(classes, str) else [str(c) for c in classes]
    ids = tuple(c.strip() for c in items if c.strip())
    if not ids:
        raise DataError("The classes option is empty; give class ids separated by commas.")
    repeated = sorted({c for c in ids if ids.count(c) > 1})
    if repeated:
        raise DataError(f"The classes option names {', '.join(repeated)} more than once.")
    return ids


def _refuse_outside(candidates: list[Path], inside: list[str], what: str) -> None:
    """Refuse when every candidate location of an image lies outside the data roots ``inside``."""
    for p in candidates:
        full = os.path.normpath(os.path.abspath(p))
        if any(full == b or full.startswith(b.rstrip(os.sep) + os.sep) for b in inside):
            return
    raise DataError(
        f"{what} points outside the data root ({' and '.join(inside)}). Images of a CSV list "
        "must lie under --root or the CSV's folder; if these paths are meant, pass "
        "--option allow_outside_root=true."
    )


@DATASETS.register("csv")
def csv_list(
    root: Path | None,
    *,
    csv: str | Path,
    data_type: str = "medical",
    classes: str | list[str] | None = None,
    allow_outside_root: bool | str = False,
) -> Manifest:
    """CSV list: a file with columns path,label[,split][,id]; paths relative to root or the CSV's folder.

    ``csv`` (required) is the CSV file (relative to root, or absolute); ``data_type`` the
    image type used in prompts; ``classes`` (a list, or a comma-separated string) fixes the
    class ids and their order, so a label outside it is refused and a listed class with no
    rows is reported as empty. One label per row: empty labels and cells holding several
    labels (``a;b``, ``a|b``) are refused, as are unknown split values and missing files.
    ``allow_outside_root`` admits image paths outside ``root`` and the CSV's folder
    (refused by default).
    """
    csv_path = Path(csv).expanduser()
    if not csv_path.is_absolute() and root is not None and (root / csv_path).is_file():
        csv_path = root / csv_path
    require_file(csv_path, "CSV list")
    fixed = _class_list(classes)
    bases = [b for b in (root, csv_path.parent) if b is not None]
    outside_ok = as_bool(allow_outside_root, "allow_outside_root")
    inside = [os.path.normpath(os.path.abspath(b)) for b in bases]

    rows: list[tuple[int, str, str, str, Path]] = []  # line, id, label, split, path
    first_line: dict[str, int] = {}
    missing: list[tuple[str, str]] = []
    for line, row in read_csv_rows(csv_path, ("path", "label")):
        rel, label = row["path"], row["label"]
        where = f"{csv_path}, line {line}"
        if not rel:
            raise DataError(f"{where}: empty path.")
        if not label:
            raise DataError(f"{where}: image {rel} has no label (empty label cell).")
        if any(sep in label for sep in MULTI_LABEL_SEPARATORS):
            raise DataError(
                f"{where}: image {rel} has several labels '{label}'; this adapter takes one label per image."
            )
        if fixed is not None and label not in fixed:
            raise DataError(
                f"{where}: unknown class '{label}'.{did_you_mean(label, fixed)} "
                f"Expected one of: {', '.join(fixed)}."
            )
        split_cell = row.get("split", "")
        if split_cell.lower() not in SPLIT_VALUES:
            raise DataError(
                f"{where}: unknown split '{split_cell}'; expected train, val, test or an empty cell."
            )
        image_id = row.get("id", "") or rel
        if image_id in first_line:
            raise DataError(f"{where}: duplicate image id '{image_id}' (first on line {first_line[image_id]}).")
        first_line[image_id] = line
        candidates = [Path(rel).expanduser()] if Path(rel).is_absolute() else [b / rel for b in bases]
        if not outside_ok:
            _refuse_outside(candidates, inside, f"{where}: image path '{rel}'")
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            missing.append((f"line {line}", " or ".join(map(str, candidates))))
            path = candidates[0]
        rows.append((line, image_id, label, SPLIT_VALUES[split_cell.lower()], path))
    if missing:
        raise missing_files_error(str(csv_path), missing, len(rows))
    if not rows:
        raise DataError(f"CSV list {csv_path} has no rows.")

    class_ids = fixed or tuple(sorted({label for _, _, label, _, _ in rows}))
    index = {c: k for k, c in enumerate(class_ids)}
    has_splits = any(split for _, _, _, split, _ in rows)
    descriptor = Descriptor(
        name="csv",
        class_ids=class_ids,
        class_names=tuple(readable(c) for c in class_ids),
        data_type=data_type,
        protocol="official" if has_splits else None,
        source=str(csv_path),
    )
    paths = [path for *_, path in rows]
    return Manifest(
        descriptor=descriptor,
        ids=[image_id for _, image_id, _, _, _ in rows],
        sources=[str(p) for p in paths],
        labels=np.array([index[label] for _, _, label, _, _ in rows], dtype=np.int64),
        splits=[split for _, _, _, split, _ in rows],
        loader=PathLoader(paths),
        options={"csv": str(csv), "data_type": data_type, "classes": list(class_ids),
                 **({"allow_outside_root": True} if outside_ok else {})},
    )
