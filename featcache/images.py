"""Images to features, the way extraction does it: decoding, preprocessing, encoding.

Shared by ``featcache extract`` (which writes the features into a cache) and ``featcache
predict --images`` / ``export`` (which must see an image exactly as extraction saw it), so
both run the same code:

* :func:`image_batches` -- the input side: ``(rows, standard uint8 [B,3,S,S], TTE crops
  [B,5,3,S,S] | None, error texts)`` per batch, from pre-decoded arrays, from PIL workers
  (open_clip's own eval transform, :class:`featcache.preprocess.Preprocessing`), or decoded
  on the device;
* :func:`encode_views` -- normalise on the device and encode the standard view and the five
  TTE crops (:func:`featcache.models.image_features`);
* :func:`image_manifest` -- a label-free :class:`~featcache.datasets.base.Manifest` of image
  files given as files, folders or a CSV of paths (``predict --images``).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from featcache import knobs, models
from featcache.datasets._io import IMAGE_EXTENSIONS, PathLoader, list_images
from featcache.datasets.base import Descriptor, Manifest
from featcache.decode import FileBytes, JpegDecoder, collate_file_bytes, decode_on_device
from featcache.device import autocast
from featcache.errors import DataError
from featcache.preprocess import TTE_VIEWS, Preprocessing, as_rgb, five_crops, pil_to_uint8

# --------------------------------------------------------------------------------------
# Decoding (CPU workers): manifest row -> uint8 tensors, or the reason it failed


class _Images(Dataset):
    """Row i -> (i, standard uint8 [3,S,S], TTE crops uint8 [5,3,S,S] or empty, error text)."""

    def __init__(self, manifest: Manifest, prep: Preprocessing) -> None:
        self.manifest = manifest
        self.prep = prep
        self.standard, self.tte = prep.pil_transforms()

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, torch.Tensor, str]:
        s = self.prep.size
        n_crops = 5 if self.tte else 0
        try:
            im = self.manifest.load(i)
        except DataError as e:
            blank = torch.zeros(n_crops, 3, s, s, dtype=torch.uint8)
            return i, torch.zeros(3, s, s, dtype=torch.uint8), blank, str(e)
        if self.tte:  # one decode; crops cut here because resized images differ in shape
            tte = five_crops(pil_to_uint8(self.tte(im))[None], s)[0]  # [5, 3, S, S]
        else:
            tte = torch.zeros(0, 3, s, s, dtype=torch.uint8)
        return i, pil_to_uint8(self.standard(im)), tte, ""


def _collate(batch: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    rows, std, tte, errs = zip(*batch, strict=True)
    return torch.tensor(rows), torch.stack(std), torch.stack(tte), list(errs)


def _batches_from_files(
    manifest: Manifest, prep: Preprocessing, batches: list[list[int]], workers: int, pin: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, list[str]]]:
    loader = DataLoader(
        _Images(manifest, prep),
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=pin,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    for rows, std, tte, errs in loader:
        yield rows, std, (tte if prep.tte else None), errs


def _batches_decoded_on_device(
    manifest: Manifest, prep: Preprocessing, batches: list[list[int]], workers: int, device: torch.device,
    decode: JpegDecoder,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, list[str]]]:
    """Workers read file bytes; the device decodes, resizes and cuts the TTE crops."""
    loader = DataLoader(
        FileBytes(manifest),
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate_file_bytes,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )
    for rows, payloads, is_jpeg, errs in loader:
        sources = [manifest.sources[r] for r in rows.tolist()]
        images = decode_on_device(decode, payloads, is_jpeg, sources, errs, device)
        std, tte = prep.views_of_images(images)
        yield rows, std, tte, errs


def _batches_from_arrays(
    manifest: Manifest, prep: Preprocessing, batches: list[list[int]], device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, list[str]]]:
    """Pre-decoded [N, H, W, C] uint8 arrays: no PIL, no workers; resized and cropped on the device
    (grey arrays travel as one channel and are broadcast to three there).

    On a GPU each batch is staged in one of two pinned host buffers and copied with
    ``non_blocking=True``, so the copy of batch b+1 overlaps the encoding of batch b; a buffer
    is refilled only after the copy out of it has finished (its CUDA event).
    """
    arrays = manifest.arrays
    pinned: list[torch.Tensor] = []
    copied: list[torch.cuda.Event | None] = [None, None]
    if device.type == "cuda":
        shape = (max(len(b) for b in batches), *arrays.shape[1:])
        pinned = [torch.empty(shape, dtype=torch.uint8).pin_memory() for _ in range(2)]
    for j, rows in enumerate(batches):
        host = torch.from_numpy(np.ascontiguousarray(arrays[rows[0] : rows[-1] + 1]))  # rows are contiguous
        if pinned:
            slot = j % 2
            if copied[slot] is not None:
                copied[slot].synchronize()
            host = pinned[slot][: len(rows)].copy_(host)
        x = as_rgb(host.to(device, non_blocking=True).permute(0, 3, 1, 2))  # [B, 3, H, W] uint8
        if pinned:
            copied[slot] = torch.cuda.Event()
            copied[slot].record()
        std, tte = prep.views_of_batch(x)  # resized and cropped on the device
        yield torch.tensor(rows), std, tte, [""] * len(rows)


def image_batches(
    manifest: Manifest,
    prep: Preprocessing,
    batches: list[list[int]],
    workers: int,
    device: torch.device,
    jpeg_decode: JpegDecoder | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, list[str]]]:
    """The input side of extraction: ``(rows, standard uint8 [B,3,S,S], TTE crops
    [B,5,3,S,S] | None, error texts)`` per batch of ``batches``, from arrays, from PIL
    workers, or (``jpeg_decode`` given) decoded on the device."""
    if manifest.arrays is not None:
        return _batches_from_arrays(manifest, prep, batches, device)
    if jpeg_decode is not None:
        return _batches_decoded_on_device(manifest, prep, batches, workers, device, jpeg_decode)
    return _batches_from_files(manifest, prep, batches, workers, device.type == "cuda")


def encode_views(
    visual: torch.nn.Module,
    prep: Preprocessing,
    std: torch.Tensor,
    tte: torch.Tensor | None,
    device: torch.device,
    dtype: torch.dtype,
    encode: Callable = models.image_features,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """One batch of uint8 views -> ``{view: (embed [B, E], cls [B, W])}`` on the device.

    ``std`` [B, 3, S, S] and ``tte`` [B, 5, 3, S, S] (or ``None``) are normalised on the
    device in ``dtype`` under :func:`featcache.device.autocast`; the five crops are encoded as
    one batch of B*5 images. Views are named ``standard`` and :data:`TTE_VIEWS`.
    """
    views: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    with autocast(device, dtype):
        x = prep.normalize(std.to(device, non_blocking=True), dtype)
        views["standard"] = encode(visual, x)
        if tte is not None:
            crops = tte.to(device, non_blocking=True)  # [B, 5, 3, S, S] uint8
            B = crops.shape[0]
            emb, cls = encode(visual, prep.normalize(crops.flatten(0, 1), dtype))  # [B*5, .]
            emb, cls = emb.view(B, 5, -1), cls.view(B, 5, -1)
            for j, name in enumerate(TTE_VIEWS):
                views[name] = (emb[:, j], cls[:, j])
    return views


def _paths_from_csv(path: Path) -> list[Path]:
    """Image paths from a CSV: the ``path`` column if there is a header naming it, else the
    first column; relative paths are relative to the CSV's folder."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"CSV {path} lists no images.")
    header = [c.strip().lower() for c in rows[0]]
    col = header.index("path") if "path" in header else 0
    if "path" in header or Path(rows[0][0].strip()).suffix.lower() not in IMAGE_EXTENSIONS:
        rows = rows[1:]  # a header row
    out = []
    for i, r in enumerate(rows, start=2):
        if col >= len(r) or not r[col].strip():
            raise DataError(f"CSV {path} row {i} has no image path in column {col + 1}.")
        p = Path(r[col].strip()).expanduser()
        out.append(p if p.is_absolute() else path.parent / p)
    return out


def image_paths(inputs: list[str] | tuple[str, ...]) -> list[Path]:
    """Image files from ``inputs``: image files as given, every image under a folder (sorted),
    the paths a ``.csv`` lists. A missing path is an error naming it."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise DataError(f"Folder {p} holds no image files ({', '.join(IMAGE_EXTENSIONS)}).")
            out += found
        elif p.suffix.lower() == ".csv" and p.is_file():
            out += _paths_from_csv(p)
        elif p.exists() or p.suffix.lower() in IMAGE_EXTENSIONS:
            out.append(p)  # a missing image file is reported (or skipped) when it is read
        else:
            raise DataError(f"{p} is neither an image file, a folder nor a CSV of image paths.")
    if not out:
        raise DataError("No images given.")
    return out


def image_manifest(paths: list[Path], class_names: list[str] | tuple[str, ...]) -> Manifest:
    """A label-free manifest of ``paths`` (ids are the paths; labels -1; no split)."""
    ids = [str(p) for p in paths]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        twice = next(p for p in ids if p in seen or seen.add(p))
        raise DataError(f"Image {twice} is given twice; name each image once.")
    desc = Descriptor(name="images", class_ids=tuple(class_names), class_names=tuple(class_names))
    return Manifest(descriptor=desc, ids=ids, sources=ids, labels=np.full(len(ids), -1, dtype=np.int64),
                    splits=[""] * len(ids), loader=PathLoader([Path(p) for p in ids]))


def backbone_for_cache(meta: dict, *, pretrained: str | None = None, views: tuple[str, ...] = ("standard",),
                       device: torch.device | str = "cpu") -> tuple[models.Backbone, Preprocessing, torch.dtype]:
    """The backbone, preprocessing and precision a cache was extracted with (its ``meta``).

    The weights are the recorded ones: the open_clip tag, hub id or ``random`` as recorded;
    for a cache made from a checkpoint file, ``pretrained`` (else the recorded path, if it is
    still there), which must hash to the recorded ``sha256:``. QuickGELU must be built as
    recorded. ``views``: the views to produce (the TTE crops need ``tte``). Anything that does
    not match is refused with a ``FeatcacheError`` naming what differs.
    """
    from featcache.device import resolve_precision
    from featcache.errors import FeatcacheError

    name, recorded, weights_id = meta["model"], meta.get("pretrained"), meta["weights_id"]
    if weights_id.startswith("sha256:"):
        weights = pretrained or (recorded if recorded and Path(recorded).exists() else None)
        if weights is None:
            raise FeatcacheError(
                f"The cache was extracted with {name} from the weights file {recorded} "
                f"({weights_id}), which is not there; pass --pretrained FILE (the same file).")
    else:
        if pretrained not in (None, recorded):
            raise FeatcacheError(
                f"The cache was extracted with {name} weights '{recorded}', not '{pretrained}'; "
                "drop --pretrained (it is for runs whose weights came from a file).")
        weights = recorded
    backbone = models.load_backbone(name, weights, device=device)
    if backbone.weights_id != weights_id:
        raise FeatcacheError(
            f"The weights {weights} are {backbone.weights_id}, but the cache was extracted from "
            f"{weights_id}; features of other weights are meaningless to the run's heads. Pass "
            "the file the cache was made from.")
    if backbone.quick_gelu != bool(meta.get("quick_gelu")):
        raise FeatcacheError(
            f"{name} built with {'QuickGELU' if backbone.quick_gelu else 'nn.GELU'}, but the cache "
            f"was extracted with {'QuickGELU' if meta.get('quick_gelu') else 'nn.GELU'}.")
    p = meta["preprocessing"]
    prep = Preprocessing(
        size=int(p["size"]), mean=tuple(p["mean"]), std=tuple(p["std"]), interpolation=p["interpolation"],
        resize_mode=p["resize_mode"], resize=p.get("resize", "scale"),
        tte=any(v != "standard" for v in views), tte_expand=int(p.get("tte_expand", 24)))
    return backbone, prep, resolve_precision(meta.get("precision", "fp32"), torch.device(device))


def encode_images(
    manifest: Manifest, backbone: models.Backbone, prep: Preprocessing, dtype: torch.dtype, *,
    views: tuple[str, ...], feature: str, device: torch.device, batch_size: int = knobs.PREDICT_BATCH_SIZE,
    workers: int = knobs.PREDICT_WORKERS, skip_bad: bool = False, jpeg_decode: JpegDecoder | None = None, progress: bool = True,
    cast_weights: bool = True,
) -> tuple[list[int], list[torch.Tensor], list[tuple[str, str]]]:
    """Encode every image of ``manifest`` as extraction does (:func:`image_batches`,
    :func:`encode_views`): returns (rows encoded, features [n, D] per view of ``views``,
    skipped ``(source, reason)``). An unreadable image is an error naming it, unless
    ``skip_bad`` (then it is listed in the skipped and left out). ``cast_weights=False`` keeps
    the tower's weights in the dtypes they have (a LIFT tower: frozen weights in the run's
    precision, trained ones in fp32, as its evaluation ran) instead of casting all to ``dtype``."""
    from featcache.progress import bar as progress_bar

    visual = backbone.visual
    if cast_weights and dtype != torch.float32 and device.type == "cuda":
        visual = visual.to(dtype)  # as extraction does (half weights on a GPU)
    kind = 0 if feature == "embed" else 1
    order = list(range(len(manifest)))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rows_out: list[int] = []
    feats: dict[str, list[torch.Tensor]] = {v: [] for v in views}
    skipped: list[tuple[str, str]] = []
    bar = progress_bar(len(order), "encode", unit="img", progress=progress)
    with torch.inference_mode():
        for rows, std, tte, errs in image_batches(manifest, prep, batches, workers, device, jpeg_decode):
            rows_l = rows.tolist()
            bad = [(manifest.sources[r], e) for r, e in zip(rows_l, errs, strict=True) if e]
            if bad and not skip_bad:
                raise DataError(f"{bad[0][1]} Pass --skip-bad to skip unreadable images and go on.")
            skipped += bad
            good = [j for j, e in enumerate(errs) if not e]
            if good:
                out = encode_views(visual, prep, std, tte, device, dtype)
                keep = torch.as_tensor(good, device=device)
                for v in views:
                    feats[v].append(out[v][kind][keep].float())
                rows_out += [rows_l[j] for j in good]
            bar.update(len(rows_l))
    bar.close()
    if not rows_out:
        raise DataError(f"None of the {len(order)} images could be read (first: {skipped[0][0]}: {skipped[0][1]}).")
    return rows_out, [torch.cat(feats[v]) for v in views], skipped
