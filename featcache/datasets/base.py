"""What every data set adapter produces: a :class:`Descriptor` and a :class:`Manifest`.

An adapter turns a folder in the layout users already have into a manifest — one row per
image with its id, image source, label and source split — plus the descriptor from
``data/datasets/<name>.json`` (class ids, readable names, the image type used in prompts,
protocol facts). Extraction only ever sees a manifest, so a new data set is one adapter
function plus one decorator (``@DATASETS.register("name")``) and, optionally, a descriptor.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from featcache.errors import DataError, FeatcacheError, unknown
from featcache.registry import Registry

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "")  # "" = the data set has no official split for this row


def data_dir() -> Path:
    """The folder holding descriptors: ``featcache/data`` (in a checkout a symlink to ``data/``)."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "data", here.parent / "data"):
        if (candidate / "datasets").is_dir():
            return candidate
    raise FileNotFoundError(f"featcache's data/ folder was not found next to {here}")


@dataclass(frozen=True)
class Descriptor:
    """Facts about a data set that are not in its files.

    ``class_ids`` are the labels as the files spell them (``MEL``), ``class_names`` the
    readable names used in prompts (``melanoma``), ``data_type`` the image type in TFA-LT's
    prompt ("The category of this {data_type} image is {class_name}."). ``groups`` maps
    ``many|medium|few`` to class ids (TFA-LT's fixed groups); ``test_per_class`` is the size of
    the class-balanced test set of the ``tfa-lt`` protocol. ``finetune_epochs`` is the data
    set's epoch count in LIFT's recipe (``featcache finetune``'s default; ``None`` = LIFT's 10).
    """

    name: str
    class_ids: tuple[str, ...]
    class_names: tuple[str, ...]
    data_type: str = "medical"
    protocol: str | None = None
    test_per_class: int | None = None
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    multi_label: bool = False
    source: str = ""
    finetune_epochs: int | None = None

    def __post_init__(self) -> None:
        if len(self.class_ids) != len(self.class_names):
            raise ValueError(
                f"descriptor {self.name}: {len(self.class_ids)} class ids but "
                f"{len(self.class_names)} class names"
            )
        if len(set(self.class_ids)) != len(self.class_ids):
            raise ValueError(f"descriptor {self.name}: duplicate class ids {self.class_ids}")
        for group, ids in self.groups.items():
            missing = set(ids) - set(self.class_ids)
            if missing:
                raise ValueError(f"descriptor {self.name}: group {group} names unknown {missing}")

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    def class_index(self, class_id: str, *, where: str = "") -> int:
        """Index of ``class_id`` (exact first, then case-insensitive); unknown ids raise ``DataError``."""
        if class_id in self.class_ids:
            return self.class_ids.index(class_id)
        lowered = [class_key(c) for c in self.class_ids]
        if class_key(class_id) in lowered:
            return lowered.index(class_key(class_id))
        at = f" in {where}" if where else ""
        raise DataError(
            f"Unknown class '{class_id}'{at} for data set {self.name}; "
            f"expected one of: {', '.join(self.class_ids)}."
        )

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "class_ids": list(self.class_ids),
            "class_names": list(self.class_names),
            "data_type": self.data_type,
            "protocol": self.protocol,
            "test_per_class": self.test_per_class,
            "groups": {k: list(v) for k, v in self.groups.items()},
            "multi_label": self.multi_label,
            "source": self.source,
            "finetune_epochs": self.finetune_epochs,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Descriptor:
        return cls(
            name=d["name"],
            class_ids=tuple(d["class_ids"]),
            class_names=tuple(d.get("class_names") or d["class_ids"]),
            data_type=d.get("data_type", "medical"),
            protocol=d.get("protocol"),
            test_per_class=d.get("test_per_class"),
            groups={k: tuple(v) for k, v in (d.get("groups") or {}).items()},
            multi_label=bool(d.get("multi_label", False)),
            source=d.get("source", ""),
            finetune_epochs=d.get("finetune_epochs"),
        )


@cache
def load_descriptor(name: str) -> Descriptor | None:
    """The descriptor shipped as ``data/datasets/<name>.json``, or ``None`` when there is none."""
    path = data_dir() / "datasets" / f"{name}.json"
    if not path.exists():
        return None
    return Descriptor.from_dict(json.loads(path.read_text()))


ImageLoader = Callable[[int], Image.Image]


def class_key(class_id: str) -> str:
    """The one rule by which class ids are matched everywhere (``import-features`` labels,
    ``predict`` against a run): surrounding spaces and case ignored (``mel`` is ``MEL``)."""
    return str(class_id).strip().casefold()


@dataclass
class Manifest:
    """The images of one data set: parallel arrays, one entry per image.

    ``sources`` says where each image comes from (a file path, or ``file.npz#train/12``);
    ``load(i)`` returns image ``i`` as an RGB PIL image. Pre-decoded data sets (MedMNIST,
    synthetic) also set ``arrays`` ([N, H, W, C] uint8, C = 1 grey or 3 RGB) so extraction
    can skip PIL; :func:`featcache.preprocess.array_batch` turns rows of them into RGB batches.
    ``labels`` is ``[N]`` int64, or ``[N, C]`` {0,1} for multi-label sets.
    """

    descriptor: Descriptor
    ids: list[str]
    sources: list[str]
    labels: np.ndarray
    splits: list[str]
    loader: ImageLoader
    arrays: np.ndarray | None = None
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.ids)
        if not (len(self.sources) == len(self.labels) == len(self.splits) == n):
            raise ValueError("manifest columns differ in length")
        if n == 0:
            raise DataError(f"Data set {self.descriptor.name} has no images.")
        seen: dict[str, int] = {}
        for i, image_id in enumerate(self.ids):
            if image_id in seen:
                raise DataError(
                    f"Duplicate image id '{image_id}' in {self.descriptor.name} "
                    f"({self.sources[seen[image_id]]} and {self.sources[i]}); ids must be unique."
                )
            seen[image_id] = i
        bad = sorted(set(self.splits) - set(SPLITS))
        if bad:
            raise ValueError(f"unknown split names {bad}; expected {SPLITS}")

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, i: int) -> Image.Image:
        """Image ``i`` as an RGB PIL image; unreadable files raise ``DataError`` naming the file."""
        return self.loader(i)

    @property
    def has_files(self) -> bool:
        """True when every image is a file whose bytes ``read_bytes`` returns (not pre-decoded)."""
        return self.arrays is None and callable(getattr(self.loader, "read_bytes", None))

    def read_bytes(self, i: int) -> bytes:
        """The encoded bytes of image file ``i``; missing, unreadable or empty files raise ``DataError``."""
        if not self.has_files:
            raise FeatcacheError(f"Data set {self.descriptor.name} has no image files to read bytes from.")
        return self.loader.read_bytes(i)

    def check_classes_nonempty(self) -> None:
        """Refuse a data set in which a class has no images (it cannot be learned or scored)."""
        if self.labels.ndim != 1:
            return
        counts = np.bincount(self.labels, minlength=self.descriptor.num_classes)
        empty = [self.descriptor.class_ids[c] for c in np.flatnonzero(counts == 0)]
        if empty:
            raise DataError(
                f"Class(es) {', '.join(empty)} of {self.descriptor.name} have no images; "
                "every class needs at least one."
            )

    def file_stats(self, rows: np.ndarray | list[int]) -> np.ndarray:
        """``[n, 2]`` int64 (size in bytes, mtime in ns) of the file each row's image comes from
        (the ``.npz`` of ``file.npz#train/12``); ``(-1, -1)`` for a file that is missing now.
        Recorded with each extraction shard, so a resume notices images changed since."""
        out = np.full((len(rows), 2), -1, dtype=np.int64)
        seen: dict[str, tuple[int, int]] = {}
        for j, r in enumerate(rows):
            name = self.sources[int(r)].split("#", 1)[0]
            if name not in seen:
                try:
                    st = os.stat(name)
                    seen[name] = (st.st_size, st.st_mtime_ns)
                except OSError:
                    seen[name] = (-1, -1)
            out[j] = seen[name]
        return out

    def check_class_list(self) -> None:
        """Refuse class lists that would train silently wrong; warn where it may be meant.

        Refused: fewer than two classes (every image is "right": 100 %), and class ids that
        differ only in case (``MEL`` and ``mel``: one class spelled two ways, split in two).
        Warned: with source splits, a class with no ``train`` images (a ``train/`` and
        ``test/`` naming classes differently) or with no ``test`` images; ``train-head``
        refuses a split whose training rows miss a class.
        """
        ids, name = self.descriptor.class_ids, self.descriptor.name
        if len(ids) < 2:
            raise DataError(
                f"Data set {name} has {len(ids)} class ({', '.join(ids) or 'none'}); a classifier "
                "needs at least two (with one, every prediction is right and accuracy is 100 %)."
            )
        seen: dict[str, str] = {}
        for c in ids:
            other = seen.setdefault(c.casefold(), c)
            if other != c:
                raise DataError(
                    f"Data set {name} ({self.descriptor.source or 'no source'}) has classes '{other}' "
                    f"and '{c}', which differ only in case; they would be trained as two classes. "
                    "Spell the class one way throughout (rename the folder or the label)."
                )
        if self.labels.ndim != 1:
            return
        splits = np.asarray(self.splits)
        for split, meaning in (("train", "cannot be learned"), ("test", "is not scored")):
            if split not in splits:
                continue
            counts = np.bincount(self.labels[splits == split], minlength=len(ids))
            absent = [ids[c] for c in np.flatnonzero(counts == 0)]
            if absent:
                log.warning(
                    "Data set %s: class(es) %s have no %s images, so each %s under --protocol "
                    "official (do the splits name the same classes?).", name, ", ".join(absent),
                    split, meaning)

    def fingerprint(self) -> str:
        """SHA-256 over ids, sources, labels, splits and the class list (the manifest hash)."""
        h = hashlib.sha256()
        h.update(json.dumps(list(self.descriptor.class_ids)).encode())
        for image_id, source, split in zip(self.ids, self.sources, self.splits, strict=True):
            h.update(f"{image_id}\t{source}\t{split}\n".encode())
        h.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        return h.hexdigest()


Adapter = Callable[..., Manifest]
DATASETS: Registry[Adapter] = Registry("data set")


def build_manifest(name: str, root: str | Path | None, **options: object) -> Manifest:
    """Build the manifest of data set ``name`` from ``root`` (adapter-specific ``options``)."""
    adapter = DATASETS.get(name)
    _check_options(name, adapter, options)
    if root is not None:
        # absolute, so `--root data` and `--root /abs/data` give the same sources (and fingerprint)
        root = Path(root).expanduser().resolve()
        if not root.exists():
            raise DataError(f"--root {root} does not exist (data set {name}).")
    manifest = adapter(root, **options)
    manifest.check_classes_nonempty()
    manifest.check_class_list()
    from featcache.datasets._io import check_utf8_names

    check_utf8_names(f"Data set {name}", file=manifest.sources, image_id=manifest.ids,
                     **{"class": list(manifest.descriptor.class_ids)})
    return manifest


def _check_options(name: str, adapter: Adapter, options: dict) -> None:
    """Refuse unknown options (with a did-you-mean) and missing required ones, naming the data set."""
    params = {
        p.name: p
        for p in inspect.signature(adapter).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    for key in options:
        if key not in params:
            if not params:
                raise FeatcacheError(f"Data set {name} takes no options, got '{key}'.")
            raise unknown(f"option for data set {name}", key, params)
    missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in options]
    if missing:
        raise FeatcacheError(f"Data set {name} needs the option(s) {', '.join(missing)}.")


def open_rgb(path: str | Path) -> Image.Image:
    """Open an image file fully (so truncation is caught here) as RGB; errors name the file."""
    return decode_rgb(read_image_bytes(path), path)


def decode_rgb(data: bytes, path: str | Path) -> Image.Image:
    """Decode an image file's bytes fully with PIL as RGB; errors name ``path``.

    High-bit-depth images are scaled to 8 bits, not clipped: PIL's ``convert("RGB")`` clips
    the 16-bit greyscale modes (``I;16*``, and ``I``, which is how PIL opens 16-bit grey PNGs)
    at 255, so such an image is first mapped from [0, 65535] to [0, 255] (x / 257, rounded).
    32-bit float images (``F``) are taken as [0, 1] when their values lie there, else as
    [0, 255]; ``convert`` handles every 8-bit mode (palette, CMYK, LA, ...).
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return _to_rgb8(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"Image file {path} could not be read: {e}") from None


def _to_rgb8(im: Image.Image) -> Image.Image:
    if im.mode.startswith("I;16") or im.mode == "I":
        x = np.asarray(im, dtype=np.float64)
        x = np.clip(np.rint(x / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(x, "L").convert("RGB")
    if im.mode == "F":
        x = np.asarray(im, dtype=np.float64)
        finite = x[np.isfinite(x)]
        scale = 255.0 if finite.size and finite.min() >= 0 and finite.max() <= 1 else 1.0
        x = np.clip(np.rint(np.nan_to_num(x) * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(x, "L").convert("RGB")
    return im.convert("RGB")


def check_image_size(data: bytes, path: str | Path) -> None:
    """Refuse an image whose header claims more pixels than PIL's limit (``Image.MAX_IMAGE_PIXELS``,
    twice which PIL itself refuses to decode), reading only the header: the same limit for
    every decoder, applied before any of them allocates the image."""
    try:
        with Image.open(io.BytesIO(data)):  # the header only; PIL's bomb check runs here
            pass
    except Image.DecompressionBombError as e:
        raise DataError(f"Image file {path} could not be read: {e}") from None
    except (OSError, SyntaxError, ValueError):
        return  # not readable by PIL: the decoder itself reports it


def read_image_bytes(path: str | Path) -> bytes:
    """The bytes of an image file, undecoded; missing, unreadable or empty files raise ``DataError``.

    Only regular files are opened (a FIFO or device named as an image would block or never end)."""
    path = Path(path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"Image file {path} is not a regular file (a folder, FIFO or device); expected an image file.")
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"Image file {path} does not exist.") from None
    except OSError as e:
        raise DataError(f"Image file {path} could not be read: {e}") from None
    if not data:
        raise DataError(f"Image file {path} is empty (0 bytes).")
    return data


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Images per class ([C]); multi-label sets count positives per class."""
    if labels.ndim == 2:
        return labels.sum(0).astype(np.int64)
    return np.bincount(labels, minlength=num_classes)


def require_root(root: Path | None, dataset: str) -> Path:
    """Return ``root`` after checking it is set; a missing ``--root`` names the data set."""
    if root is None:
        raise FeatcacheError(f"Data set {dataset} needs --root DIR (the folder holding it).")
    return root


__all__ = [
    "DATASETS",
    "Descriptor",
    "Manifest",
    "build_manifest",
    "check_image_size",
    "class_counts",
    "data_dir",
    "decode_rgb",
    "load_descriptor",
    "open_rgb",
    "read_image_bytes",
]
