"""Build a cache from features computed elsewhere (``featcache import-features``).

Input: an ``.npz`` with ``features`` [N, D] or [N, V, D], ``labels`` [N], and optionally
``ids`` [N], ``class_names`` [C], ``text_features`` [C, D] and ``split`` [N]
(train|val|test); or a parquet table with the same columns (``features`` a list column).
With ``--dataset NAME`` the data set's descriptor is attached (class names matched
case-insensitively, e.g. HAM10000's ``nv`` to ISIC2018's ``NV``), so its protocols run on
any encoder's embeddings. Multi-view inputs name their views in ``views`` (default:
``standard`` then the five TTE crops when V = 6).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featcache.cache import CacheHeader, fingerprint_of, write_cache
from featcache.datasets.base import Descriptor, load_descriptor
from featcache.errors import DataError, FeatcacheError
from featcache.preprocess import TTE_VIEWS


@dataclass(frozen=True)
class ImportConfig:
    """Settings of ``featcache import-features``."""

    source: str
    out: str | None = None
    dataset: str | None = None
    overwrite: bool = False


def _read(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise DataError(f"Feature file {path} does not exist.")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    if path.suffix == ".parquet":
        import polars as pl

        df = pl.read_parquet(path)
        out = {}
        for col in df.columns:
            series = df[col]
            out[col] = np.stack(series.to_list()) if isinstance(series.dtype, (pl.List, pl.Array)) else series.to_numpy()
        return out
    raise DataError(f"Feature file {path} must be .npz or .parquet, not '{path.suffix}'.")


def _labels_to_indices(raw: np.ndarray, names: list[str], desc: Descriptor | None, path: Path) -> tuple[np.ndarray, Descriptor]:
    """Integer labels [N] and the descriptor, from integer or string labels."""
    if raw.dtype.kind in "iu":
        labels = raw.astype(np.int64)
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
        uniq = sorted(set(strings))
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
    feats = np.asarray(data["features"], dtype=np.float32)
    if feats.ndim == 2:
        feats = feats[:, None, :]
    if feats.ndim != 3:
        raise DataError(f"{path}: 'features' must be [N, D] or [N, V, D], got shape {feats.shape}.")
    n, v, d = feats.shape
    if len(data["labels"]) != n:
        raise DataError(f"{path}: {len(data['labels'])} labels for {n} feature rows.")
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
        text = np.asarray(data["text_features"], dtype=np.float32)
        if text.shape != (desc.num_classes, d):
            raise DataError(f"{path}: text_features must be [{desc.num_classes}, {d}], got {text.shape}.")
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
    if out.exists() and not cfg.overwrite:
        raise FeatcacheError(f"{out} already exists; pass --overwrite to replace it or --out elsewhere.")
    # imported features have no separate pre-projection feature: cls = embed
    blocks = {name: {"embed": feats[:, j], "cls": feats[:, j]} for j, name in enumerate(views)}
    write_cache(out, header, iter([(np.arange(n), blocks)]))
    return out
