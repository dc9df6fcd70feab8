"""Extraction: run a frozen open_clip image encoder once over a data set, write the cache.

``run(ExtractConfig(...))`` reads top to bottom:

1. build the data set's manifest and load the backbone;
2. resolve every setting that changes the features into ``meta`` and hash it (fingerprint);
3. take the output's lock (one run per ``--out``), refuse an existing cache or unfinished
   extraction with another fingerprint (unless ``overwrite``; the refusal names the settings
   that differ), or resume one with the same fingerprint after checking that the images its
   finished shards came from are unchanged (size and mtime of each file);
4. encode this rank's pending chunks and save each finished chunk as a shard. Images reach
   the device as uint8: decoded and resized by PIL in worker processes (``decoder="pil"``,
   exactly open_clip's preprocessing), or read as bytes by the workers and decoded, resized
   and cropped on the device (``decoder="device"``: nvJPEG on a GPU), or streamed from
   pre-decoded arrays; the device normalises, cuts the TTE crops and encodes;
5. on rank 0, once every chunk is there, encode the text prompts and assemble the cache.

Under ``torchrun`` each rank takes every WORLD_SIZE-th chunk; the chunking does not depend on
the number of ranks, so a run on 2 processes writes the same cache as a run on 1.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from featcache import models
from featcache.cache import (
    CacheHeader,
    CacheWriteError,
    OutputLock,
    ShardStore,
    check_complete,
    check_out,
    complete_fingerprint,
    fingerprint_of,
    write_cache,
)
from featcache.datasets import build_manifest
from featcache.datasets.base import Manifest
from featcache.decode import JpegDecoder, jpeg_decoder
from featcache.device import precision_name, resolve_device, resolve_precision, synchronize
from featcache.distributed import barrier, default_workers, dist_info, init_distributed
from featcache.errors import CacheError, DataError, FeatcacheError
from featcache.images import encode_views, image_batches
from featcache.knob_fields import knob_field
from featcache.preprocess import Preprocessing
from featcache.progress import bar as progress_bar
from featcache.prompts import fill_prompt, render_templates

log = logging.getLogger(__name__)

VERSIONED = ("featcache", "torch", "torchvision", "torchcodec", "open_clip_torch", "timm", "numpy", "pillow")
DECODERS = ("pil", "device")


@dataclass(frozen=True)
class ExtractConfig:
    """Everything ``featcache extract`` needs. Settings marked (fp) enter the fingerprint."""

    dataset: str  # (fp) registered data set name
    root: str | None = None  # data set folder (fp through the manifest hash)
    dataset_options: dict = field(default_factory=dict)  # (fp) adapter options, e.g. subset
    model: str = knob_field("model")  # (fp)
    pretrained: str | None = knob_field("pretrained")  # (fp) tag | file | hf-hub:ID | random; None = default
    tte: bool = knob_field("extract_tte")  # (fp) also store the five TTE crops
    resize: str = knob_field("resize")  # (fp) scale | pad | pad-norm
    input_size: int | None = None  # (fp) the encoder's input size; None = the model's own
    interpolation: str | None = None  # (fp) bilinear | bicubic | ...; None = the model's own
    precision: str = knob_field("encoder_precision")  # (fp) fp32 | bf16 | fp16 | auto (bf16 on GPU, fp32 on CPU)
    decoder: str = knob_field("decoder")  # (fp, image files only) pil | device (torchvision.io; nvJPEG on a GPU)
    out: str | None = None
    device: str = knob_field("device_choice")
    batch_size: int = knob_field("extract_batch_size")
    workers: int | None = knob_field("workers")  # decoding processes; None = default_workers()
    chunk_size: int = knob_field("chunk_size")  # rows per resumable shard (fp: it fixes the batching)
    skip_bad: bool = False
    overwrite: bool = False
    compile: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise FeatcacheError(f"--batch-size must be at least 1, got {self.batch_size}.")
        if self.chunk_size < 1:
            raise FeatcacheError(f"--chunk-size must be at least 1, got {self.chunk_size}.")
        if self.workers is not None and self.workers < 0:
            raise FeatcacheError(f"--workers must be 0 or more, got {self.workers}.")
        if self.decoder not in DECODERS:
            raise FeatcacheError(f"Unknown --decoder '{self.decoder}'. Choose from: {', '.join(DECODERS)}.")


@dataclass
class ExtractResult:
    """What a run did: where the cache is, how many images, how fast."""

    out: Path
    num_images: int
    num_encoded: int
    seconds: float
    resumed_chunks: int
    skipped: list[tuple[str, str]]
    already_complete: bool = False
    input_seconds: float = 0.0  # of ``seconds``, spent getting the next batch ready (rank 0)

    @property
    def images_per_second(self) -> float:
        return self.num_encoded / self.seconds if self.seconds > 0 else float("nan")

    @property
    def input_fraction(self) -> float:
        """Share of the time the encoder waited for input: near 1 = input-bound, near 0 = compute-bound."""
        return self.input_seconds / self.seconds if self.seconds > 0 else float("nan")


def default_out(cfg: ExtractConfig) -> Path:
    """``caches/<dataset>[-subset]-<model>-<weights>[-tte][-pad].h5``; a file option (``--csv
    /abs/dir/x.csv``) contributes its stem (``csv-x-...``), never its folders."""
    parts = [cfg.dataset, *(_option_word(v) for v in cfg.dataset_options.values() if v is not None)]
    weights = cfg.pretrained or models.default_pretrained(cfg.model)
    weights = Path(weights).stem if os.sep in weights else weights.replace(":", "-").replace("/", "-")
    model = cfg.model.replace("timm:", "timm-", 1).replace("hf-hub:", "hf-hub-", 1).replace("/", "-")
    if model.startswith("hf-hub-"):  # the hub id is the model and its weights at once
        weights = None
    parts += [p for p in (model, weights) if p]
    if cfg.tte:
        parts.append("tte")
    if cfg.resize != "scale":
        parts.append(cfg.resize)
    return Path("caches") / ("-".join(parts) + ".h5")


def _option_word(value: object) -> str:
    """A data set option's value as one word of a file name: a path gives its stem."""
    text = str(value)
    if "/" in text or os.sep in text or Path(text).suffix.lower() in (".csv", ".txt", ".json", ".tsv"):
        text = Path(text).stem
    return text.replace("/", "-").replace(os.sep, "-")


def library_versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


# --------------------------------------------------------------------------------------


def describe(
    cfg: ExtractConfig, manifest: Manifest, backbone: models.Backbone, prep: Preprocessing, precision: str, decoder: str | None
) -> tuple[dict, str, str]:
    """(meta, fingerprint, model_fingerprint) of an extraction.

    The model fingerprint covers what makes two caches' standard features comparable (model,
    weights, QuickGELU where built with it, the standard view's preprocessing, precision), so a head trained on one cache can
    predict on another; the fingerprint covers every setting of this cache. ``decoder`` says
    how files were decoded and resized: ``pil`` (open_clip's own transform) or
    ``device:<library>``; ``None`` for pre-decoded arrays.
    """
    preprocessing = prep.to_dict()
    model_settings = {
        "model": backbone.name,
        "pretrained": backbone.pretrained if backbone.weights_id != backbone.pretrained else backbone.weights_id,
        "weights_id": backbone.weights_id,
        "preprocessing": {k: v for k, v in preprocessing.items() if k not in ("tte", "tte_expand", "views")},
        "precision": precision,
    }
    if backbone.quick_gelu:  # only when set: caches built with nn.GELU (all before QuickGELU
        model_settings["quick_gelu"] = True  # was applied) keep their fingerprints
    meta = {
        **model_settings,
        "quick_gelu": backbone.quick_gelu,  # towers built with open_clip's QuickGELU
        "preprocessing": preprocessing,
        "decoder": decoder,
        "dataset": cfg.dataset,
        "dataset_options": _normalised_options(cfg.dataset_options),
        "root": str(Path(cfg.root).resolve()) if cfg.root else None,
        "manifest_sha256": manifest.fingerprint(),
        "num_images": len(manifest),
        "chunk_size": cfg.chunk_size,
        "versions": library_versions(),
    }
    return meta, fingerprint_of(fingerprint_settings(meta)), fingerprint_of(model_settings)


def fingerprint_settings(meta: dict) -> dict:
    """The part of ``meta`` the fingerprint covers: everything but the root folder's spelling
    (the images themselves enter through the manifest hash) and what the cache adds itself.
    ``quick_gelu: false`` is left out, as in the model settings: GELU caches keep the
    fingerprints they had before the activation was recorded."""
    return {k: v for k, v in meta.items()
            if k not in ("root", "descriptor", "views") and (k != "quick_gelu" or v)}


def _normalised_options(options: dict) -> dict:
    """Data set options with path values (``csv=labels.csv``) made absolute, so a relative and an
    absolute spelling of the same file give the same fingerprint."""
    out = {}
    for key, value in options.items():
        if isinstance(value, str) and (os.sep in value or "." in value) and Path(value).expanduser().exists():
            value = str(Path(value).expanduser().resolve())
        out[key] = value
    return out


def _differences(old: dict | None, new: dict) -> str:
    """``" (differs: precision fp32 → bf16, preprocessing.tte)"``: which settings differ."""
    if not isinstance(old, dict):
        return ""

    def flat(d: dict, prefix: str = "") -> dict:
        items = {}
        for k, v in d.items():
            if isinstance(v, dict):
                items.update(flat(v, f"{prefix}{k}."))
            else:
                items[f"{prefix}{k}"] = v
        return items

    a, b = flat(old), flat(new)
    diff = []
    for key in sorted(set(a) | set(b)):
        if json.dumps(a.get(key), default=str) != json.dumps(b.get(key), default=str):
            hint = " (the images, their labels or their list changed)" if key == "manifest_sha256" else ""
            if key == "manifest_sha256" or isinstance(a.get(key), (list, dict)) or isinstance(b.get(key), (list, dict)):
                diff.append(f"{key}{hint}")
            else:
                diff.append(f"{key} {a.get(key)!r} → {b.get(key)!r}")
    return f" (differs: {'; '.join(diff[:6])}{' …' if len(diff) > 6 else ''})" if diff else ""


def _existing_settings(out: Path) -> dict | None:
    """The fingerprinted settings recorded in the cache at ``out`` (None when unreadable)."""
    import h5py

    try:
        with h5py.File(out, "r") as f:
            return fingerprint_settings(json.loads(f.attrs["meta"]))
    except (OSError, KeyError, ValueError, TypeError):
        return None


def _prepare_target(
    out: Path, fingerprint: str, overwrite: bool, store: ShardStore, rank: int, settings: dict | None = None
) -> bool:
    """Check an existing cache / partial extraction; returns True when the cache is already done.

    With ``overwrite`` an existing cache is kept until the new one is complete: it is replaced
    by the final rename only (so a failed rerun loses nothing); an unfinished extraction with
    other arguments, or a damaged one, is discarded.
    """
    if out.exists() and not overwrite:
        try:
            check_complete(out)
        except CacheError as e:
            raise CacheError(
                f"{out} already exists but is not a usable cache ({e}). Pass --overwrite to replace it, "
                "or --out to write elsewhere."
            ) from None
        if complete_fingerprint(out) == fingerprint:
            return True
        existing = _existing_settings(out)
        raise CacheError(
            f"Cache {out} already exists and was made with different arguments"
            f"{_differences(existing, settings or {})}. Pass --overwrite to replace it, or --out to "
            "write elsewhere."
        )
    if store.exists():
        try:
            state = store.state()
        except CacheError:
            if not overwrite:
                raise
            state = {"fingerprint": None}
        if state["fingerprint"] != fingerprint:
            if not overwrite:
                raise CacheError(
                    f"An unfinished extraction into {out} ({store.dir}) was started with different "
                    f"arguments{_differences(state.get('settings'), settings or {})}; refusing to mix them. "
                    "Re-run it with its original arguments to finish it, or pass --overwrite to discard it."
                )
            if rank == 0:
                store.remove()
    return False


def _check_unchanged(store: ShardStore, manifest: Manifest, chunks: list[int] | set[int]) -> None:
    """Refuse to use finished shards whose image files changed since they were encoded.

    Each shard records the size and mtime of every image file it was computed from; a file
    whose size or mtime differs now (or a shard whose rows are not its chunk's) stops the run
    with a message naming the file and the shard.
    """
    for k in sorted(chunks):
        z = store.load(k, ("rows", "stats"))
        expected = np.arange(store.chunk_rows(k).start, store.chunk_rows(k).stop)
        if z["rows"].shape != expected.shape or not np.array_equal(z["rows"], expected):
            raise store.damaged(k, f"it holds rows other than chunk {k}'s {expected[0]}..{expected[-1]}")
        if z["stats"].shape != (len(expected), 2):
            raise store.damaged(k, f"its file stats have shape {z['stats'].shape}")
        now = manifest.file_stats(expected)
        changed = np.flatnonzero((now != z["stats"]).any(axis=1))
        if len(changed):
            r = int(expected[changed[0]])
            raise CacheError(
                f"Image file {manifest.sources[r]} (row {r}) changed since it was encoded into "
                f"{store.path(k)} (size/mtime {tuple(int(x) for x in z['stats'][changed[0]])} → "
                f"{tuple(int(x) for x in now[changed[0]])}; {len(changed)} changed file(s) in that "
                "chunk). Resuming would mix old and new features: pass --overwrite to start over, "
                "or restore the files."
            )


def run(cfg: ExtractConfig) -> ExtractResult:
    """Extract features for ``cfg`` and write (or finish) the cache. Returns what was done."""
    if cfg.out:
        check_out(Path(cfg.out))  # before any work: a folder, or an unwritable place, is refused now
    device = resolve_device(cfg.device)
    init_distributed(device)
    rank = dist_info()[0]
    precision = precision_name(cfg.precision, device)  # featcache.device: auto -> bf16 on a GPU
    dtype = resolve_precision(precision, device)
    models.check_weights(cfg.model, cfg.pretrained)  # a download that cannot happen fails now, not after the scan
    manifest = build_manifest(cfg.dataset, cfg.root, **cfg.dataset_options)
    backbone = models.load_backbone(cfg.model, cfg.pretrained, device=device)
    prep = Preprocessing.from_open_clip(backbone.preprocess, resize=cfg.resize, tte=cfg.tte)
    if cfg.input_size or cfg.interpolation:  # e.g. the MedMNIST benchmark's 224 px, bilinear
        prep = replace(prep, size=cfg.input_size or prep.size, interpolation=cfg.interpolation or prep.interpolation)
    jpeg = jpeg_decoder(device) if cfg.decoder == "device" and manifest.arrays is None else None
    decoder = None if manifest.arrays is not None else "pil" if jpeg is None else f"device:{jpeg[0]}"
    meta, fingerprint, model_fp = describe(cfg, manifest, backbone, prep, precision, decoder)
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    if not cfg.out:
        check_out(out)
    lock = OutputLock(out).acquire() if rank == 0 else None  # before anything at out is opened
    try:
        return _extract_locked(cfg, out, manifest, backbone, prep, meta, fingerprint, model_fp, device, dtype, jpeg)
    finally:
        if lock is not None:
            lock.release()


def _extract_locked(
    cfg: ExtractConfig, out: Path, manifest: Manifest, backbone: models.Backbone, prep: Preprocessing, meta: dict,
    fingerprint: str, model_fp: str, device: torch.device, dtype: torch.dtype, jpeg: tuple[str, JpegDecoder] | None,
) -> ExtractResult:
    """Steps 3-5 of :func:`run`, holding the output's lock (on rank 0)."""
    rank, world = dist_info()
    store = ShardStore(out)
    settings = fingerprint_settings(meta)
    if _prepare_target(out, fingerprint, cfg.overwrite, store, rank, settings):
        log.info("cache %s is already complete with the same fingerprint", out)
        return ExtractResult(out, len(manifest), 0, 0.0, 0, [], already_complete=True)
    barrier()
    if rank == 0 and not store.exists():
        store.remove()  # a folder without state.json (killed while starting) holds nothing to keep
        store.start(fingerprint, len(manifest), cfg.chunk_size, settings)
    barrier()
    _wait_for(store.dir / "state.json")  # several nodes: a shared file system may lag the barrier

    done_before = store.done()
    if rank == 0:
        _check_unchanged(store, manifest, done_before)
    barrier()
    mine = [k for k in range(store.num_chunks()) if k % world == rank and k not in done_before]
    t0 = time.perf_counter()
    encoded, input_seconds = _encode_chunks(cfg, manifest, backbone, prep, store, mine, device, dtype, jpeg)
    synchronize(device)
    seconds = time.perf_counter() - t0
    barrier()

    skipped: list[tuple[int, str]] = []
    if rank == 0:
        _wait_for_chunks(store, timeout=300.0 if world > 1 else 0.0)
        skipped = _assemble(out, cfg, manifest, backbone, prep, store, meta, fingerprint, model_fp, device)
        store.remove()
    barrier()  # every rank returns only once the cache is complete
    return ExtractResult(
        out, len(manifest), encoded, seconds, len(done_before),
        [(manifest.sources[r], why) for r, why in skipped], input_seconds=input_seconds,
    )


def _encode_chunks(
    cfg: ExtractConfig,
    manifest: Manifest,
    backbone: models.Backbone,
    prep: Preprocessing,
    store: ShardStore,
    chunks: list[int],
    device: torch.device,
    dtype: torch.dtype,
    jpeg: tuple[str, JpegDecoder] | None = None,
) -> tuple[int, float]:
    """Encode ``chunks`` and save each as a shard; returns (images encoded, seconds spent
    waiting for input)."""
    if not chunks:
        return 0, 0.0
    visual = backbone.visual
    if dtype != torch.float32 and device.type == "cuda":
        visual = visual.to(dtype)  # frozen inference: half weights beat autocast (DESIGN §6)
    encode = torch.compile(models.image_features) if cfg.compile else models.image_features
    batches, owner = [], []
    for k in chunks:
        rows = list(store.chunk_rows(k))
        for i in range(0, len(rows), cfg.batch_size):
            batches.append(rows[i : i + cfg.batch_size])
            owner.append(k)
    n_total = sum(len(b) for b in batches)
    workers = cfg.workers if cfg.workers is not None else default_workers()
    stream = image_batches(manifest, prep, batches, workers, device, jpeg[1] if jpeg else None)
    waited = [0.0]

    pending: dict[int, list] = {}
    remaining = {k: sum(1 for o in owner if o == k) for k in chunks}
    bar = progress_bar(n_total, "extract", unit="img", progress=cfg.progress and dist_info()[0] == 0)

    def finish(k: int, rows: torch.Tensor, errs: list[str], views: dict) -> None:
        """Bring one batch's features to the host; save the chunk once all its batches are in."""
        block = {"rows": rows.numpy(), "errors": np.array(errs, dtype=str)}
        for name, (emb, cls) in views.items():
            block[f"{name}/embed"] = emb.float().cpu().numpy()
            block[f"{name}/cls"] = cls.float().cpu().numpy()
        pending.setdefault(k, []).append(block)
        remaining[k] -= 1
        if remaining[k] == 0:
            parts = pending.pop(k)
            parts[0]["stats"] = manifest.file_stats(np.asarray(store.chunk_rows(k)))  # [n, 2] size, mtime
            writer.submit(k, parts)
        bar.update(len(rows))

    previous = None
    with _ShardWriter(store) as writer, torch.inference_mode():
        for b, (rows, std, tte, errs) in enumerate(_timed(stream, waited)):
            bad = [(int(r), e) for r, e in zip(rows.tolist(), errs, strict=True) if e]
            if bad and not cfg.skip_bad:
                raise DataError(
                    f"{bad[0][1]} (row {bad[0][0]}). Pass --skip-bad to record unreadable images in "
                    "the cache and go on; the chunks finished so far are kept."
                )
            views = encode_views(visual, prep, std, tte, device, dtype, encode)  # {view: (embed, cls)}
            # On a GPU this batch is only queued; copying the previous batch's results to the
            # host now overlaps that copy (and the shard writing) with this batch's compute.
            if previous is not None:
                finish(*previous)
            previous = (owner[b], rows, errs, views)
        if previous is not None:
            finish(*previous)
    bar.close()
    return n_total, waited[0]


class _ShardWriter:
    """Saves finished chunks from one background thread, so the device is not left idle while
    a shard (up to ~130 MB with TTE) is written; at most ``depth`` chunks wait in its queue.

    Leaving the ``with`` block — normally or by an error — waits for every queued chunk, so
    the chunks finished before an error are on disk for the resume; a failed write re-raises.
    """

    def __init__(self, store: ShardStore, depth: int = 2) -> None:
        self.store, self.depth = store, depth
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="featcache-shards")
        self.queued: deque[Future] = deque()

    def submit(self, k: int, parts: list[dict[str, np.ndarray]]) -> None:
        while len(self.queued) >= self.depth:
            self.queued.popleft().result()
        self.queued.append(self.pool.submit(self._save, k, parts))

    def _save(self, k: int, parts: list[dict[str, np.ndarray]]) -> None:
        stats = parts[0].pop("stats")
        arrays = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
        self.store.save(k, {**arrays, "stats": stats})

    def __enter__(self) -> _ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            while self.queued:
                self.queued.popleft().result()
        finally:
            self.pool.shutdown(wait=True)


def _timed(stream: Iterator, waited: list[float]) -> Iterator:
    """Yield from ``stream``, adding the seconds spent waiting for each item to ``waited[0]``."""
    it = iter(stream)
    while True:
        t = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        waited[0] += time.perf_counter() - t
        yield item


def _assemble(
    out: Path,
    cfg: ExtractConfig,
    manifest: Manifest,
    backbone: models.Backbone,
    prep: Preprocessing,
    store: ShardStore,
    meta: dict,
    fingerprint: str,
    model_fp: str,
    device: torch.device,
) -> list[tuple[int, str]]:
    """Write the cache from the shards plus the text features; returns the skipped rows."""
    desc = manifest.descriptor
    templates, text = [], None
    if backbone.has_text:  # timm image encoders have no text tower: no text features
        templates = render_templates(desc.data_type)
        prompts = [fill_prompt(t, name) for t in templates for name in desc.class_names]
        text = models.text_features(backbone, prompts, device)  # [T*C, E]
        text = text.view(len(templates), desc.num_classes, -1).numpy()
    header = CacheHeader(
        descriptor=desc,
        ids=manifest.ids,
        labels=manifest.labels,
        splits=manifest.splits,
        sources=manifest.sources,
        meta=meta,
        fingerprint=fingerprint,
        model_fingerprint=model_fp,
        views=prep.views,
        projection=backbone.projection().float().cpu().numpy(),
        logit_scale=backbone.logit_scale,
        templates=templates,
        text_features=text,
    )
    # skipped rows must be known before writing (they are left out of the image arrays)
    # the images must still be the ones encoded (a change during the run is caught here too)
    _check_unchanged(store, manifest, range(store.num_chunks()))
    skipped: list[tuple[int, str]] = []
    for k in range(store.num_chunks()):
        z = store.load(k, ("rows", "errors"))
        if z["errors"].shape != z["rows"].shape:
            raise store.damaged(k, f"{len(z['errors'])} error texts for {len(z['rows'])} rows")
        skipped += [(int(r), str(e)) for r, e in zip(z["rows"], z["errors"], strict=True) if e]

    widths: dict[str, int] = {}

    def blocks() -> Iterator[tuple[np.ndarray, dict]]:
        for k in range(store.num_chunks()):
            z = store.load(k)
            feats = {}
            for v in prep.views:
                feats[v] = {}
                for kind in ("embed", "cls"):
                    a = z.get(f"{v}/{kind}")
                    width = widths.setdefault(kind, a.shape[-1] if a is not None and a.ndim == 2 else -1)
                    if a is None or a.shape != (len(z["rows"]), width) or a.dtype.kind != "f":
                        got = "nothing" if a is None else f"shape {a.shape} {a.dtype}"
                        raise store.damaged(k, f"{v}/{kind} holds {got}, expected [{len(z['rows'])}, {width}] floats")
                    feats[v][kind] = a
            yield z["rows"], feats

    try:
        write_cache(out, header, blocks(), skipped)
    except CacheWriteError as e:
        raise CacheWriteError(
            f"{e} The finished chunks are kept in {store.dir}: once the cause is fixed, run the same "
            "command again to assemble them."
        ) from None
    return skipped


def _wait_for(path: Path, timeout: float = 600.0) -> None:
    t = time.monotonic()
    while not path.exists():
        if time.monotonic() - t > timeout:
            raise CacheError(f"Timed out waiting for {path} (written by rank 0).")
        time.sleep(0.05)


def _wait_for_chunks(store: ShardStore, timeout: float = 300.0) -> None:
    """Wait until every chunk's shard is visible (other nodes' shards can lag on a shared
    file system); a chunk still missing after ``timeout`` seconds is an error."""
    t = time.monotonic()
    while missing := set(range(store.num_chunks())) - store.done():
        if time.monotonic() - t > timeout:
            raise CacheError(
                f"Extraction into {store.dir} is missing chunks {sorted(missing)[:10]} after all ranks "
                "finished; run the same command again to complete them."
            )
        time.sleep(0.2)
