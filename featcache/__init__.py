"""featcache: a feature cache for frozen open_clip models, with pluggable long-tail heads.

The flat public API, so that a notebook never needs the file layout::

    import featcache
    cache = featcache.open_cache("caches/isic2018-ViT-B-16-openai.h5")
    result = featcache.train_head(featcache.TrainHeadConfig(cache=cache.path, head="cosine"))
    featcache.HEADS.names()          # every registered head

Everything but the errors and the registry helper is imported on first use (PEP 562), so
``import featcache`` (and ``featcache --help``) stays fast and pulls in no torch.

The layers, each importing only from those below it (checked by ``tests/test_layers.py``):
core (``featcache.*``: cache, datasets, models, preprocessing, metrics, runs, PEFT) <
``featcache.heads`` (heads, losses, samplers, the batched trainer) < ``featcache.pipelines``
(one ``run(config)`` per command) < ``featcache.cli``.
"""

from __future__ import annotations

import importlib
from typing import Any

from featcache.errors import CacheError, DataError, FeatcacheError
from featcache.registry import Registry

__version__ = "0.1.0"

# public name -> (module, attribute): resolved lazily by __getattr__.
_LAZY: dict[str, tuple[str, str]] = {
    # the cache
    "open_cache": ("featcache.cache", "open_cache"),
    "FeatureCache": ("featcache.cache", "FeatureCache"),
    # backbones and data
    "load_backbone": ("featcache.models", "load_backbone"),
    "Backbone": ("featcache.models", "Backbone"),
    "DATASETS": ("featcache.datasets.base", "DATASETS"),
    "build_manifest": ("featcache.datasets.base", "build_manifest"),
    "load_descriptor": ("featcache.datasets.base", "load_descriptor"),
    "compute_metrics": ("featcache.metrics", "compute_metrics"),
    # comparing runs: which folders are runs, and the HTML report
    "collect_runs": ("featcache.report", "collect_runs"),
    "write_html_report": ("featcache.report", "write_html"),
    # registries of components
    "HEADS": ("featcache.heads.base", "HEADS"),
    "LOSSES": ("featcache.heads.losses", "LOSSES"),
    "SAMPLERS": ("featcache.heads.samplers", "SAMPLERS"),
    "PEFT_METHODS": ("featcache.peft", "METHODS"),
    # pipelines: a config and its run(config)
    "ExtractConfig": ("featcache.pipelines.extract", "ExtractConfig"),
    "extract": ("featcache.pipelines.extract", "run"),
    "ImportConfig": ("featcache.pipelines.import_features", "ImportConfig"),
    "import_features": ("featcache.pipelines.import_features", "run"),
    "TrainHeadConfig": ("featcache.pipelines.train_head", "TrainHeadConfig"),
    "train_head": ("featcache.pipelines.train_head", "run"),
    "TfaLtConfig": ("featcache.pipelines.tfa_lt", "TfaLtConfig"),
    "tfa_lt": ("featcache.pipelines.tfa_lt", "run"),
    "GridConfig": ("featcache.pipelines.grid", "GridConfig"),
    "grid": ("featcache.pipelines.grid", "run"),
    "CompareConfig": ("featcache.pipelines.compare", "CompareConfig"),
    "compare": ("featcache.pipelines.compare", "run"),
    "ReproduceConfig": ("featcache.pipelines.reproduce", "ReproduceConfig"),
    "reproduce": ("featcache.pipelines.reproduce", "run"),
    "FinetuneConfig": ("featcache.pipelines.finetune", "FinetuneConfig"),
    "finetune": ("featcache.pipelines.finetune", "run"),
    "predict_run": ("featcache.pipelines.predict", "predict_run"),
    "predict_images": ("featcache.pipelines.predict", "predict_images"),
    "ExportConfig": ("featcache.pipelines.export", "ExportConfig"),
    "export": ("featcache.pipelines.export", "run"),
    "load_saved_run": ("featcache.heads.saved", "load_saved_run"),
    "BenchConfig": ("featcache.pipelines.bench_medmnist", "BenchConfig"),
    "bench_medmnist": ("featcache.pipelines.bench_medmnist", "run"),
}

__all__ = ["CacheError", "DataError", "FeatcacheError", "Registry", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use."""
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'featcache' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
