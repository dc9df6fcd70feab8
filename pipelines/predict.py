"""``featcache predict``: a run's trained heads applied to a cache or to image files.

Two entry points, read top to bottom:

* :func:`predict_run` (``--cache C``): refuse a cache made with another model or class list;
  choose the rows (by default the run's own held-out rows from its ``splits.parquet`` when C
  is the run's own cache, else every row); read their features (the five TTE crops when the
  run used them); apply each seed's saved model with the run's post-hoc adjustment
  (:mod:`featcache.heads.saved`); where the cache has labels, score each seed with the run's
  own many/medium/few groups, so that on the run's own cache the metrics are the run's.
* :func:`predict_images` (``--images PATH...``): rebuild the backbone and preprocessing the
  run's cache was extracted with (:func:`featcache.images.backbone_for_cache`: weights by
  hash, QuickGELU, preprocessing), encode the images with extraction's own code
  (:func:`featcache.images.encode_images`) and apply the heads the same way. A LIFT
  (finetune) run instead rebuilds each seed's fine-tuned tower and cosine head from the
  run itself (:mod:`featcache.pipelines.lift_run`) and sees the images through LIFT's test
  transforms, with the same image code.

Both write ``predictions.parquet`` and ``predictions.csv``: one row per image with the
predicted class name, the probability of every class (the mean over seeds of each seed's
softmax: the consensus), the calibrated probabilities when the run fitted a temperature, and
with ``per_seed`` each seed's prediction and probabilities.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch

from featcache import knobs
from featcache.cache import open_cache
from featcache.datasets.base import class_key
from featcache.device import resolve_device
from featcache.errors import FeatcacheError
from featcache.heads.saved import SavedRun, load_saved_run
from featcache.metrics import compute_metrics
from featcache.runs import RunWriter, clear_run, refuse_existing_run, with_provenance, write_json

log = logging.getLogger(__name__)

SPLITS = ("auto", "heldout", "all", "train", "val", "test")


@dataclass
class PredictResult:
    """What a prediction wrote: the folder, the files in it, metrics (when labelled), skips."""

    out_dir: Path
    files: list[Path]
    metrics: dict | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    table: pl.DataFrame | None = None


def default_predict_out(run_dir: Path, source: str | Path) -> Path:
    """``<run>-predict-<cache stem | images>``, beside the run (never inside it)."""
    return run_dir.parent / f"{run_dir.name}-predict-{Path(source).stem}"


def _check_out(run_dir: Path, out_dir: Path, default: Path, overwrite: bool) -> None:
    run_abs, out_abs = run_dir.resolve(), out_dir.resolve()
    if out_abs == run_abs or run_abs in out_abs.parents:
        raise FeatcacheError(
            f"--out {out_dir} is {'the run directory' if out_abs == run_abs else 'inside the run directory'} "
            f"{run_dir}; predictions there would overwrite or change the run. Choose an --out "
            f"outside it (default: {default})."
        )
    refuse_existing_run(out_dir, overwrite=overwrite)
    if (out_dir / "predictions.parquet").exists() and not overwrite:
        raise FeatcacheError(f"{out_dir} already holds predictions.parquet; pass --overwrite to replace it.")


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def prediction_table(run: SavedRun, class_names: list[str], key: dict[str, list], logits: np.ndarray,
                     scored: np.ndarray, *, per_seed: bool = False) -> pl.DataFrame:
    """One row per image: ``key`` columns, ``pred`` (class name), ``pred_index``, ``confidence``,
    ``prob_<class>`` (the mean over the seeds that scored the image of each seed's softmax),
    ``logits`` (their mean logits, a list), ``seeds`` (how many scored it), and when the run
    has a temperature ``calibrated_prob_<class>`` and ``calibrated_confidence``; with
    ``per_seed``, ``pred_seed<S>`` and ``prob_<class>_seed<S>`` (null where seed S did not score
    the image). ``logits`` [S, N, C]; ``scored`` [S, N] bool."""
    w = scored.astype(np.float64)[..., None]  # [S, N, 1]
    n = np.maximum(w.sum(0), 1)
    probs = (_softmax(logits.astype(np.float64)) * w).sum(0) / n  # [N, C]
    mean_logits = (logits.astype(np.float64) * w).sum(0) / n
    pred = probs.argmax(1)
    cols: dict[str, object] = dict(key)
    cols["pred"] = [class_names[c] for c in pred]
    cols["pred_index"] = pred.astype(np.int64)
    cols["confidence"] = probs.max(1)
    for c, name in enumerate(class_names):
        cols[f"prob_{name}"] = probs[:, c]
    temps = [s.temperature for s in run.seeds]
    if all(t is not None for t in temps):
        t = np.asarray(temps, dtype=np.float64)[:, None, None]
        cal = (_softmax(logits.astype(np.float64) / t) * w).sum(0) / n
        for c, name in enumerate(class_names):
            cols[f"calibrated_prob_{name}"] = cal[:, c]
        cols["calibrated_confidence"] = cal.max(1)
    cols["seeds"] = scored.sum(0).astype(np.int64)
    cols["logits"] = mean_logits.astype(np.float32).tolist()
    frame = pl.DataFrame(cols)
    if per_seed:
        extra = []
        for k, s in enumerate(run.seeds):
            p = _softmax(logits[k].astype(np.float64))
            mask = scored[k]
            extra.append(pl.Series(f"pred_seed{s.seed}", [class_names[c] if m else None
                                                           for c, m in zip(p.argmax(1), mask, strict=True)]))
            for c, name in enumerate(class_names):
                extra.append(pl.Series(f"prob_{name}_seed{s.seed}", np.where(mask, p[:, c], np.nan)).fill_nan(None))
        frame = frame.with_columns(extra)
    return frame


def _write_table(out_dir: Path, frame: pl.DataFrame) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(out_dir / "predictions.parquet")
    flat = frame.with_columns(pl.col("logits").list.to_struct(
        fields=[f"logit_{i}" for i in range(len(frame["logits"][0]))])).unnest("logits")
    flat.write_csv(out_dir / "predictions.csv")
    return [out_dir / "predictions.parquet", out_dir / "predictions.csv"]


def _check_classes(run: SavedRun, class_ids: list[str], where: str) -> None:
    """Same classes in the same order, ids matched as everywhere (:func:`class_key`)."""
    if [class_key(c) for c in class_ids] != [class_key(c) for c in run.class_ids]:
        raise FeatcacheError(
            f"{where} has classes {class_ids} but the run was trained on {run.class_ids} "
            "(ids are matched ignoring case, in the same order)."
        )


def _run_split_rows(run: SavedRun) -> dict[int, np.ndarray]:
    """Each seed's held-out (test) rows, from the run's ``splits.parquet``."""
    path = run.run_dir / "splits.parquet"
    if not path.exists():
        raise FeatcacheError(f"Run {run.run_dir} has no splits.parquet, so its held-out rows are "
                             "unknown; pass --split all|train|val|test.")
    frame = pl.read_parquet(path).filter(pl.col("split") == "test")
    return {s.seed: frame.filter(pl.col("seed") == s.seed)["row"].to_numpy().astype(np.int64) for s in run.seeds}


def _groups(run: SavedRun, k: int) -> dict[str, list[int]] | None:
    """Seed k's many/medium/few classes as the run scored them: from its checkpoint, else
    redrawn from the run's own cache with the run's protocol (the same deterministic split)."""
    ck = run.seeds[k].checkpoint
    if ck.get("groups") is not None:
        return {g: [int(c) for c in v] for g, v in ck["groups"].items()}
    from featcache.splits import make_split

    cfg = run.config
    try:
        cache = run.source_cache()
    except FeatcacheError:
        log.warning("run %s does not record its class groups and its cache is gone: many/medium/few "
                    "are grouped by training counts", run.run_dir)
        return None
    split = make_split(cache.labels, cache.splits, cache.descriptor, cfg.get("protocol"), run.seeds[k].seed,
                       val_fraction=cfg.get("val_fraction", 0.0), test_per_class=cfg.get("test_per_class"),
                       where=str(cache.path))
    return split.groups


def predict_run(run_dir: str | Path, cache_path: str, *, out: str | Path | None = None,
                device: str = knobs.DEVICE, split: str = knobs.PREDICT_SPLIT, per_seed: bool = False,
                overwrite: bool = False) -> PredictResult:
    """Apply a run's saved heads (every seed) to a cache with the same model fingerprint.

    ``split``: ``auto`` (default) is ``heldout`` on the run's own cache and ``all`` on another;
    ``heldout`` is each seed's test rows of the run (its ``splits.parquet``), scored as the run
    scored them (the run's metrics, exactly); ``all`` every row; ``train|val|test`` the cache's
    source split. Writes predictions (one row per image) and, when the cache has labels,
    metrics per seed to ``out`` (default :func:`default_predict_out`); an ``out`` inside the run
    is refused, one holding earlier predictions too unless ``overwrite``.
    """
    run_dir = Path(run_dir)
    if split not in SPLITS:
        raise FeatcacheError(f"--split must be one of {', '.join(SPLITS)}, got '{split}'.")
    out_dir = Path(out) if out else default_predict_out(run_dir, cache_path)
    _check_out(run_dir, out_dir, default_predict_out(run_dir, cache_path), overwrite)
    dev = resolve_device(device)
    run = load_saved_run(run_dir, dev)
    cache = open_cache(cache_path)
    if run.first["model_fingerprint"] != cache.model_fingerprint:
        raise FeatcacheError(
            f"Cache {cache.path} was made with a different model or preprocessing than run "
            f"{run_dir} (model fingerprint {cache.model_fingerprint[:12]} vs "
            f"{run.first['model_fingerprint'][:12]}); its features are not comparable. Extract "
            "it with the run's model and preprocessing."
        )
    _check_classes(run, list(cache.descriptor.class_ids), f"Cache {cache.path}")
    own = run.first.get("cache_fingerprint") == cache.fingerprint
    if split == "auto":
        split = "heldout" if own else "all"
    n = len(cache)
    if split == "heldout":
        if not own:
            raise FeatcacheError(f"--split heldout scores the run's own held-out rows, but {cache.path} "
                                 "is not the run's cache; use --split all|train|val|test.")
        held = _run_split_rows(run)
        per_seed_rows = [held[s.seed] for s in run.seeds]
    elif split == "all":
        per_seed_rows = [np.arange(n)] * len(run.seeds)
    else:
        rows = cache.split_indices(split)
        if rows.size == 0:
            present = sorted({s or "(none)" for s in cache.splits.tolist()})
            raise FeatcacheError(
                f"Cache {cache.path} has no rows in source split '{split}' (its rows' splits: "
                f"{', '.join(present)}). Use --split heldout (the run's own held-out rows, on its "
                "cache) or --split all.")
        per_seed_rows = [rows] * len(run.seeds)
    union = np.unique(np.concatenate(per_seed_rows))  # [N] rows of the table
    pos = {int(r): i for i, r in enumerate(union)}
    feats = [cache.features(v, run.feature)[union].to(dev) for v in run.views]
    logits = run.logits(feats).float().cpu().numpy()  # [S, N, C]
    scored = np.zeros((len(run.seeds), len(union)), dtype=bool)
    for k, rows in enumerate(per_seed_rows):
        scored[k, [pos[int(r)] for r in rows]] = True

    labelled = cache.labels.ndim == 1 and bool((cache.labels >= 0).all())
    if overwrite:
        clear_run(out_dir)
    files: list[Path] = []
    summary = None
    config = {"run": str(run_dir), "cache": str(cache_path), "split": split, "device": str(dev),
              "seeds": [s.seed for s in run.seeds], "own_cache": own}
    if labelled:
        writer = RunWriter(out_dir, config, cache.class_names, method=f"predict:{run_dir.name}")
        for k, s in enumerate(run.seeds):
            rows = per_seed_rows[k]
            idx = [pos[int(r)] for r in rows]
            labels = cache.labels[rows]
            metrics = compute_metrics(labels, logits[k, idx], num_classes=cache.num_classes,
                                      train_counts=np.asarray(s.checkpoint["train_counts"]),
                                      groups=_groups(run, k))
            writer.add_seed(s.seed, metrics, labels=labels, scores=logits[k, idx], rows=rows, ids=cache.ids)
        writer.predictions.clear()  # one row per image, written below
        summary = writer.finish()
        files += [out_dir / f for f in ("config.json", "metrics.json", "metrics.parquet", "metrics.csv")]
        files += [out_dir / f for f in ("confusion.png", "per_class_acc.png", "reliability.png",
                                        "per_class.parquet", "per_class.csv", "per_class_seeds.parquet")
                  if (out_dir / f).exists()]
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "config.json", with_provenance(config))
        files.append(out_dir / "config.json")
    key: dict[str, list] = {"row": union.tolist(), "id": [cache.ids[r] for r in union],
                            "path": [cache.sources[r] for r in union]}
    if labelled:
        key["label"] = [cache.class_names[int(c)] for c in cache.labels[union]]
    table = prediction_table(run, cache.class_names, key, logits, scored, per_seed=per_seed)
    files = _write_table(out_dir, table) + files
    return PredictResult(out_dir, files, summary, table=table)


def predict_images(run_dir: str | Path, images: list[str] | tuple[str, ...], *, out: str | Path | None = None,
                   cache: str | None = None, pretrained: str | None = None, device: str = knobs.DEVICE,
                   batch_size: int = knobs.PREDICT_BATCH_SIZE, workers: int = knobs.PREDICT_WORKERS, skip_bad: bool = False, per_seed: bool = False,
                   overwrite: bool = False, progress: bool = True) -> PredictResult:
    """Predict image files (files, folders, CSVs of paths) with a run, from pixels.

    The backbone, weights (checked by hash), QuickGELU and preprocessing are those recorded in
    the run's cache (``cache``, default the one in the run's config.json); the images are
    decoded, preprocessed and encoded by extraction's own code, with the run's views (TTE).
    Unreadable files stop the run naming the file, or with ``skip_bad`` are skipped and listed
    (``skipped.csv``). A LIFT (finetune) run is rebuilt from its own config.json and
    checkpoints instead (:func:`_predict_images_lift`; ``cache`` does not apply).
    """
    from featcache.decode import jpeg_decoder
    from featcache.images import backbone_for_cache, encode_images, image_manifest, image_paths
    from featcache.pipelines.lift_run import is_finetune_run

    run_dir = Path(run_dir)
    out_dir = Path(out) if out else default_predict_out(run_dir, "images")
    _check_out(run_dir, out_dir, default_predict_out(run_dir, "images"), overwrite)
    dev = resolve_device(device)
    if is_finetune_run(run_dir):
        return _predict_images_lift(run_dir, images, out_dir, cache=cache, pretrained=pretrained, dev=dev,
                                    batch_size=batch_size, workers=workers, skip_bad=skip_bad,
                                    per_seed=per_seed, overwrite=overwrite, progress=progress)
    run = load_saved_run(run_dir, dev)
    source = run.source_cache(cache)
    _check_classes(run, list(source.descriptor.class_ids), f"Cache {source.path}")
    meta = source.meta
    if meta.get("decoder") is None:
        log.warning("run %s's cache was made from pre-decoded arrays (resized on the device); image "
                    "files are decoded and resized by PIL, so features can differ slightly", run_dir)
    backbone, prep, dtype = backbone_for_cache(meta, pretrained=pretrained, views=run.views, device=dev)
    manifest = image_manifest(image_paths(images), source.class_names)
    decoder = meta.get("decoder") or "pil"
    jpeg = jpeg_decoder(dev)[1] if decoder.startswith("device") else None
    rows, feats, skipped = encode_images(manifest, backbone, prep, dtype, views=run.views, feature=run.feature,
                                         device=dev, batch_size=batch_size, workers=workers,
                                         skip_bad=skip_bad, jpeg_decode=jpeg, progress=progress)
    logits = run.logits(feats).float().cpu().numpy()  # [S, N, C]
    config = {"run": str(run_dir), "images": [str(i) for i in images], "cache": str(source.path),
              "model": meta["model"], "weights_id": meta["weights_id"], "views": list(run.views),
              "feature": run.feature, "device": str(dev), "seeds": [s.seed for s in run.seeds],
              "skipped": len(skipped)}
    return _write_image_predictions(out_dir, run, source.class_names, [manifest.sources[r] for r in rows], logits,
                                    skipped, config, per_seed=per_seed, overwrite=overwrite)


def _write_image_predictions(out_dir: Path, run: object, class_names: list[str], paths: list[str],
                             logits: np.ndarray, skipped: list[tuple[str, str]], config: dict, *,
                             per_seed: bool, overwrite: bool) -> PredictResult:
    """``predictions.parquet``/``.csv``, ``config.json`` and (when any) ``skipped.csv`` of an
    image prediction; ``logits`` [S, N, C], every seed scoring every image."""
    scored = np.ones(logits.shape[:2], dtype=bool)
    if overwrite:
        clear_run(out_dir)
    table = prediction_table(run, class_names, {"path": paths}, logits, scored, per_seed=per_seed)
    files = _write_table(out_dir, table)
    write_json(out_dir / "config.json", with_provenance(config))
    files.append(out_dir / "config.json")
    if skipped:
        pl.DataFrame({"path": [s for s, _ in skipped], "reason": [r for _, r in skipped]}).write_csv(
            out_dir / "skipped.csv")
        files.append(out_dir / "skipped.csv")
    return PredictResult(out_dir, files, None, skipped, table=table)


def _predict_images_lift(run_dir: Path, images: list[str] | tuple[str, ...], out_dir: Path, *, cache: str | None,
                         pretrained: str | None, dev: torch.device, batch_size: int, workers: int,
                         skip_bad: bool, per_seed: bool, overwrite: bool, progress: bool) -> PredictResult:
    """A LIFT (finetune) run on image files: per seed, its fine-tuned tower (PEFT weights) and
    cosine head (:mod:`featcache.pipelines.lift_run`), the images seen through LIFT's test
    transforms (the five TTE crops if the run used them) by extraction's own decoding,
    batching and skipping (:func:`featcache.images.encode_images`)."""
    from featcache.images import encode_images, image_manifest, image_paths
    from featcache.pipelines.lift_run import load_lift_run, seed_logits_of_images

    run = load_lift_run(run_dir, cache=cache)
    backbone, prep, dtype = run.backbone(pretrained, dev)
    manifest = image_manifest(image_paths(images), run.class_names)

    def encode(bb: object) -> tuple:
        return encode_images(manifest, bb, prep, dtype, views=run.views, feature="cls", device=dev,
                             batch_size=batch_size, workers=workers, skip_bad=skip_bad, progress=progress,
                             cast_weights=False)

    per, rows, skipped = [], None, []
    for k in range(len(run.seeds)):
        rows_k, logits_k, skipped_k = seed_logits_of_images(run, backbone, k, encode, dev, dtype)
        if rows is None:
            rows, skipped = rows_k, skipped_k
        per.append(logits_k.float().cpu().numpy())
    logits = np.stack(per)  # [S, N, C]
    meta = run.meta()
    config = {"run": str(run_dir), "images": [str(i) for i in images], "pipeline": "finetune",
              "method": run.config.get("method"), "model": meta["model"], "weights_id": meta["weights_id"],
              "views": list(run.views), "preprocessing": run.config.get("preprocessing"), "device": str(dev),
              "seeds": [s.seed for s in run.seeds], "skipped": len(skipped)}
    return _write_image_predictions(out_dir, run, run.class_names, [manifest.sources[r] for r in rows], logits,
                                    skipped, config, per_seed=per_seed, overwrite=overwrite)


def predictions(run_dir: str | Path) -> pl.DataFrame:
    """A run's ``predictions.parquet`` as a polars table."""
    return pl.read_parquet(Path(run_dir) / "predictions.parquet")


def seed_logits(table: pl.DataFrame) -> torch.Tensor:
    """The ``logits`` column of a prediction table as [N, C] float32."""
    return torch.tensor(table["logits"].to_list(), dtype=torch.float32)
