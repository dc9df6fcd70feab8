"""Build a cache from features computed elsewhere (``featcache import-features``).

Input: an ``.npz`` with ``features`` [N, D] or [N, V, D], ``labels`` [N], and optionally
``ids`` [N], ``class_names`` [C], ``text_features`` [C, D] and ``split`` [N]
(train|val|test); or a parquet table with the same columns (``features`` a list column).
With ``--dataset NAME`` the data set's descriptor is attached (class names matched
case-insensitively, e.g. HAM10000's ``nv`` to ISIC2018's ``NV``), so its protocols run on
any encoder's embeddings. Multi-view inputs name their views in ``views`` (default:
``standard`` then the five TTE crops when V = 6).

Everything is validated before a cache is written: no array is ever unpickled (object arrays
are refused), features must be finite numbers with N ≥ 1 rows and D ≥ 1 columns, labels are
class indices, class names (in ``class_names`` order when given), ``[N, 1]`` indices or
``[N, C]`` one-hot rows (multi-hot only for a multi-label ``--dataset``); soft, negative or
fractional labels and duplicate class names are refused, naming the row.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featcache.cache import CacheHeader, OutputLock, check_out, fingerprint_of, write_cache
from featcache.datasets.base import Descriptor, load_descriptor
from featcache.errors import DataError, FeatcacheError
from featcache.preprocess import TTE_VIEWS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImportConfig:
    """Settings of ``featcache import-features``."""

    source: str
    out: str | None = None
    dataset: str | None = None
    overwrite: bool = False


def _read(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` (never unpickled: ``allow_pickle=False``) or parquet table."""
    if not path.is_file():
        raise DataError(f"Feature file {path} does not exist." if not path.exists() else f"Feature file {path} is not a regular file.")
    if path.suffix == ".npz":
        out = {}
        try:
            with np.load(path, allow_pickle=False) as z:
                for k in z.files:
                    try:
                        out[k] = z[k]
                    except ValueError as e:  # object arrays need pickle, which is refused
                        raise DataError(
                            f"{path}: array '{k}' cannot be read without unpickling ({e}); featcache never "
                            "unpickles imported files. Save it as a plain numeric or string array "
                            "(e.g. np.asarray(x, dtype=np.float32) or dtype=str)."
                        ) from None
        except (OSError, EOFError, zipfile.BadZipFile, ValueError) as e:
            raise DataError(f"Feature file {path} is not a readable .npz archive ({e}).") from None
        return out
    if path.suffix == ".parquet":
        import polars as pl

        try:
            df = pl.read_parquet(path)
        except Exception as e:  # polars raises its own exception types for a bad file
            raise DataError(f"Feature file {path} is not a readable parquet table ({type(e).__name__}: {e}).") from None
        out = {}
        for col in df.columns:
            series = df[col]
            if isinstance(series.dtype, (pl.List, pl.Array)):
                rows = series.to_list()
                lengths = {len(r) if r is not None else -1 for r in rows}
                if len(lengths) > 1:
                    raise DataError(
                        f"{path}: column '{col}' is ragged (rows of lengths {sorted(lengths)[:5]}); every "
                        "row must have the same length."
                    )
                out[col] = np.array(rows) if rows else np.zeros((0, 0))
            else:
                out[col] = series.to_numpy()
        return out
    raise DataError(f"Feature file {path} must be .npz or .parquet, not '{path.suffix}'.")


def _labels_2d(raw: np.ndarray, names: list[str], desc: Descriptor | None, path: Path) -> np.ndarray:
    """[N, 1] labels -> [N]; [N, C] one-hot -> [N] class indices; [N, C] multi-hot stays
    (for a multi-label data set). Soft, negative or other values are refused."""
    if raw.shape[1] == 1:
        log.warning("%s: labels of shape %s taken as one class index per row", path, raw.shape)
        return raw[:, 0]
    values = raw.astype(np.float64)
    if not np.isin(values, (0.0, 1.0)).all():
        r = int(np.flatnonzero(~np.isin(values, (0.0, 1.0)).all(axis=1))[0])
        raise DataError(
            f"{path}: labels are [N, {raw.shape[1]}] but row {r} ({raw[r].tolist()[:8]}) is not 0/1; "
            "soft or negative labels are not supported. Give one class index per row, or 0/1 rows."
        )
    positives = values.sum(axis=1)
    if desc is not None and desc.multi_label:
        return values.astype(np.uint8)
    if (positives == 1).all():
        log.warning("%s: one-hot labels [N, %d] taken as class indices", path, raw.shape[1])
        return values.argmax(axis=1).astype(np.int64)
    r = int(np.flatnonzero(positives != 1)[0])
    raise DataError(
        f"{path}: labels are [N, {raw.shape[1]}] and row {r} has {int(positives[r])} positive classes; "
        "one-hot rows need exactly one 1. For a multi-label data set pass --dataset with a multi-label "
        "descriptor (e.g. chestmnist)."
    )


def _labels_to_indices(raw: np.ndarray, names: list[str], desc: Descriptor | None, path: Path) -> tuple[np.ndarray, Descriptor]:
    """Integer labels [N] (or multi-hot [N, C]) and the descriptor, from integer, one-hot or string labels."""
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"{path}: class_names lists '{dup}' twice; class names must be unique.")
    if raw.ndim == 2 and raw.dtype.kind in "iufb":
        raw = _labels_2d(raw, names, desc, path)
        if raw.ndim == 2:  # multi-hot for a multi-label descriptor
            if raw.shape[1] != desc.num_classes:
                raise DataError(f"{path}: labels have {raw.shape[1]} columns but {desc.name} has {desc.num_classes} classes.")
            return raw, desc
    if raw.ndim != 1:
        raise DataError(f"{path}: 'labels' must be [N] (or [N, C] one-hot), got shape {raw.shape}.")
    if raw.dtype.kind == "b":
        raw = raw.astype(np.int64)
    if raw.dtype.kind == "f":
        if not (np.isfinite(raw).all() and (raw == np.round(raw)).all()):
            r = int(np.flatnonzero(~np.isfinite(raw) | (raw != np.round(raw)))[0])
            raise DataError(f"{path}: label {raw[r]} of row {r} is not a whole number; expected class indices.")
        raw = raw.astype(np.int64)
    if raw.dtype.kind not in "iuUS":
        raise DataError(f"{path}: 'labels' has dtype {raw.dtype}; expected integer class indices or class names.")
    if raw.dtype.kind in "iu":
        labels = raw.astype(np.int64)
        if len(labels) and labels.min() < 0:
            r = int(np.argmin(labels))
            raise DataError(f"{path}: label {labels[r]} of row {r} is negative; expected class indices 0..C-1.")
        if desc is None:
            names = names or [f"class {c}" for c in range(int(labels.max()) + 1)]
            desc = Descriptor(name=path.stem, class_ids=tuple(names), class_names=tuple(names))
        elif names:  # the file's own class order: re-map to the descriptor's, by name
            if len(names) != desc.num_classes:
                raise DataError(
                    f"{path}: {len(names)} class_names but data set {desc.name} has "
                    f"{desc.num_classes} classes ({', '.join(desc.class_ids)})."
                )
            order = np.array([desc.class_index(n, where=str(path)) for n in names], dtype=np.int64)
            if len(set(order.tolist())) != len(order):
                raise DataError(f"{path}: two class_names match the same class of {desc.name} ({names}).")
            if labels.min() < 0 or labels.max() >= len(names):
                raise DataError(f"{path}: labels must lie in [0, {len(names) - 1}].")
            labels = order[labels]
        if labels.min() < 0 or labels.max() >= desc.num_classes:
            raise DataError(
                f"{path}: labels must lie in [0, {desc.num_classes - 1}] for {desc.name}; "
                f"found {int(labels.min())}..{int(labels.max())}."
            )
        return labels, desc
    strings = [str(s) for s in raw]
    if desc is None:
        uniq = names or sorted(set(strings))
        desc = Descriptor(name=path.stem, class_ids=tuple(uniq), class_names=tuple(uniq))
    labels = np.array([desc.class_index(s, where=f"{path} row {i}") for i, s in enumerate(strings)], dtype=np.int64)
    return labels, desc


def run(cfg: ImportConfig) -> Path:
    """Write a cache from ``cfg.source``; returns its path."""
    path = Path(cfg.source)
    data = _read(path)
    for key in ("features", "labels"):
        if key not in data:
            raise DataError(f"{path} has no '{key}' array (it has: {', '.join(sorted(data))}).")
    raw = np.asarray(data["features"])
    if raw.dtype.kind not in "fiub":
        raise DataError(f"{path}: 'features' has dtype {raw.dtype}; expected numbers (float32).")
    feats = raw.astype(np.float32)
    if feats.ndim == 2:
        feats = feats[:, None, :]
    if feats.ndim != 3:
        raise DataError(f"{path}: 'features' must be [N, D] or [N, V, D], got shape {feats.shape}.")
    n, v, d = feats.shape
    if n == 0:
        raise DataError(f"{path}: 'features' has no rows (shape {raw.shape}).")
    if d == 0 or v == 0:
        raise DataError(f"{path}: 'features' are zero-dimensional (shape {raw.shape}); expected [N, D] with D ≥ 1.")
    finite = np.isfinite(feats).reshape(n, -1).all(axis=1)
    if not finite.all():
        r = int(np.argmin(finite))
        raise DataError(
            f"{path}: features of row {r} are not finite (NaN or inf); {int((~finite).sum())} row(s) are. "
            "Fix or drop them before importing."
        )
    if np.ndim(data["labels"]) == 0 or len(data["labels"]) != n:
        raise DataError(f"{path}: {np.size(data['labels'])} labels for {n} feature rows.")
    for key in ("ids", "split", "class_names", "views"):
        if key in data and np.ndim(data[key]) != 1:
            raise DataError(f"{path}: '{key}' must be a 1-D array, got shape {np.shape(data[key])}.")
    for key in ("ids", "split"):
        if key in data and len(data[key]) != n:
            raise DataError(f"{path}: '{key}' has {len(data[key])} entries for {n} feature rows.")
    if "views" in data:
        views = [str(x) for x in data["views"]]
    elif v == 1:
        views = ["standard"]
    elif v == 6:
        views = ["standard", *TTE_VIEWS]
    else:
        raise DataError(f"{path}: {v} views per image; name them in a 'views' array.")
    if len(views) != v:
        raise DataError(f"{path}: 'views' names {len(views)} views but features have {v}.")

    desc = None
    if cfg.dataset:
        desc = load_descriptor(cfg.dataset)
        if desc is None:
            raise FeatcacheError(f"Data set '{cfg.dataset}' has no descriptor to attach.")
    names = [str(x) for x in data.get("class_names", [])]
    labels, desc = _labels_to_indices(np.asarray(data["labels"]), names, desc, path)
    ids = [str(x) for x in data["ids"]] if "ids" in data else [f"{i}" for i in range(n)]
    splits = [str(x) for x in data["split"]] if "split" in data else [""] * n
    bad = sorted(set(splits) - {"train", "val", "test", ""})
    if bad:
        raise DataError(f"{path}: unknown split values {bad}; expected train, val or test.")
    if len(set(ids)) != n:
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{path}: duplicate id '{dup}'.")

    text = None
    if "text_features" in data:
        if np.asarray(data["text_features"]).dtype.kind not in "fiu":
            raise DataError(f"{path}: 'text_features' must be numbers, got dtype {np.asarray(data['text_features']).dtype}.")
        text = np.asarray(data["text_features"], dtype=np.float32)
        if text.shape != (desc.num_classes, d):
            raise DataError(f"{path}: text_features must be [{desc.num_classes}, {d}], got {text.shape}.")
        norms = np.linalg.norm(text, axis=-1)
        if not np.isfinite(text).all() or not (norms > 0).all():
            raise DataError(f"{path}: text_features hold a non-finite value or an all-zero row (class {int(np.argmin(np.isfinite(norms) & (norms > 0)))}).")
        if names and cfg.dataset:  # reorder rows from the file's class order to the descriptor's
            order = [desc.class_index(nm) for nm in names]
            reordered = np.empty_like(text)
            reordered[order] = text
            text = reordered
        text = (text / np.linalg.norm(text, axis=-1, keepdims=True))[None]  # [1, C, D]

    from featcache.models import file_sha256  # lazily: it imports open_clip

    settings = {"imported_from": str(path.resolve()), "sha256": file_sha256(path), "dataset": desc.name}
    meta = {**settings, "model": "imported", "weights_id": "imported", "preprocessing": {"views": views}}
    header = CacheHeader(
        descriptor=desc, ids=ids, labels=labels, splits=splits, sources=ids, meta=meta,
        fingerprint=fingerprint_of(settings), model_fingerprint=fingerprint_of({"imported": settings["sha256"]}),
        views=views, templates=["{}"] if text is not None else [], text_features=text,
    )
    out = Path(cfg.out) if cfg.out else path.with_suffix(".h5")
    check_out(out)
    with OutputLock(out):  # one writer per --out; an existing cache is replaced by the final rename only
        if out.exists() and not cfg.overwrite:
            raise FeatcacheError(f"{out} already exists; pass --overwrite to replace it or --out elsewhere.")
        # imported features have no separate pre-projection feature: cls = embed
        blocks = {name: {"embed": feats[:, j], "cls": feats[:, j]} for j, name in enumerate(views)}
        write_cache(out, header, iter([(np.arange(n), blocks)]))
    return out
