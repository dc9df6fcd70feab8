"""``featcache predict --run RUN --cache CACHE``: a run's trained heads applied to another cache.

Read top to bottom: find the run's checkpoints (``checkpoints/seed-S.pt``, loaded with
``weights_only=True``); refuse a cache made with another model or class list; read the
features of the chosen rows (the five TTE crops when the run used them); apply each seed's
saved model (:class:`featcache.heads.cached.Predictor`), with the run's post-hoc adjustment;
write predictions and, where the cache has labels, metrics (:class:`featcache.runs.RunWriter`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import torch

from featcache.cache import open_cache
from featcache.device import resolve_device
from featcache.errors import FeatcacheError
from featcache.heads.cached import Predictor
from featcache.heads.losses import ClassPrior, posthoc_adjust
from featcache.metrics import compute_metrics
from featcache.preprocess import TTE_VIEWS
from featcache.runs import (
    RunResult,
    RunWriter,
    clear_run,
    load_checkpoint,
    refuse_existing_run,
    write_json,
)


def default_predict_out(run_dir: Path, cache_path: str | Path) -> Path:
    """``<run>-predict-<cache stem>``, beside the run (never inside it)."""
    return run_dir.parent / f"{run_dir.name}-predict-{Path(cache_path).stem}"


def predict_run(run_dir: str | Path, cache_path: str, *, out: str | Path | None = None,
                device: str = "auto", split: str = "all", overwrite: bool = False) -> RunResult:
    """Apply a run's saved heads (every seed) to another cache with the same model fingerprint.

    Writes ``predictions.parquet`` (and, when the cache has labels, metrics over the chosen
    rows: ``all`` or a source split ``train|val|test``) to ``out`` (default
    :func:`default_predict_out`). An ``out`` equal to or inside the run directory is refused
    (it would overwrite or change the run); so is one holding an earlier prediction, unless
    ``overwrite``.
    """
    run_dir = Path(run_dir)
    ckpts = sorted((run_dir / "checkpoints").glob("seed-*.pt"))
    if not ckpts:
        raise FeatcacheError(f"{run_dir} holds no checkpoints/seed-*.pt; is it a train-head run?")
    out_dir = Path(out) if out else default_predict_out(run_dir, cache_path)
    run_abs, out_abs = run_dir.resolve(), out_dir.resolve()
    if out_abs == run_abs or run_abs in out_abs.parents:
        raise FeatcacheError(
            f"--out {out_dir} is {'the run directory' if out_abs == run_abs else 'inside the run directory'} "
            f"{run_dir}; predictions there would overwrite or change the run. Choose an --out "
            f"outside it (default: {default_predict_out(run_dir, cache_path)})."
        )
    refuse_existing_run(out_dir, overwrite=overwrite)
    cache = open_cache(cache_path)
    dev = resolve_device(device)
    first = load_checkpoint(ckpts[0])  # weights_only=True: a crafted pickle is refused, not run
    if first["model_fingerprint"] != cache.model_fingerprint:
        raise FeatcacheError(
            f"Cache {cache.path} was made with a different model or preprocessing than run "
            f"{run_dir} (model fingerprint {cache.model_fingerprint[:12]} vs "
            f"{first['model_fingerprint'][:12]}); its features are not comparable. Extract "
            "it with the run's model and preprocessing."
        )
    if list(cache.descriptor.class_ids) != first["class_ids"]:
        raise FeatcacheError(
            f"Cache {cache.path} has classes {list(cache.descriptor.class_ids)} but the run "
            f"was trained on {first['class_ids']}."
        )
    rows = np.arange(len(cache)) if split == "all" else cache.split_indices(split)
    if rows.size == 0:
        raise FeatcacheError(f"Cache {cache.path} has no rows in split '{split}'.")
    tte = bool(first["config"].get("tte"))
    views = TTE_VIEWS if tte else (first["view"],)
    feats = [cache.features(v, first["feature"])[rows].to(dev) for v in views]
    if overwrite:
        clear_run(out_dir)
    writer = RunWriter(out_dir, {"run": str(run_dir), "cache": str(cache_path), "split": split,
                                 "device": str(dev)}, cache.class_names, method=f"predict:{run_dir.name}")
    labels = cache.labels[rows]
    for path in ckpts:
        ck = first if path == ckpts[0] else load_checkpoint(path)
        predictor = Predictor(ck["model"], dev)
        logits = torch.stack([predictor(f) for f in feats]).mean(0)
        counts = torch.as_tensor(ck["train_counts"], device=dev)
        logits = posthoc_adjust(logits, ClassPrior.from_counts(counts).log_prior[0], ck["posthoc_tau"])
        scores = logits.float().cpu().numpy()
        seed = int(path.stem.split("-")[1])
        metrics = compute_metrics(labels, scores, num_classes=cache.num_classes,
                                  train_counts=np.asarray(ck["train_counts"]))
        writer.add_seed(seed, metrics, labels=labels, scores=scores, rows=rows, ids=cache.ids)
    summary = writer.finish()
    write_json(out_dir / "config.json", writer.config)
    return RunResult(out_dir, summary, writer.config)


def predictions(run_dir: str | Path) -> pl.DataFrame:
    """A run's ``predictions.parquet`` as a polars table."""
    return pl.read_parquet(Path(run_dir) / "predictions.parquet")
