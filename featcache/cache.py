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
shard files into ``<out>.partial/`` (each one written under a unique temporary name and
atomically renamed into place), then assembles the cache into a unique temporary file next to
``<out>`` and renames it to ``<out>`` — an older cache at ``<out>`` is replaced only by that
final rename. A SIGKILL at any moment loses at most the chunk in flight; the next run with the
same arguments (same fingerprint) continues from the finished shards. One process at a time
writes an ``<out>`` (:class:`OutputLock`, ``<out>.lock``). Readers refuse a file without the
completeness mark or one that breaks the layout above (:func:`validate_cache`), and name it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

if TYPE_CHECKING:
    import torch

from featcache import knobs
from featcache.datasets.base import SPLITS, Descriptor
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


class CacheWriteError(CacheError):
    """Writing a cache or shard failed (a full disk, a read-only folder): nothing finished was lost."""


def write_failure(path: Path, e: OSError) -> str:
    """``"could not write FILE (reason); what to do"`` for an ``OSError`` met while writing ``path``."""
    reason = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free disk space"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make the folder writable (or choose another --out)"
    else:
        fix = "fix the cause"
    return f"Could not write {path} ({reason}); {fix}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def exclusive_temp(target: Path, suffix: str = ".tmp") -> Path:
    """Create a new, empty, uniquely named file next to ``target`` and return its path.

    ``mkstemp`` opens with ``O_CREAT | O_EXCL`` (a planted file or symlink at a fixed
    ``target.tmp`` name is never followed or truncated); permissions follow the umask as for
    an ordinary file. The caller renames it over ``target`` with ``os.replace`` when done.
    """
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    return Path(name)


def check_out(out: Path) -> None:
    """Refuse an ``--out`` that cannot be written (a folder, a FIFO, a read-only folder) before
    any work starts, with a CacheError saying what to do."""
    if out.is_dir():
        raise CacheError(f"--out {out} is a folder; give the cache's file name, e.g. {out / 'cache.h5'}.")
    if out.exists() and not out.is_file():
        raise CacheError(f"--out {out} exists and is not a regular file; choose another --out.")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CacheError(f"Cannot create the folder {out.parent} for --out {out} ({e.strerror}).") from None
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise CacheError(
            f"The folder {out.parent} is not writable, so the cache {out.name} cannot be written there. "
            "Choose another --out or make the folder writable."
        )


class OutputLock:
    """An exclusive lock on one output ``<out>`` — its ``<out>.partial/`` folder and the final
    file — held by one process at a time (``flock`` on ``<out>.lock``, which holds the holder's
    pid and host).

    Taken before anything at ``<out>`` is opened, so a second run into the same ``--out`` is
    refused (naming the first run's process) instead of truncating its files; released (and
    the lock file removed) when the run ends. A run killed with SIGKILL leaves the file but not
    the lock: the kernel drops it with the process.
    """

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.path = Path(str(out) + ".lock")
        self.fd: int | None = None

    def acquire(self) -> OutputLock:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
            except OSError as e:
                raise CacheError(
                    f"Cannot write into {self.path.parent}: creating the lock file {self.path.name} "
                    f"failed ({e.strerror}). Make the folder writable or choose another --out."
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise CacheError(
                    f"Another featcache run (process {holder}) is writing {self.out} right now "
                    f"(it holds {self.path}). Wait for it to finish or stop it; two runs into one "
                    "--out would corrupt it. Use another --out to run both."
                ) from None
            try:  # its previous holder may have removed the file between our open and flock
                same = os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class ShardStore:
    """The ``<out>.partial/`` folder of finished chunks of a running extraction.

    ``state.json`` holds the fingerprint, the settings it covers and the chunking;
    ``chunk-000012.npz`` holds rows ``[12 * chunk_size, 13 * chunk_size)``: their features per
    view, an ``errors`` column with reasons for skipped images and ``stats`` (size and mtime of
    each image file, so a resume can tell that an image changed). Each shard is written to a
    unique temporary name and renamed, so a shard either exists whole or not at all. A damaged
    ``state.json`` or shard raises :class:`CacheError` naming the file.
    """

    def __init__(self, out: Path) -> None:
        self.dir = Path(str(out) + ".partial")

    def exists(self) -> bool:
        return (self.dir / "state.json").exists()

    def state(self) -> dict:
        path = self.dir / "state.json"
        try:
            state = json.loads(path.read_text())
            ok = isinstance(state, dict) and all(
                isinstance(state.get(k), t) for k, t in (("fingerprint", str), ("num_rows", int), ("chunk_size", int))
            )
        except (OSError, ValueError) as e:
            ok, state = False, str(e)
        if not ok or state["num_rows"] < 1 or state["chunk_size"] < 1:
            raise CacheError(
                f"The state file {path} of an unfinished extraction is damaged ({str(state)[:80]}). "
                "Pass --overwrite to discard the unfinished extraction and start again."
            )
        return state

    def start(self, fingerprint: str, num_rows: int, chunk_size: int, settings: dict | None = None) -> None:
        """Create the folder for a new extraction (caller checked there is none to resume)."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CacheError(f"{write_failure(self.dir, e)}.") from None
        state = {"fingerprint": fingerprint, "num_rows": num_rows, "chunk_size": chunk_size, "settings": settings}
        _atomic_write_text(self.dir / "state.json", json.dumps(state, default=str))

    def num_chunks(self) -> int:
        s = self.state()
        return -(-s["num_rows"] // s["chunk_size"])

    def chunk_rows(self, k: int) -> range:
        s = self.state()
        return range(k * s["chunk_size"], min((k + 1) * s["chunk_size"], s["num_rows"]))

    def path(self, k: int) -> Path:
        return self.dir / f"chunk-{k:06d}.npz"

    def done(self) -> set[int]:
        out = set()
        for p in self.dir.glob("chunk-*.npz"):
            try:
                out.add(int(p.stem.split("-")[1]))
            except ValueError:
                continue
        return out

    def save(self, k: int, arrays: dict[str, np.ndarray]) -> None:
        """Write chunk ``k``; a failed write (a full disk, say) leaves the chunks already
        finished untouched and raises CacheError saying how to go on."""
        target = self.path(k)
        tmp = None
        try:
            tmp = exclusive_temp(target, ".tmp.npz")
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, target)
        except OSError as e:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            raise CacheWriteError(
                f"{write_failure(target, e)}. The {len(self.done())} chunk(s) finished so far are kept in "
                f"{self.dir}: run the same command again to continue from them."
            ) from None

    def load(self, k: int, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Chunk ``k``'s arrays (only ``keys`` when given); a damaged or foreign shard raises
        CacheError naming the file."""
        path = self.path(k)
        try:
            with np.load(path, allow_pickle=False) as z:
                return {key: z[key] for key in (keys or z.files)}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
            raise self.damaged(k, f"{type(e).__name__}: {e}") from None

    def damaged(self, k: int, why: str) -> CacheError:
        """The error for a shard that cannot be used."""
        return CacheError(
            f"Shard {self.path(k)} of an unfinished extraction is damaged ({why[:200]}). Delete that "
            "file and run the same command again to recompute its chunk, or pass --overwrite to "
            "start over."
        )

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = None
    try:
        tmp = exclusive_temp(path)
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise CacheError(f"{write_failure(path, e)}.") from None


def write_cache(
    out: Path,
    header: CacheHeader,
    features: Iterator[tuple[np.ndarray, dict[str, dict[str, np.ndarray]]]],
    skipped: list[tuple[int, str]] | None = None,
) -> Path:
    """Write a complete cache to ``out`` atomically (a unique temporary file, then rename).

    ``features`` yields ``(rows, {view: {"embed": [n, E], "cls": [n, W]}})`` blocks in
    increasing row order, covering every row that is not in ``skipped`` ((row, reason)).
    Skipped rows are left out of the image arrays and listed under ``/skipped``. A file
    already at ``out`` is replaced only by the final rename, so a failed write (a full disk, a
    non-finite feature) leaves it as it was; the error is a CacheError naming the file.
    """
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = exclusive_temp(out)
    except OSError as e:
        raise CacheWriteError(f"{write_failure(out, e)}; nothing was written.") from None
    try:
        _write(tmp, header, features, skipped or [])
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        kept = f" {out} was left as it was." if out.exists() else ""
        raise CacheWriteError(f"{write_failure(out, e)} and run the command again.{kept}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def _write(
    tmp: Path,
    header: CacheHeader,
    features: Iterator[tuple[np.ndarray, dict[str, dict[str, np.ndarray]]]],
    skipped: list[tuple[int, str]],
) -> None:
    skip_rows = {r for r, _ in skipped}
    keep = np.array([i for i in range(len(header.ids)) if i not in skip_rows], dtype=np.int64)
    position = np.full(len(header.ids), -1, dtype=np.int64)
    position[keep] = np.arange(len(keep))
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
                        finite = np.isfinite(arr[mask]).all(axis=1)
                        if not finite.all():
                            r = int(rows[mask][np.argmin(finite)])
                            raise CacheError(
                                f"Features of image {header.ids[r]} (row {r}, {header.sources[r]}) in "
                                f"view {view} ({kind}) are not finite (NaN or inf); refusing to write "
                                f"them into a cache. Check the model's precision (fp16 can overflow) or "
                                "the features' source."
                            )
                        # rows arrive in order, so kept positions are one contiguous run
                        dsets[key][pos[0] : pos[-1] + 1] = arr[mask]
        missing = [v for v in header.views if (v, "embed") not in dsets]
        if missing and len(keep):
            raise RuntimeError(f"views {missing} received no features")
        f.attrs["complete"] = True  # the completeness mark, written last


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
    except (TypeError, ValueError):
        raise CacheError(f"Cache {path} has a malformed format_version or completeness attribute; re-extract it.") from None
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
        return str(f.attrs["fingerprint"]) if "fingerprint" in f.attrs else None


def _strings(ds: h5py.Dataset) -> list[str]:
    return [s.decode(errors="replace") if isinstance(s, bytes) else str(s) for s in ds[()]]


def validate_cache(f: h5py.File, path: str | Path) -> dict:
    """Check an open cache file against the layout in this module's docstring; returns ``meta``.

    Every dataset and attribute the readers use must be there with matching lengths and
    shapes: ``meta`` a JSON object naming the views and the descriptor, one id, label, split and
    source per image, labels inside the class range ([N] ints in [0, C) or [N, C] of 0/1), each
    view's ``embed`` (and ``cls``, when stored) with N rows and the same width in every view,
    the projection and text features matching those widths. Raises CacheError naming the file
    and what is missing or wrong. Finiteness of the features is checked when they are loaded
    (:meth:`FeatureCache.features`), not here: that would read every feature at each open.
    """

    def bad(what: str) -> CacheError:
        return CacheError(
            f"Cache {path} does not follow the cache layout: {what}. The file is damaged or was not "
            "written by featcache; re-extract it (or re-import the features)."
        )

    for attr in ("fingerprint", "model_fingerprint", "meta"):
        if attr not in f.attrs:
            raise bad(f"attribute '{attr}' is missing")
    try:
        meta = json.loads(f.attrs["meta"])
    except (TypeError, ValueError) as e:
        raise bad(f"attribute 'meta' is not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise bad("attribute 'meta' is not a JSON object")
    views = meta.get("views")
    if not isinstance(views, list) or not views or not all(isinstance(v, str) for v in views):
        raise bad("meta names no views (expected a list such as [\"standard\"])")
    try:
        desc = Descriptor.from_dict(meta["descriptor"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise bad(f"meta holds no valid data set descriptor ({type(e).__name__}: {e})") from None
    for key in ("images/ids", "images/labels", "images/splits", "images/sources"):
        if not isinstance(f.get(key), h5py.Dataset):
            raise bad(f"dataset /{key} is missing")
    n = f["images/ids"].shape[0] if f["images/ids"].ndim == 1 else -1
    if n < 0:
        raise bad(f"/images/ids has shape {f['images/ids'].shape}, expected [N]")
    for key in ("images/labels", "images/splits", "images/sources"):
        if f[key].ndim < 1 or f[key].shape[0] != n:
            raise bad(f"/{key} has {f[key].shape[0] if f[key].ndim else 0} rows but /images/ids has {n}")
    labels = f["images/labels"]
    C = desc.num_classes
    if labels.dtype.kind not in "iub":
        raise bad(f"/images/labels has dtype {labels.dtype}, expected integers")
    values = labels[()]
    if values.ndim == 1:
        if n and (values.min() < 0 or values.max() >= C):
            r = int(np.flatnonzero((values < 0) | (values >= C))[0])
            raise bad(f"label {int(values[r])} of row {r} lies outside the {C} classes [0, {C - 1}]")
    elif values.ndim == 2 and values.shape[1] == C:
        if n and not np.isin(values, (0, 1)).all():
            raise bad("multi-label /images/labels must hold only 0 and 1")
    else:
        raise bad(f"/images/labels has shape {values.shape}, expected [{n}] or [{n}, {C}]")
    unknown_splits = sorted(set(_strings(f["images/splits"])) - set(SPLITS))
    if unknown_splits:
        raise bad(f"unknown split values {unknown_splits} (expected train, val, test or empty)")
    widths: dict[str, int] = {}
    for view in views:
        for kind in ("embed", "cls"):
            key = f"views/{view}/{kind}"
            ds = f.get(key)
            if ds is None:
                if kind == "embed" or (widths.get("cls") is not None and n):
                    raise bad(f"dataset /{key} is missing")
                continue
            if not isinstance(ds, h5py.Dataset) or ds.ndim != 2 or ds.shape[0] != n:
                raise bad(f"/{key} has shape {getattr(ds, 'shape', None)}, expected [{n}, D]")
            if ds.dtype.kind != "f":
                raise bad(f"/{key} has dtype {ds.dtype}, expected float32")
            if widths.setdefault(kind, ds.shape[1]) != ds.shape[1]:
                raise bad(f"/{key} is {ds.shape[1]} wide but the first view's {kind} is {widths[kind]}")
    if "model/projection" in f and "cls" in widths and f["model/projection"].shape != (widths["cls"], widths["embed"]):
        raise bad(f"/model/projection has shape {f['model/projection'].shape}, expected [{widths['cls']}, {widths['embed']}]")
    if "text/features" in f:
        t = f["text/features"]
        if t.ndim != 3 or t.shape[1:] != (C, widths["embed"]):
            raise bad(f"/text/features has shape {t.shape}, expected [T, {C}, {widths['embed']}]")
        if "text/templates" not in f or f["text/templates"].shape[0] != t.shape[0]:
            raise bad(f"/text/templates must hold one template per row of /text/features ({t.shape[0]})")
    skipped = [f"skipped/{k}" for k in ("ids", "sources", "reasons")]
    if "skipped" in f:
        lengths = {f[k].shape[0] for k in skipped if k in f}
        if len(lengths) != 1 or not all(k in f for k in skipped):
            raise bad("/skipped must hold ids, sources and reasons of equal length")
    return meta


def _tensor(array: np.ndarray | None) -> torch.Tensor | None:
    import torch

    return None if array is None else torch.from_numpy(array)


class FeatureCache:
    """A complete cache, opened for reading. Per-image metadata is loaded at once; features
    per view on demand (:meth:`features`), as float32 torch tensors on the CPU. Opening
    validates the file against the cache layout (:func:`validate_cache`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = check_complete(path)
        try:
            with h5py.File(self.path, "r") as f:
                self._read(f)
        except OSError as e:  # h5py's read errors (a truncated or flipped file)
            raise CacheError(f"Cache {self.path} could not be read ({e}); re-extract it.") from None

    def _read(self, f: h5py.File) -> None:
        self.meta: dict = validate_cache(f, self.path)
        self.fingerprint: str = str(f.attrs["fingerprint"])
        self.model_fingerprint: str = str(f.attrs["model_fingerprint"])
        img = f["images"]
        self.ids = _strings(img["ids"])
        self.labels = np.asarray(img["labels"][()]).astype(np.int64 if img["labels"].ndim == 1 else np.uint8)
        self.splits = np.array(_strings(img["splits"]), dtype=object)
        self.sources = _strings(img["sources"])
        self.views: list[str] = list(self.meta["views"])
        self.dims = {
            kind: int(f[f"views/{self.views[0]}/{kind}"].shape[1])
            for kind in ("embed", "cls")
            if f"views/{self.views[0]}/{kind}" in f
        }
        self._projection = f["model/projection"][()] if "model/projection" in f else None
        scale = f["model"].attrs.get("logit_scale") if "model" in f else None
        self.logit_scale: float | None = None if scale is None else float(scale)
        # the cosine-logit temperature τ when none is given: 1/logit_scale of the model
        # (DESIGN.md §1: 0.01 for OpenAI CLIP), 0.01 for caches without one (imported features)
        self.default_tau: float = 1.0 / self.logit_scale if self.logit_scale else knobs.TAU_FALLBACK
        self._text_features = f["text/features"][()] if "text/features" in f else None
        self.templates = _strings(f["text/templates"]) if "text/templates" in f else []
        self.skipped = (
            [
                {"id": i, "source": s, "reason": r}
                for i, s, r in zip(
                    _strings(f["skipped/ids"]),
                    _strings(f["skipped/sources"]),
                    _strings(f["skipped/reasons"]),
                    strict=True,
                )
            ]
            if "skipped" in f
            else []
        )
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

    # torch tensors on first use, so reading a cache's metadata (``featcache info``) needs no torch
    @property
    def projection(self) -> torch.Tensor | None:
        """The model's projection ``cls -> embed`` [W, E] (None when the cache has none)."""
        return _tensor(self._projection)

    @property
    def text_features(self) -> torch.Tensor | None:
        """The class text features [C, E] (None when the cache has none)."""
        return _tensor(self._text_features)

    def features(self, view: str = "standard", kind: str = "embed") -> torch.Tensor:
        """Features of every image for one view: ``embed`` [N, E] or ``cls`` [N, W], float32."""
        import torch

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
            feats = torch.from_numpy(f[key][()].astype(np.float32, copy=False))
        finite = torch.isfinite(feats).all(dim=1)  # one pass over what was just read
        if not bool(finite.all()):
            r = int(torch.nonzero(~finite)[0])
            raise CacheError(
                f"Cache {self.path}: /{key} holds a non-finite value (NaN or inf) in row {r} "
                f"(image {self.ids[r]}); the file is damaged or was written from bad features. "
                "Re-extract it (or re-import finite features)."
            )
        return feats

    def split_indices(self, split: str) -> np.ndarray:
        """Row indices whose source split is ``split``."""
        return np.flatnonzero(self.splits == split)


def open_cache(path: str | Path) -> FeatureCache:
    """Open a complete cache for reading (CacheError naming the file otherwise)."""
    return FeatureCache(path)
