"""The HDF5 feature cache: the contract every other part of featcache relies on.

One file per (data set, backbone, weights, preprocessing). Layout::

    attrs: format_version, fingerprint, model_fingerprint, meta (JSON), complete (written last)
    /images/{ids, labels, splits, sources}     one row per image  ([N], labels [N] or [N, C])
    /views/<view>/embed    [N, E] float32      projected image embedding (not normalised)
    /views/<view>/cls      [N, W] float32      pre-projection CLS feature (ln_post output)
    /model/projection      [W, E]              visual projection; attrs: logit_scale
    /text/features         [T, C, E]           L2-normalised text features, T templates
    /text/templates        [T]                 template strings ("... is {}.")
    /text/class_names      [C]
    /skipped/{ids, sources, reasons}           images left out with --skip-bad

Views are ``standard`` and, with TTE, ``tte_c tte_tl tte_tr tte_bl tte_br`` (stored per crop).

Writing is resumable and crash-safe: extraction writes finished chunks of rows as small
shard files into ``<out>.partial/`` (each one atomically renamed into place), then assembles
the cache into ``<out>.tmp`` and renames it to ``<out>``. A SIGKILL at any moment loses at
most the chunk in flight; the next run with the same arguments (same fingerprint) continues
from the finished shards. Readers refuse a file without the completeness mark, and name it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch

from featcache.datasets.base import Descriptor
from featcache.errors import CacheError

FORMAT_VERSION = 1
STR = h5py.string_dtype("utf-8")


def fingerprint_of(settings: dict) -> str:
    """SHA-256 of a JSON-serialisable settings dict (canonical: sorted keys)."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class CacheHeader:
    """Everything in a cache except the per-image features."""

    descriptor: Descriptor
    ids: list[str]
    labels: np.ndarray  # [N] int64 or [N, C] uint8 (multi-label)
    splits: list[str]
    sources: list[str]
    meta: dict  # model, weights, preprocessing, versions, manifest hash, ...
    fingerprint: str
    model_fingerprint: str
    views: list[str]
    projection: np.ndarray | None = None  # [W, E]
    logit_scale: float | None = None
    templates: list[str] = field(default_factory=list)
    text_features: np.ndarray | None = None  # [T, C, E]


# --------------------------------------------------------------------------------------
# Writing


class ShardStore:
    """The ``<out>.partial/`` folder of finished chunks of a running extraction.

    ``state.json`` holds the fingerprint and chunking; ``chunk-000012.npz`` holds rows
    ``[12 * chunk_size, 13 * chunk_size)``: their features per view and an ``ok`` mask with
    reasons for skipped images. Each shard is written to a temporary name and renamed, so a
    shard either exists whole or not at all.
    """

    def __init__(self, out: Path) -> None:
        self.dir = Path(str(out) + ".partial")

    def exists(self) -> bool:
        return (self.dir / "state.json").exists()

    def state(self) -> dict:
        return json.loads((self.dir / "state.json").read_text())

    def start(self, fingerprint: str, num_rows: int, chunk_size: int) -> None:
        """Create the folder for a new extraction (caller checked there is none to resume)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        state = {"fingerprint": fingerprint, "num_rows": num_rows, "chunk_size": chunk_size}
        _atomic_write_text(self.dir / "state.json", json.dumps(state))

    def num_chunks(self) -> int:
        s = self.state()
        return -(-s["num_rows"] // s["chunk_size"])

    def chunk_rows(self, k: int) -> range:
        s = self.state()
        return range(k * s["chunk_size"], min((k + 1) * s["chunk_size"], s["num_rows"]))

    def path(self, k: int) -> Path:
        return self.dir / f"chunk-{k:06d}.npz"

    def done(self) -> set[int]:
        return {int(p.stem.split("-")[1]) for p in self.dir.glob("chunk-*.npz")}

    def save(self, k: int, arrays: dict[str, np.ndarray]) -> None:
        tmp = self.dir / f".chunk-{k:06d}.{os.getpid()}.tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, self.path(k))

    def load(self, k: int) -> dict[str, np.ndarray]:
        with np.load(self.path(k), allow_pickle=False) as z:
            return {key: z[key] for key in z.files}

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_cache(
    out: Path,
    header: CacheHeader,
    features: Iterator[tuple[np.ndarray, dict[str, dict[str, np.ndarray]]]],
    skipped: list[tuple[int, str]] | None = None,
) -> Path:
    """Write a complete cache to ``out`` atomically (``out.tmp`` then rename).

    ``features`` yields ``(rows, {view: {"embed": [n, E], "cls": [n, W]}})`` blocks in
    increasing row order, covering every row that is not in ``skipped`` ((row, reason)).
    Skipped rows are left out of the image arrays and listed under ``/skipped``.
    """
    skipped = skipped or []
    skip_rows = {r for r, _ in skipped}
    keep = np.array([i for i in range(len(header.ids)) if i not in skip_rows], dtype=np.int64)
    position = np.full(len(header.ids), -1, dtype=np.int64)
    position[keep] = np.arange(len(keep))
    tmp = Path(str(out) + ".tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(tmp, "w") as f:
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["complete"] = False
        f.attrs["fingerprint"] = header.fingerprint
        f.attrs["model_fingerprint"] = header.model_fingerprint
        meta = dict(header.meta, descriptor=header.descriptor.to_dict(), views=header.views)
        f.attrs["meta"] = json.dumps(meta, sort_keys=True, default=str)
        img = f.create_group("images")
        img.create_dataset("ids", data=np.array([header.ids[i] for i in keep], dtype=object), dtype=STR)
        img.create_dataset("labels", data=np.asarray(header.labels)[keep])
        img.create_dataset("splits", data=np.array([header.splits[i] for i in keep], dtype=object), dtype=STR)
        img.create_dataset("sources", data=np.array([header.sources[i] for i in keep], dtype=object), dtype=STR)
        sk = f.create_group("skipped")
        sk.create_dataset("ids", data=np.array([header.ids[r] for r, _ in skipped], dtype=object), dtype=STR)
        sk.create_dataset("sources", data=np.array([header.sources[r] for r, _ in skipped], dtype=object), dtype=STR)
        sk.create_dataset("reasons", data=np.array([why for _, why in skipped], dtype=object), dtype=STR)
        model = f.create_group("model")
        if header.projection is not None:
            model.create_dataset("projection", data=np.asarray(header.projection, dtype=np.float32))
        if header.logit_scale is not None:
            model.attrs["logit_scale"] = float(header.logit_scale)
        text = f.create_group("text")
        text.create_dataset("class_names", data=np.array(header.descriptor.class_names, dtype=object), dtype=STR)
        if header.text_features is not None:
            text.create_dataset("features", data=np.asarray(header.text_features, dtype=np.float32))
            text.create_dataset("templates", data=np.array(header.templates, dtype=object), dtype=STR)
        views = f.create_group("views")
        dsets: dict[tuple[str, str], h5py.Dataset] = {}
        for rows, blocks in features:
            rows = np.asarray(rows)
            mask = position[rows] >= 0
            for view, kinds in blocks.items():
                for kind, arr in kinds.items():
                    key = (view, kind)
                    if key not in dsets:
                        chunk = (min(len(keep), 1024), arr.shape[1])
                        dsets[key] = views.require_group(view).create_dataset(
                            kind, shape=(len(keep), arr.shape[1]), dtype=np.float32, chunks=chunk
                        )
                    if mask.any():
                        pos = position[rows[mask]]
                        # rows arrive in order, so kept positions are one contiguous run
                        dsets[key][pos[0] : pos[-1] + 1] = arr[mask]
        missing = [v for v in header.views if (v, "embed") not in dsets]
        if missing and len(keep):
            raise RuntimeError(f"views {missing} received no features")
        f.attrs["complete"] = True  # the completeness mark, written last
    os.replace(tmp, out)
    return out


# --------------------------------------------------------------------------------------
# Reading


def check_complete(path: str | Path) -> Path:
    """Return ``path`` if it is a complete cache; otherwise raise CacheError saying why."""
    path = Path(path)
    store = ShardStore(path)
    if not path.exists():
        if store.exists():
            done, total = len(store.done()), store.num_chunks()
            raise CacheError(
                f"Cache {path} is incomplete: its extraction was interrupted after {done} of "
                f"{total} chunks (finished work is kept in {store.dir}). Run the same "
                "`featcache extract` command again to resume."
            )
        raise CacheError(f"Cache {path} does not exist.")
    try:
        with h5py.File(path, "r") as f:
            complete = bool(f.attrs.get("complete", False))
            version = int(f.attrs.get("format_version", -1))
    except OSError as e:
        raise CacheError(f"Cache {path} is not a readable HDF5 file ({e}).") from None
    if version != FORMAT_VERSION:
        raise CacheError(
            f"Cache {path} has format version {version}; this featcache reads version "
            f"{FORMAT_VERSION}. Re-extract it with this version."
        )
    if not complete:
        raise CacheError(
            f"Cache {path} is incomplete (it has no completeness mark): it was not written to "
            "the end. Re-run the extraction that made it."
        )
    return path


def complete_fingerprint(path: str | Path) -> str | None:
    """The fingerprint of the complete cache at ``path``; None if it is missing, incomplete or unreadable."""
    try:
        check_complete(path)
    except CacheError:
        return None
    with h5py.File(path, "r") as f:
        return str(f.attrs["fingerprint"])


def _strings(ds: h5py.Dataset) -> list[str]:
    return [s.decode() if isinstance(s, bytes) else str(s) for s in ds[()]]


class FeatureCache:
    """A complete cache, opened for reading. Per-image metadata is loaded at once; features
    per view on demand (:meth:`features`), as float32 torch tensors on the CPU."""

    def __init__(self, path: str | Path) -> None:
        self.path = check_complete(path)
        with h5py.File(self.path, "r") as f:
            self.fingerprint: str = str(f.attrs["fingerprint"])
            self.model_fingerprint: str = str(f.attrs["model_fingerprint"])
            self.meta: dict = json.loads(f.attrs["meta"])
            img = f["images"]
            self.ids = _strings(img["ids"])
            self.labels = np.asarray(img["labels"][()])
            self.splits = np.array(_strings(img["splits"]), dtype=object)
            self.sources = _strings(img["sources"])
            self.views: list[str] = list(self.meta["views"])
            self.dims = {
                kind: int(f[f"views/{self.views[0]}/{kind}"].shape[1])
                for kind in ("embed", "cls")
                if f"views/{self.views[0]}/{kind}" in f
            }
            self.projection = (
                torch.from_numpy(f["model/projection"][()]) if "model/projection" in f else None
            )
            scale = f["model"].attrs.get("logit_scale")
            self.logit_scale: float | None = None if scale is None else float(scale)
            self.text_features = (
                torch.from_numpy(f["text/features"][()]) if "text/features" in f else None
            )
            self.templates = _strings(f["text/templates"]) if "text/templates" in f else []
            self.skipped = [
                {"id": i, "source": s, "reason": r}
                for i, s, r in zip(
                    _strings(f["skipped/ids"]),
                    _strings(f["skipped/sources"]),
                    _strings(f["skipped/reasons"]),
                    strict=True,
                )
            ]
        self.descriptor = Descriptor.from_dict(self.meta["descriptor"])

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.path)!r}, n={len(self)}, views={self.views})"

    @property
    def num_classes(self) -> int:
        return self.descriptor.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self.descriptor.class_names)

    @property
    def embed_dim(self) -> int:
        return self.dims["embed"]

    @property
    def cls_dim(self) -> int:
        return self.dims.get("cls", self.dims["embed"])

    def features(self, view: str = "standard", kind: str = "embed") -> torch.Tensor:
        """Features of every image for one view: ``embed`` [N, E] or ``cls`` [N, W], float32."""
        if view not in self.views:
            hint = " Extract with --tte to store the five crops." if view.startswith("tte") else ""
            raise CacheError(
                f"Cache {self.path} has no view '{view}' (it has: {', '.join(self.views)}).{hint}"
            )
        if kind not in ("embed", "cls"):
            raise ValueError(f"kind must be 'embed' or 'cls', got {kind!r}")
        with h5py.File(self.path, "r") as f:
            key = f"views/{view}/{kind}"
            if key not in f:
                raise CacheError(f"Cache {self.path} holds no '{kind}' features.")
            return torch.from_numpy(f[key][()])

    def split_indices(self, split: str) -> np.ndarray:
        """Row indices whose source split is ``split``."""
        return np.flatnonzero(self.splits == split)


def open_cache(path: str | Path) -> FeatureCache:
    """Open a complete cache for reading (CacheError naming the file otherwise)."""
    return FeatureCache(path)
