"""MedMNIST foundation-model benchmark (DESIGN.md §3): ``featcache bench medmnist``.

``run(BenchConfig(...))`` reads top to bottom:

1. check every name (data sets with a did-you-mean, backbones, methods) and find every npz
   file (:func:`featcache.datasets.medmnist.locate_files`; ``--download`` fetches missing ones
   through the ``medmnist`` package) before any
   work starts;
2. for each data set × size × resize × backbone, extract the cache (one per combination,
   through :mod:`featcache.pipelines.extract`) or reuse it when it is already complete;
3. linear probes from the cache (:func:`train_probes`): every learning rate of the grid and
   every seed is one *member* of the one batched trainer
   (:func:`featcache.heads.training.train_members`), and all members of one cache train
   together (AdamW, head lr decayed ×0.9 every 200 iterations; ``--recipe paper``: FMMIC's 15,000
   iterations at batch 64 and lr 1e-3, see :data:`RECIPES`); the training set is the official
   train split, or for ``--per-class N`` N images per class from it (a fresh seeded draw, or
   FMMIC's first N); within each run the checkpoint with the best val ACC among
   :func:`check_iterations` is kept (FMMIC's rule); across a grid the learning rate is
   chosen on the official val split (mean over seeds of ``select_metric``), and only then
   is test reported;
4. optionally (``--methods linear,finetune``) end-to-end fine-tuning (:func:`finetune_once`):
   every parameter of the image encoder at a constant learning rate (FMMIC's 1e-6 for CNNs,
   1e-7 for ViTs, or an ``--encoder-lrs`` grid), the head with the probe's recipe, the best
   val-ACC checkpoint tested;
5. the outputs (DESIGN.md §5): ``config.json``, ``metrics.json``, ``metrics.parquet``/``.csv``
   (one row per configuration, learning rate and seed, with a ``selected`` column),
   ``summary.parquet``/``.csv`` (one row per selected cell, mean ± std over seeds),
   ``table.md``/``.parquet``/``.csv`` (the paper's layout: rows backbone × method × size ×
   resize, columns data set ACC / AUC), ``size_resize.png`` and, with ``--per-class``,
   ``data_efficiency.png`` (drawn by :func:`featcache.plots.write_bench_plots`).

Metrics are MedMNIST's (via :func:`featcache.metrics.compute_metrics`): ACC is argmax accuracy
for multi-class, accuracy at threshold 0.5 for binary (softmax probability of class 1, which
equals argmax of the two logits; with ``--binary-head bce`` the sigmoid of FMMIC's one logit) and multi-label (sigmoid per label, mean over labels); AUC
is the macro one-vs-rest ROC AUC (binary: AUC of class 1; multi-label: mean over labels).
ChestMNIST trains with BCE. ``many_acc``/``medium_acc``/``few_acc`` are not defined for
MedMNIST (no class groups) and are NaN (``null`` in JSON).

``metrics.json``'s top-level figures are the benchmark average: for each seed, the mean over
every cell trained on the full training split (data set × backbone × method × size ×
resize); then mean and std (ddof 0) over seeds. ``metrics.json["cells"]`` holds each cell's
own figures.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from featcache import knobs, models
from featcache.backbones import BackboneSpec
from featcache.cache import open_cache
from featcache.datasets import build_manifest
from featcache.datasets.medmnist import SIZES, SUBSETS, locate_files, medmnist_descriptor
from featcache.device import autocast, resolve_device, resolve_precision
from featcache.errors import DataError, FeatcacheError, unknown
from featcache.finetuning import train_step
from featcache.heads.base import Head, HeadContext, MemberSpec, build_head
from featcache.heads.training import batch_rows, predict_logits, train_members
from featcache.knob_fields import knob_field
from featcache.metrics import METRIC_KEYS, compute_metrics, summarize
from featcache.pipelines import extract
from featcache.preprocess import RESIZE_MODES, Preprocessing, array_batch
from featcache.progress import bar as progress_bar
from featcache.runs import clear_run, refuse_existing_run, with_provenance
from featcache.schedules import multiplier_at
from featcache.seeding import legacy_random_state, numpy_generator, seed_global

log = logging.getLogger(__name__)

METHODS = ("linear", "finetune")
FEATURES = ("embed", "cls")
SELECT_METRICS = ("acc", "auc")
CELL_KEYS = ("dataset", "size", "resize", "backbone", "method", "per_class")
BINARY_HEADS = ("softmax", "bce")
PER_CLASS_DRAWS = ("random", "first")

# The two recipes. "paper" is FMMIC's public code (github.com/FupingWu90/FMMIC, commit
# 4119c3b, Common_Main.py): --total_Iter_Num 15000 (l. 259), --lr 1e-3 (l. 249), --lr_decay
# 0.9 every --lr_decay_iters 200 (l. 250-251), BatchSize 64 (l. 291; 32 for DINOv2
# fine-tuning, l. 288-289), the head's AdamW weight_decay 1e-2 (Common_Trainer.py l. 94-95,
# 128-129), validation ACC checked about 10 times and the best checkpoint tested
# (Common_Trainer.py l. 255-270, 299). "fast" is featcache's earlier grid: 1000 iterations,
# batch 128, head lr {1e-4, 1e-3, 1e-2} picked on val; it is not the paper's recipe.
RECIPES: dict[str, dict] = {
    "paper": {"iterations": 15000, "batch_size": 64, "lrs": (1e-3,), "val_checks": 10},
    "fast": {"iterations": 1000, "batch_size": 128, "lrs": (1e-4, 1e-3, 1e-2), "val_checks": 10},
}
# FMMIC's encoder learning rates by family (Common_Main.py l. 32-33, 281-284: LR_List1 = 1e-6
# for vgg16/resnet18/densenet121/effi_b4/Incept_v3/InceptResnet_v2, LR_List2 = 1e-7 otherwise).
ENCODER_LR = {"cnn": 1e-6, "vit": 1e-7}
INPUT_SIZES = ("paper", "model")  # or a number of pixels


# --------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class BenchConfig:
    """Every setting of one benchmark run (CLI flags of ``featcache bench medmnist``).

    ``recipe`` (:data:`RECIPES`) fills ``iterations``, ``batch_size``, ``lrs`` and
    ``val_checks`` when they are ``None``; a value given explicitly overrides it and is listed
    in ``recipe_overrides``. ``paper`` is FMMIC's code: AdamW, head lr 1e-3 decayed by
    ``lr_decay`` every ``decay_every`` iterations, 15,000 iterations at batch 64, AdamW weight
    decay 0.01; within each training run the checkpoint with the best validation ACC among
    ``val_checks`` checks is tested (FMMIC's rule, :func:`check_iterations`); across the
    ``lrs`` grid (one lr in ``paper``) the lr with the best mean ``select_metric`` on val wins.
    Fine-tuning: the head with ``finetune_head_lr`` and the same decay, the encoder at a
    constant lr from ``encoder_lrs`` (empty: FMMIC's 1e-6 for CNNs, 1e-7 for ViTs, several:
    the paper's lr study as a grid selected on val), ``finetune_iterations`` (default
    ``iterations``) at ``finetune_batch_size`` (default ``batch_size``; 32 for DINOv2 under
    ``paper``). Images reach the encoder at ``input_size`` (``paper``: 224 px, 518 for
    DINOv2 as FMMIC l. 121-122; ``model``: the model's own; or pixels) with
    ``interpolation`` (``bilinear`` as FMMIC's torchvision resize, or ``model``).
    """

    datasets: tuple[str, ...]
    root: str | None = None
    backbones: tuple[str, ...] = knob_field("medmnist_backbones")
    sizes: tuple[int, ...] = knob_field("medmnist_sizes")
    resize: tuple[str, ...] = knob_field("medmnist_resize")
    seeds: tuple[int, ...] = knob_field("medmnist_seeds")
    per_class: tuple[int, ...] = knob_field("medmnist_per_class")
    methods: tuple[str, ...] = knob_field("medmnist_methods")
    recipe: str = knob_field("medmnist_recipe")
    iterations: int | None = knob_field("medmnist_iterations")  # None: the recipe's
    lrs: tuple[float, ...] | None = knob_field("medmnist_lrs")  # None: the recipe's
    lr_decay: float = knob_field("lr_decay")
    decay_every: int = knob_field("decay_every")
    batch_size: int | None = knob_field("medmnist_batch_size")  # None: the recipe's
    val_checks: int | None = knob_field("medmnist_val_checks")  # None: the recipe's; 0 = test the final weights
    weight_decay: float = knob_field("medmnist_weight_decay")
    feature: str = knob_field("medmnist_feature")
    select_metric: str = knob_field("medmnist_select_metric")
    encoder_lrs: tuple[float, ...] = knob_field("medmnist_encoder_lrs")  # empty: by family (ENCODER_LR)
    finetune_head_lr: float = knob_field("medmnist_finetune_head_lr")
    finetune_iterations: int | None = knob_field("medmnist_finetune_iterations")
    finetune_batch_size: int | None = knob_field("medmnist_finetune_batch_size")
    input_size: int | str = knob_field("medmnist_input_size")
    interpolation: str = knob_field("medmnist_interpolation")
    binary_head: str = knob_field("medmnist_binary_head")
    per_class_draw: str = knob_field("medmnist_per_class_draw")
    out: str = knob_field("medmnist_out")
    plot_format: str = knob_field("plot_format")  # figure formats, e.g. "png,pdf" (featcache.plots.parse_formats)
    cache_dir: str | None = None  # default: caches/ (shared with `featcache extract`)
    device: str = knob_field("device_choice")
    download: bool = False
    progress: bool = True
    recipe_overrides: tuple[str, ...] = field(default=(), init=False)

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise FeatcacheError(msg)

        if self.recipe not in RECIPES:
            raise unknown("--recipe", self.recipe, tuple(RECIPES))
        preset = RECIPES[self.recipe]
        overrides = []
        for key, value in preset.items():
            given = getattr(self, key)
            if given is None:
                object.__setattr__(self, key, value)
            elif (tuple(given) if key == "lrs" else given) != value:
                overrides.append(key)
        object.__setattr__(self, "recipe_overrides", tuple(overrides))
        if isinstance(self.input_size, str) and self.input_size.isdigit():
            object.__setattr__(self, "input_size", int(self.input_size))
        if isinstance(self.input_size, str) and self.input_size not in INPUT_SIZES:
            raise FeatcacheError(f"--input-size must be paper, model or a number of pixels, got '{self.input_size}'.")
        need(not isinstance(self.input_size, int) or self.input_size >= 8,
             f"--input-size must be at least 8 pixels, got {self.input_size}.")
        need(self.interpolation in ("model", "bilinear", "bicubic"),
             f"--interpolation must be bilinear, bicubic or model, got '{self.interpolation}'.")
        if self.binary_head not in BINARY_HEADS:
            raise unknown("--binary-head", self.binary_head, BINARY_HEADS)
        if self.per_class_draw not in PER_CLASS_DRAWS:
            raise unknown("--per-class-draw", self.per_class_draw, PER_CLASS_DRAWS)
        need(self.val_checks >= 0, f"--val-checks must be >= 0, got {self.val_checks}.")
        from featcache.plots import parse_formats

        parse_formats(self.plot_format)  # an unknown format fails here, before any work
        need(all(lr >= 0 and math.isfinite(lr) for lr in self.encoder_lrs),
             f"--encoder-lrs must be numbers >= 0, got {self.encoder_lrs}.")
        need(len(set(self.encoder_lrs)) == len(self.encoder_lrs), f"--encoder-lrs has duplicates: {self.encoder_lrs}.")
        need(self.finetune_batch_size is None or self.finetune_batch_size >= 1,
             f"--finetune-batch-size must be at least 1, got {self.finetune_batch_size}.")

        need(len(self.datasets) > 0, "--datasets is empty; name at least one MedMNIST data set.")
        for name in self.datasets:
            if name not in SUBSETS:
                hint = " (3D MedMNIST sets are not part of this benchmark)" if name.endswith("3d") else ""
                err = unknown("MedMNIST data set", name, SUBSETS)
                raise FeatcacheError(str(err) + hint)
        need(len(self.backbones) > 0, "--backbones is empty; name at least one backbone.")
        for size in self.sizes:
            need(size in SIZES, f"--sizes: {size} is not a MedMNIST size; choose from {', '.join(map(str, SIZES))}.")
        for mode in self.resize:
            if mode not in RESIZE_MODES:
                raise unknown("--resize mode", mode, RESIZE_MODES)
        for method in self.methods:
            if method not in METHODS:
                raise unknown("--methods entry", method, METHODS)
        need(len(self.seeds) > 0, "--seeds is empty; give at least one seed.")
        need(len(set(self.seeds)) == len(self.seeds), f"--seeds has duplicates: {self.seeds}.")
        need(all(n >= 1 for n in self.per_class), f"--per-class sizes must be >= 1, got {self.per_class}.")
        need(self.iterations >= 1, f"--iterations must be at least 1, got {self.iterations}.")
        need(len(self.lrs) > 0 and all(lr > 0 and math.isfinite(lr) for lr in self.lrs),
             f"--lrs must be positive numbers, got {self.lrs}.")
        need(0 < self.lr_decay <= 1, f"--lr-decay must be in (0, 1], got {self.lr_decay}.")
        need(self.decay_every >= 1, f"--decay-every must be at least 1, got {self.decay_every}.")
        need(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}.")
        need(self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}.")
        if self.feature not in FEATURES:
            raise unknown("--feature", self.feature, FEATURES)
        if self.select_metric not in SELECT_METRICS:
            raise unknown("--select-metric", self.select_metric, SELECT_METRICS)
        need(self.finetune_iterations is None or self.finetune_iterations >= 1,
             f"--finetune-iterations must be at least 1, got {self.finetune_iterations}.")

    @property
    def backbone_specs(self) -> list[BackboneSpec]:
        return [BackboneSpec.parse(s) for s in self.backbones]

    def to_dict(self) -> dict:
        """Every setting, resolved: absolute paths, the weights, input size and interpolation
        each backbone resolves to, the fine-tuning iterations and batch size."""
        out = asdict(self)
        out["root"] = str(Path(self.root).expanduser().resolve()) if self.root else None
        out["out"] = str(Path(self.out).expanduser().resolve())
        out["cache_dir"] = str(self.resolved_cache_dir().expanduser().resolve())
        out["finetune_iterations"] = self.finetune_iterations or self.iterations
        out["recipe_description"] = self.describe_recipe()
        out["encoder_lrs"] = list(self.encoder_lrs) or {f"auto ({k})": v for k, v in ENCODER_LR.items()}
        out["backbones_resolved"] = [
            {"spec": b.spec, "model": b.model, "pretrained": b.weights(), "input_size": self.input_for(b)[0] or "model",
             "interpolation": self.input_for(b)[1] or "model", "finetune_batch_size": self.finetune_batch_for(b)}
            for b in self.backbone_specs
        ]
        return out

    def describe_recipe(self) -> str:
        """One line naming the recipe that runs, with any overrides."""
        name = {"paper": "paper (FMMIC's code)", "fast": "fast (featcache's grid, not the paper's recipe)"}[self.recipe]
        checks = f"best val ACC of up to {self.val_checks} checks" if self.val_checks else "final weights"
        text = (f"recipe {name}: {self.iterations} iterations, batch {self.batch_size}, head lr "
                f"{', '.join(f'{lr:g}' for lr in self.lrs)} x{self.lr_decay:g} every {self.decay_every}, {checks}")
        if self.recipe_overrides:
            text += f" (overridden: {', '.join(self.recipe_overrides)})"
        return text

    def input_for(self, spec: BackboneSpec) -> tuple[int | None, str | None]:
        """(input size, interpolation) for ``spec``; ``None`` = the model's own."""
        if self.input_size == "model":
            size = None
        elif self.input_size == "paper":
            size = 518 if "dinov2" in spec.model.lower() else 224  # FMMIC Common_Main.py l. 121-122
        else:
            size = int(self.input_size)
        return size, (None if self.interpolation == "model" else self.interpolation)

    def finetune_batch_for(self, spec: BackboneSpec) -> int:
        """Fine-tuning batch: ``finetune_batch_size``, else 32 for DINOv2 under ``paper``
        (FMMIC Common_Main.py l. 288-289), else ``batch_size``."""
        if self.finetune_batch_size:
            return self.finetune_batch_size
        if self.recipe == "paper" and "batch_size" not in self.recipe_overrides and "dinov2" in spec.model.lower():
            return 32
        return self.batch_size

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path("caches")


# --------------------------------------------------------------------------------------
# Data: per-class draws (the npz files: featcache.datasets.medmnist.locate_files)


def per_class_subset(labels: np.ndarray, train_rows: np.ndarray, n: int, seed: int, draw: str = "random") -> np.ndarray:
    """``n`` training rows per class (all of a class's rows when it has fewer).

    ``draw="random"`` (default, DESIGN.md §3): each (seed, n) gets a fresh, independent
    seeded draw; multi-label data (``labels`` [N, C]): ``n`` rows are drawn among the
    positives of each label and ``n`` among the rows with no positive label; the union is
    returned (rows may serve several labels). ``draw="first"`` is FMMIC's (dataset.py l.
    234-249): the first ``n`` rows of each class in file order, the same for every seed; for
    multi-label ChestMNIST a seeded random choice of ``n · C`` rows (dataset.py l. 236-239).
    """
    if draw not in PER_CLASS_DRAWS:
        raise unknown("per-class draw", draw, PER_CLASS_DRAWS)
    rng = numpy_generator(seed, n, 0x4D4544)  # featcache.seeding (numbers as before)
    sel = labels[train_rows]
    if draw == "first":
        if sel.ndim == 2:
            k = min(n * sel.shape[1], len(train_rows))
            return np.sort(legacy_random_state(seed).choice(train_rows, size=k, replace=False)).astype(np.int64)
        firsts = [train_rows[sel == c][:n] for c in range(int(sel.max()) + 1 if sel.size else 0)]
        return np.sort(np.concatenate(firsts)).astype(np.int64) if firsts else np.zeros(0, np.int64)
    if sel.ndim == 2:
        groups = [sel[:, c] > 0 for c in range(sel.shape[1])] + [sel.sum(1) == 0]
    else:
        groups = [sel == c for c in range(int(sel.max()) + 1 if sel.size else 0)]
    picked = []
    for mask in groups:
        rows = train_rows[mask]
        if len(rows) > n:
            rows = rng.choice(rows, size=n, replace=False)
        picked.append(rows)
    return np.unique(np.concatenate(picked)).astype(np.int64) if picked else np.zeros(0, np.int64)


# --------------------------------------------------------------------------------------
# The linear probes: members of the one batched trainer (AdamW with step decay)


@dataclass(frozen=True)
class ProbeRecipe:
    """The probes' optimisation: AdamW (torch's defaults but the weight decay) with a
    step-decayed learning rate (StepLR stepped per iteration), for ``iterations`` steps of
    ``batch_size`` rows, each epoch a fresh shuffle whose last partial batch is dropped
    (FMMIC's ``drop_last=True``, Common_Main.py l. 136-143)."""

    iterations: int = 1000
    batch_size: int = 128
    weight_decay: float = knobs.MEDMNIST_WEIGHT_DECAY
    lr_decay: float = knobs.LR_DECAY
    decay_every: int = knobs.DECAY_EVERY

    def member(self, pool_size: int, lr: float, seed: int, loss: str = "ce") -> MemberSpec:
        """One probe as a member of :func:`featcache.heads.training.train_members`.

        The batch is at most the pool (b = min(batch, rows), so a small per-class subset still
        trains); the initial values (nn.Linear's U(±1/√D)) and the batches come from ``seed``
        alone (stream ``medmnist/probe``), so members that differ only in lr see the same data.
        The run is ``iterations`` steps; the trainer derives the epochs from it.
        """
        return MemberSpec(seed=seed, stream="medmnist/probe", sampler="instance", loss=loss,
                          optimizer="adamw", lr=lr, weight_decay=self.weight_decay, schedule="step",
                          lr_decay=self.lr_decay, decay_every=self.decay_every,
                          steps=self.iterations, batch_size=min(self.batch_size, pool_size),
                          drop_last=True)


def check_iterations(n_pool: int, batch_size: int, iterations: int, checks: int) -> list[int]:
    """The iterations after which validation ACC is checked, FMMIC's rule in iterations.

    FMMIC (Common_Trainer.py l. 255-259) checks after epoch ``e`` when ``e % (E // n) == 0``
    or ``e == E - 1``, with ``E`` = iterations // batches per epoch (its loader drops the
    last partial batch, Common_Main.py l. 136-143) and ``n = min(10, E)``. An epoch here is
    the same ``n_pool // b`` batches (b = min(batch, n_pool), the last partial batch
    dropped); the final iteration is always checked too (FMMIC stops at E whole epochs;
    featcache trains all ``iterations``). ``checks = 0``: only the final weights.
    """
    if checks <= 0:
        return [iterations]
    b = min(batch_size, n_pool)
    per_epoch = max(1, n_pool // max(b, 1))
    epochs = iterations // per_epoch
    if epochs == 0:
        return [iterations]
    every = epochs // min(checks, epochs)
    its = sorted({(e + 1) * per_epoch for e in range(epochs) if e % every == 0} | {epochs * per_epoch, iterations})
    return its


def val_acc(labels: np.ndarray, scores: np.ndarray) -> float:
    """MedMNIST's ACC (as :func:`featcache.metrics.compute_metrics`): argmax for one label per
    image, threshold 0.5 on the sigmoid (logit > 0) per label for multi-label."""
    if labels.ndim == 2:
        return float(((scores > 0) == (labels > 0)).mean())
    return float((scores.argmax(1) == labels).mean())


def train_probes(
    feats: torch.Tensor,
    labels: torch.Tensor,
    pools: list[np.ndarray],
    lrs: list[float],
    seeds: list[int],
    recipe: ProbeRecipe,
    num_classes: int,
    checkpoint_at: Collection[int] = (),
    on_checkpoint: Callable[[int, Head], None] | None = None,
) -> Head:
    """Train G linear probes at once through the one trainer; returns the ``linear`` head.

    ``feats`` ``[N, D]`` and ``labels`` (``[N]`` long, or ``[N, C]`` float for multi-label,
    trained with BCE) live on the training device; member g trains on rows ``pools[g]`` with
    learning rate ``lrs[g]`` and seed ``seeds[g]`` (:meth:`ProbeRecipe.member`). A member
    trained with others ends with the weights it gets alone (the trainer's invariant).
    ``on_checkpoint(t, head)`` is called after iteration ``t`` (1-based) for every ``t`` in
    ``checkpoint_at`` (the live head: copy what you keep).
    """
    dev = feats.device
    if not (len(lrs) == len(seeds) == len(pools)):
        raise ValueError(f"{len(pools)} pools, {len(lrs)} lrs and {len(seeds)} seeds")
    for g, pool in enumerate(pools):
        if len(pool) == 0:
            raise FeatcacheError(f"Linear probe member {g} has an empty training set.")
    loss = "bce" if labels.dim() == 2 else "ce"
    members = [recipe.member(len(p), lr, s, loss) for p, lr, s in zip(pools, lrs, seeds, strict=True)]
    head = build_head("linear", HeadContext(feats.shape[1], num_classes), members, device=dev)
    train_members(head, feats, labels, [torch.as_tensor(np.asarray(p), device=dev) for p in pools],
                  share_batches=True, progress=False, desc="probes",
                  checkpoint_at=checkpoint_at, on_checkpoint=on_checkpoint)
    return head


def medmnist_figures(labels: np.ndarray, scores: np.ndarray) -> dict:
    """MedMNIST ACC/AUC and the other contract figures of one evaluation (no class groups:
    ``many/medium/few_acc`` are NaN).

    ``auc`` averages the classes (labels) that have both positives and negatives in
    ``labels``; the official evaluator (medmnist 3.0.2 ``evaluator.py`` l. 157-163, ``getAUC``)
    sums scikit-learn's per-class AUC over every class, so a class absent from the labels
    makes it NaN. ``auc_official`` is that figure and ``classes_absent`` counts such classes;
    the table marks cells where they differ.
    """
    out = compute_metrics(labels, scores, num_classes=scores.shape[1])
    figs = {k: out[k] for k in METRIC_KEYS}
    if labels.ndim == 2:
        absent = int(sum(1 for c in range(labels.shape[1]) if labels[:, c].min() == labels[:, c].max()))
    else:
        absent = int(scores.shape[1] - len(np.unique(labels)))
    figs["classes_absent"] = absent
    figs["auc_official"] = math.nan if absent else figs["auc"]
    return figs


def binary_scores(logit: np.ndarray) -> np.ndarray:
    """One BCE logit ``[n, 1]`` -> two columns ``[0, z]``: softmax gives P(class 1) = sigmoid(z),
    so the MedMNIST figures read it exactly as FMMIC's sigmoid output."""
    return np.concatenate([np.zeros_like(logit), logit], axis=1)


# --------------------------------------------------------------------------------------
# End-to-end fine-tuning (optional)


def _encoder_for_finetuning(spec: BackboneSpec, num_classes: int, device: torch.device) -> models.Backbone:
    """A fresh backbone with every parameter of its image encoder trainable (end to end, as
    FMMIC's ``ft``: all parameters but the classifier go to the encoder optimiser,
    Common_Trainer.py l. 63-72): patch embedding, positional and class embeddings,
    ln_pre/ln_post and the projection included for open_clip, everything for timm."""
    backbone = models.load_backbone(spec.model, spec.pretrained, device=device)
    backbone.visual.requires_grad_(True)
    return backbone


def encoder_family(visual: torch.nn.Module) -> str:
    """``vit`` when the encoder has attention layers (a module class named ``...Attention``:
    timm's ``Attention``, torch's ``MultiheadAttention``, Swin's ``WindowAttention``), else
    ``cnn`` (open_clip's ResNets pool with ``AttentionPool2d``, which does not count)."""
    for module in visual.modules():
        if type(module).__name__.endswith("Attention"):
            return "vit"
    return "cnn"


class EncoderWithHead(torch.nn.Module):
    """The image encoder's feature (``kind`` 0: the embedding, 1: the pre-projection ``cls``)
    and the linear head on it; the head runs in fp32 outside any autocast (FMMIC trains in
    fp32; featcache's bf16 autocast covers the encoder only)."""

    def __init__(self, visual: torch.nn.Module, head: torch.nn.Linear, kind: int) -> None:
        super().__init__()
        self.visual, self.head, self.kind = visual, head, kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 3, S, S] -> [B, outputs]
        feats = models.image_features(self.visual, x)[self.kind]
        with torch.autocast(x.device.type, enabled=False):
            return self.head(feats.float())


def finetune_once(
    spec: BackboneSpec,
    arrays: np.ndarray,
    labels: np.ndarray,
    pool: np.ndarray,
    eval_rows: dict[str, np.ndarray],
    resize: str,
    seed: int,
    cfg: BenchConfig,
    device: torch.device,
    num_classes: int,
    encoder_lr: float | None = None,
) -> dict:
    """Fine-tune one backbone end to end on rows ``pool``; return scores ``[n, C]`` per eval split
    of the checkpoint with the best val ACC, with ``encoder_lr`` and ``best_iteration``.

    AdamW with two groups: the head (``finetune_head_lr``, decayed like the probe) and the
    encoder (``encoder_lr``, constant; ``None``: :data:`ENCODER_LR` of its family). Images
    are ``arrays`` ``[N, H, W, C]`` uint8 brought to the input size by ``resize`` exactly as
    extraction does. Val ACC is checked at :func:`check_iterations` (``eval_rows["val"]``);
    the best checkpoint (first on ties, FMMIC's ``>``) is restored before scoring.
    """
    seed_global(seed)
    backbone = _encoder_for_finetuning(spec, num_classes, device)
    prep = Preprocessing.from_open_clip(backbone.preprocess, resize=resize)
    size, interpolation = cfg.input_for(spec)
    prep = replace(prep, size=size or prep.size, interpolation=interpolation or prep.interpolation)
    visual = backbone.visual
    if encoder_lr is None:
        encoder_lr = ENCODER_LR[encoder_family(visual)]
    kind = 0 if cfg.feature == "embed" else 1
    dim = backbone.embed_dim if kind == 0 else int(backbone.projection().shape[0])
    multi = labels.ndim == 2
    bce = cfg.binary_head == "bce" and num_classes == 2 and not multi
    outputs = 1 if bce else num_classes
    iterations = cfg.finetune_iterations or cfg.iterations
    batch = cfg.finetune_batch_for(spec)
    recipe = ProbeRecipe(iterations, batch, cfg.weight_decay, cfg.lr_decay, cfg.decay_every)
    # the head starts where the linear probe of this seed starts, and sees its batches
    member = recipe.member(len(pool), cfg.finetune_head_lr, seed, "bce" if multi or bce else "ce")
    probe = build_head("linear", HeadContext(dim, outputs), [member])
    head = torch.nn.Linear(dim, outputs).to(device)
    with torch.no_grad():
        head.weight.copy_(probe.weight[0])
        head.bias.copy_(probe.bias[0])
    enc_params = [p for p in visual.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": head.parameters(), "lr": cfg.finetune_head_lr},
         {"params": enc_params, "lr": encoder_lr}],
        weight_decay=cfg.weight_decay,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda t: multiplier_at(t, cfg.lr_decay, cfg.decay_every), lambda t: 1.0])
    dtype = resolve_precision("auto", device)  # featcache.device: bf16 on a GPU, fp32 on the CPU
    y_all = torch.from_numpy(labels).to(device)
    y_all = y_all.float() if multi or bce else y_all.long()

    model = EncoderWithHead(visual, head, kind)

    def images(rows: np.ndarray) -> torch.Tensor:  # [b, 3, S, S], normalised as extraction does
        x = array_batch(arrays, rows, device)
        return prep.normalize(prep.resize_arrays(x, prep.size), torch.float32)

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if bce:
            return F.binary_cross_entropy_with_logits(logits[:, 0], y)
        if multi:
            return F.binary_cross_entropy_with_logits(logits, y)
        return F.cross_entropy(logits, y)

    @torch.no_grad()
    def scores_of(rows: np.ndarray) -> np.ndarray:
        def logits_of(part: np.ndarray) -> torch.Tensor:
            with autocast(device, dtype):
                return model(images(part)).float().cpu()

        parts = [logits_of(rows[i : i + 256]) for i in range(0, len(rows), 256)]
        out = torch.cat(parts).numpy()
        return binary_scores(out) if bce else out

    checks = set(check_iterations(len(pool), batch, iterations, cfg.val_checks))
    best_acc, best_it, best_state = -1.0, iterations, None
    visual.train()
    # drawn on the training device, as the probes' are (a CUDA generator's numbers are not a CPU one's)
    y_rows = y_all[:, None] if bce else y_all
    steps = batch_rows(member, y_rows, torch.from_numpy(np.asarray(pool)).to(device), outputs)
    for it, rows_t in enumerate(steps, start=1):
        train_step(model, opt, loss_fn, images(rows_t.cpu().numpy()), y_all[rows_t], device, dtype)
        sched.step()
        if it in checks:
            visual.eval()
            acc = val_acc(labels[eval_rows["val"]], scores_of(eval_rows["val"]))
            visual.train()
            if acc > best_acc:
                best_acc, best_it = acc, it
                best_state = (copy.deepcopy(visual.state_dict()), copy.deepcopy(head.state_dict()))
    visual.eval()
    if best_state is not None:
        visual.load_state_dict(best_state[0])
        head.load_state_dict(best_state[1])
    out: dict = {split: scores_of(rows) for split, rows in eval_rows.items()}
    out["encoder_lr"] = float(encoder_lr)
    out["best_iteration"] = best_it
    return out


# --------------------------------------------------------------------------------------
# The run


@dataclass
class BenchResult:
    """Where the outputs went and the tables behind them."""

    out: Path
    metrics: pl.DataFrame  # one row per configuration, lr and seed
    summary: pl.DataFrame  # one row per selected cell
    table: pl.DataFrame  # the paper's layout
    files: list[Path] = field(default_factory=list)
    caches: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def cache_path(cfg: BenchConfig, subset: str, size: int, resize: str, spec: BackboneSpec) -> Path:
    """``<cache_dir>/medmnist-<subset>-<size>-<model>-<weights>-<resize>[-in<S>][-<interp>].h5``
    (the input size and interpolation when they are not the model's own)."""
    input_size, interpolation = cfg.input_for(spec)
    extra = (f"-in{input_size}" if input_size else "") + (f"-{interpolation}" if interpolation else "")
    return cfg.resolved_cache_dir() / f"medmnist-{subset}-{size}-{spec.slug()}-{resize}{extra}.h5"


def _training_sets(
    labels: np.ndarray, train: np.ndarray, per_class: tuple[int, ...], seeds: tuple[int, ...], draw: str = "random"
) -> list[tuple[int | None, int, np.ndarray]]:
    """(per_class or None for the full split, seed, rows) for every training set of a cell."""
    sets: list[tuple[int | None, int, np.ndarray]] = [(None, s, train) for s in seeds]
    for n in per_class:
        sets += [(n, s, per_class_subset(labels, train, n, s, draw)) for s in seeds]
    return sets


def _rows(base: dict, per_class: int | None, seed: int, lr: float, n_train: int,
          val: dict, test: dict, encoder_lr: float | None = None, best_iteration: int | None = None,
          constant: str | None = None) -> dict:
    row = dict(base, per_class=per_class, seed=seed, lr=lr, encoder_lr=encoder_lr, n_train=n_train,
               best_iteration=best_iteration, constant_prediction=constant)
    row.update({f"val_{k}": v for k, v in val.items()})
    row.update(test)
    return row


def constant_prediction(scores: np.ndarray, multi: bool) -> str | None:
    """The one prediction every row gets (class index, or the label vector for multi-label),
    or ``None`` when the predictions vary."""
    pred = (scores > 0).astype(int) if multi else scores.argmax(1)
    if len(pred) < 2 or not (pred == pred[0]).all():
        return None
    return str(pred[0].tolist())


def _with_bench_advice(err: FeatcacheError, spec: BackboneSpec) -> FeatcacheError:
    """Weight errors advise ``--pretrained X``, a flag of ``featcache extract``; in ``bench``
    the weights are part of the backbone spec (``timm:test_vit:random``)."""
    msg = str(err)
    if "--pretrained" not in msg:
        return err
    msg = re.sub(r"--pretrained (\S+)", lambda m: f"the backbone spec {spec.model}:{m.group(1)}", msg)
    return FeatcacheError(
        msg + f"\nIn `featcache bench medmnist` the weights follow the backbone name in --backbones: "
        f"{spec.model}:TAG, {spec.model}:/path/to/weights.safetensors or {spec.model}:random."
    )


@contextmanager
def _bench_errors(spec: BackboneSpec, input_size: int | None) -> Iterator[None]:
    """Weight errors with the bench syntax; a ViT fed another size than its position
    embeddings were built for gets a FeatcacheError naming ``--input-size``."""
    try:
        yield
    except FeatcacheError as e:
        raise _with_bench_advice(e, spec) from e
    except RuntimeError as e:
        if input_size and "must match the size of tensor" in str(e):
            raise FeatcacheError(
                f"{spec.spec} cannot encode {input_size}x{input_size} inputs ({e}): its position embeddings "
                "are built for its own input size. Pass --input-size model (the model's own size) or "
                "--input-size N with the size it was built for."
            ) from e
        raise


def run(cfg: BenchConfig, *, overwrite: bool = False) -> BenchResult:
    """Run the benchmark described by ``cfg`` and write its outputs to ``cfg.out``.

    A ``cfg.out`` that holds an earlier benchmark is refused before any work unless
    ``overwrite`` (then its files are deleted once the benchmark has finished)."""
    t0 = time.perf_counter()
    specs = cfg.backbone_specs  # names checked before any work
    files = locate_files(cfg.root, cfg.datasets, cfg.sizes, download=cfg.download)
    for subset in cfg.datasets:
        medmnist_descriptor(subset)
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    refuse_existing_run(out, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    recipe = ProbeRecipe(cfg.iterations, cfg.batch_size, cfg.weight_decay, cfg.lr_decay, cfg.decay_every)
    log.info("bench medmnist: %s", cfg.describe_recipe())

    rows: list[dict] = []
    caches: list[Path] = []
    extraction: list[dict] = []
    tasks = [(d, s, r, b) for d in cfg.datasets for s in cfg.sizes for r in cfg.resize for b in specs]
    bar = progress_bar(None, "bench", unit="cell", progress=cfg.progress, iterable=tasks)
    for subset, size, resize, spec in bar:
        bar.set_postfix_str(f"{subset} {size}px {resize} {spec.spec}")
        path = cache_path(cfg, subset, size, resize, spec)
        input_size, interpolation = cfg.input_for(spec)
        with _bench_errors(spec, input_size):
            result = extract.run(extract.ExtractConfig(
                dataset="medmnist", root=str(files[(subset, size)].parent),
                dataset_options={"subset": subset, "size": size}, model=spec.model,
                pretrained=spec.pretrained, resize=resize, input_size=input_size,
                interpolation=interpolation, out=str(path), device=cfg.device, workers=0, progress=False,
            ))
        log.info("%s cache %s", "reused" if result.already_complete else "wrote", path)
        caches.append(path)
        cache = open_cache(path)
        extraction.append({"cache": str(path.resolve()), "precision": cache.meta.get("precision"),
                           "preprocessing": cache.meta.get("preprocessing")})
        labels_np = cache.labels
        multi = cache.descriptor.multi_label
        train = cache.split_indices("train")
        val, test = cache.split_indices("val"), cache.split_indices("test")
        if min(len(train), len(val), len(test)) == 0:
            raise DataError(
                f"{files[(subset, size)]} needs train, val and test splits; it has "
                f"{len(train)}/{len(val)}/{len(test)} rows."
            )
        base = {"dataset": subset, "size": size, "resize": resize, "backbone": spec.spec,
                "model": spec.model, "weights": spec.weights(), "cache": str(path.resolve()),
                "feature": cfg.feature, "feature_dim": cache.cls_dim if cfg.feature == "cls" else cache.embed_dim}
        sets = _training_sets(labels_np, train, cfg.per_class, cfg.seeds, cfg.per_class_draw)
        C = cache.num_classes
        bce = cfg.binary_head == "bce" and C == 2 and not multi

        if "linear" in cfg.methods:
            feats = cache.features("standard", cfg.feature).to(device)  # [N, D]
            labels = torch.from_numpy(labels_np).to(device)
            labels = labels.float()[:, None] if bce else labels.float() if multi else labels.long()
            members = [(pc, s, pool, lr) for pc, s, pool in sets for lr in cfg.lrs]
            checks = [set(check_iterations(len(m[2]), recipe.batch_size, recipe.iterations, cfg.val_checks))
                      for m in members]
            val_feats = feats[torch.from_numpy(val).to(device)]
            best = {"acc": np.full(len(members), -1.0), "it": np.zeros(len(members), dtype=np.int64),
                    "w": None, "b": None}

            def keep_best(it: int, head: Head, checks=checks, best=best,  # noqa: ANN001
                          val_feats=val_feats, yv=labels_np[val], bce=bce) -> None:
                w, b = head.weight.detach(), head.bias.detach()
                if best["w"] is None:
                    best["w"], best["b"] = w.clone(), b.clone()
                scores = predict_logits(head, val_feats).cpu().numpy()
                for g in range(len(checks)):
                    if it in checks[g]:
                        acc = val_acc(yv, binary_scores(scores[g]) if bce else scores[g])
                        if acc > best["acc"][g]:  # FMMIC: strictly better replaces
                            best["acc"][g], best["it"][g] = acc, it
                            best["w"][g], best["b"][g] = w[g], b[g]

            head = train_probes(
                feats, labels, [m[2] for m in members], [m[3] for m in members],
                [m[1] for m in members], recipe, 1 if bce else C,
                checkpoint_at=set().union(*checks), on_checkpoint=keep_best,
            )
            with torch.no_grad():  # the checkpoint each member is tested on
                head.weight.copy_(best["w"])
                head.bias.copy_(best["b"])
            val_scores = predict_logits(head, val_feats).cpu().numpy()
            test_scores = predict_logits(head, feats[torch.from_numpy(test).to(device)]).cpu().numpy()
            for g, (pc, s, pool, lr) in enumerate(members):
                vs = binary_scores(val_scores[g]) if bce else val_scores[g]
                ts = binary_scores(test_scores[g]) if bce else test_scores[g]
                v = medmnist_figures(labels_np[val], vs)
                t = medmnist_figures(labels_np[test], ts)
                rows.append(_rows(dict(base, method="linear"), pc, s, lr, len(pool), v, t,
                                  best_iteration=int(best["it"][g]), constant=constant_prediction(ts, multi)))

        if "finetune" in cfg.methods:
            manifest = build_manifest("medmnist", files[(subset, size)].parent, subset=subset, size=size)
            if manifest.ids != cache.ids:
                raise DataError(f"{files[(subset, size)]} changed since {path} was written; re-extract it.")
            for pc, s, pool in sets:
                for enc_lr in cfg.encoder_lrs or (None,):
                    with _bench_errors(spec, input_size):
                        res = finetune_once(spec, manifest.arrays, labels_np, pool, {"val": val, "test": test},
                                            resize, s, cfg, device, C, encoder_lr=enc_lr)
                    v = medmnist_figures(labels_np[val], res["val"])
                    t = medmnist_figures(labels_np[test], res["test"])
                    rows.append(_rows(dict(base, method="finetune"), pc, s, cfg.finetune_head_lr,
                                      len(pool), v, t, encoder_lr=res["encoder_lr"],
                                      best_iteration=res["best_iteration"],
                                      constant=constant_prediction(res["test"], multi)))
    bar.close()

    metrics = select(pl.DataFrame(rows, infer_schema_length=None), cfg.select_metric)
    warn_constant(metrics)
    summary = summarize_cells(metrics)
    table = paper_table(summary, cfg.datasets)
    if overwrite:
        clear_run(out)
    written = write_outputs(out, cfg, metrics, summary, table, caches, device=str(device), extraction=extraction)
    return BenchResult(out, metrics, summary, table, written, caches, time.perf_counter() - t0)


def warn_constant(metrics: pl.DataFrame) -> list[str]:
    """Log a warning for every selected run whose predictions are one class for every test row
    (e.g. near-constant features under padding); returns the messages."""
    msgs = []
    for r in metrics.filter(pl.col("selected") & pl.col("constant_prediction").is_not_null()).to_dicts():
        what = "full training split" if r["per_class"] is None else f"{r['per_class']} per class"
        msgs.append(
            f"{r['dataset']} {r['size']}px {r['resize']} {r['backbone']} {r['method']} ({what}, seed {r['seed']}, "
            f"lr {r['lr']:g}): predicts {r['constant_prediction']} for every test row (test ACC "
            f"{r['acc']:.3f} is the majority rate); the features may carry no signal."
        )
        log.warning("%s", msgs[-1])
    return msgs


# --------------------------------------------------------------------------------------
# Selection, tables, plots, files


def select(metrics: pl.DataFrame, metric: str) -> pl.DataFrame:
    """Add ``selected``: per cell, the (head lr, encoder lr) with the best mean ``val_<metric>``
    over seeds (ties and NaN: the other of ACC/AUC, then the smaller lrs)."""
    other = "auc" if metric == "acc" else "acc"
    cell = [*CELL_KEYS, "lr", "encoder_lr"]
    means = metrics.group_by(cell).agg(
        pl.col(f"val_{metric}").fill_nan(None).mean().fill_null(-1.0).alias("_m"),
        pl.col(f"val_{other}").fill_nan(None).mean().fill_null(-1.0).alias("_o"),
    )
    best = (
        means.sort(["_m", "_o", "lr", "encoder_lr"], descending=[True, True, False, False], nulls_last=True)
        .group_by(list(CELL_KEYS), maintain_order=True)
        .first()
        .select([*cell])
        .with_columns(pl.lit(True).alias("selected"))
    )
    out = metrics.join(best, on=cell, how="left", nulls_equal=True)
    return out.with_columns(pl.col("selected").fill_null(False))


def summarize_cells(metrics: pl.DataFrame) -> pl.DataFrame:
    """One row per cell (selected lr): every contract figure as mean and ``_std`` over seeds."""
    chosen = metrics.filter(pl.col("selected"))
    rows = []
    for key, part in chosen.group_by(list(CELL_KEYS), maintain_order=True):
        per_seed = part.sort("seed").to_dicts()
        stats = summarize(per_seed)
        rows.append(dict(zip(CELL_KEYS, key, strict=True), lr=per_seed[0]["lr"],
                         encoder_lr=per_seed[0]["encoder_lr"], seeds=len(per_seed),
                         n_train=float(np.mean([r["n_train"] for r in per_seed])),
                         classes_absent=max(r["classes_absent"] for r in per_seed), **stats))
    return pl.DataFrame(rows, infer_schema_length=None)


def paper_table(summary: pl.DataFrame, datasets: tuple[str, ...]) -> pl.DataFrame:
    """Rows backbone × method × size × resize (full training set); per data set ACC, AUC and stds."""
    full = summary.filter(pl.col("per_class").is_null())
    keys = ["backbone", "method", "size", "resize"]
    rows = []
    for key, part in full.group_by(keys, maintain_order=True):
        row = dict(zip(keys, key, strict=True))
        for d in datasets:
            hit = part.filter(pl.col("dataset") == d)
            for m in ("acc", "auc"):
                row[f"{d}_{m}"] = hit[m][0] if len(hit) else math.nan
                row[f"{d}_{m}_std"] = hit[f"{m}_std"][0] if len(hit) else math.nan
            row[f"{d}_classes_absent"] = int(hit["classes_absent"][0]) if len(hit) else 0
        rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None)


def table_markdown(table: pl.DataFrame, datasets: tuple[str, ...]) -> str:
    """The paper's table as markdown: ``mean ± std`` (fractions, 3 decimals) per data set.

    An AUC over fewer classes than the data set has (a class absent from test) is marked
    ``†`` with a note: the official evaluator gives NaN there."""
    head = ["backbone", "method", "size", "resize"] + [f"{d} {m}" for d in datasets for m in ("ACC", "AUC")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    marked = False
    for r in table.to_dicts():
        cells = [str(r["backbone"]), str(r["method"]), str(r["size"]), str(r["resize"])]
        for d in datasets:
            for m in ("acc", "auc"):
                mean, std = r[f"{d}_{m}"], r[f"{d}_{m}_std"]
                text = "n/a" if mean is None or math.isnan(mean) else f"{mean:.3f} ± {std:.3f}"
                if m == "auc" and r.get(f"{d}_classes_absent") and text != "n/a":
                    text += " †"
                    marked = True
                cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    if marked:
        lines += ["", "† AUC over the classes present in the test split: a class is absent there, where "
                  "the official medmnist evaluator's AUC is NaN."]
    return "\n".join(lines) + "\n"


def _json_safe(obj: object) -> object:
    """NaN -> None (``null``) recursively; numpy scalars to Python."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def metrics_json(metrics: pl.DataFrame, summary: pl.DataFrame) -> dict:
    """DESIGN.md §5's metrics.json: benchmark average over full-training-set cells, per seed and
    summarised over seeds, plus each cell's own figures under ``cells``."""
    full = metrics.filter(pl.col("selected") & pl.col("per_class").is_null())
    per_seed = []
    for (seed,), part in full.group_by(["seed"], maintain_order=True):
        fig = {}
        for k in METRIC_KEYS:
            vals = part[k].cast(pl.Float64).fill_null(math.nan).to_numpy()
            fig[k] = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
        per_seed.append({"seed": seed, "cells": len(part), **fig})
    per_seed.sort(key=lambda r: r["seed"])
    doc = dict(summarize(per_seed), per_seed=per_seed)
    cells = []
    for cell in summary.to_dicts():
        match = metrics.filter(pl.col("selected"))
        for k in CELL_KEYS:
            match = match.filter(pl.col(k).is_null() if cell[k] is None else pl.col(k) == cell[k])
        cell["per_seed"] = [{"seed": r["seed"], **{k: r[k] for k in METRIC_KEYS}} for r in match.sort("seed").to_dicts()]
        cells.append(cell)
    doc["cells"] = cells
    doc["note"] = ("many_acc/medium_acc/few_acc are null: MedMNIST defines no class groups. "
                   "Top-level figures average every full-training-set cell per seed.")
    return _json_safe(doc)


def write_outputs(out: Path, cfg: BenchConfig, metrics: pl.DataFrame, summary: pl.DataFrame,
                  table: pl.DataFrame, caches: list[Path], device: str | None = None,
                  extraction: list[dict] | None = None) -> list[Path]:
    """Write every output file of the run directory; returns their paths. ``config.json``
    holds the resolved settings, the device that ran and each cache's extraction precision
    and preprocessing."""
    from featcache.plots import parse_formats, write_bench_plots

    written = []
    config = dict(cfg.to_dict(), caches=[str(p.resolve()) for p in caches], device_requested=cfg.device,
                  device=device or cfg.device, extraction=extraction or [])
    config = with_provenance(config)
    (out / "config.json").write_text(json.dumps(_json_safe(config), indent=2))
    (out / "metrics.json").write_text(json.dumps(metrics_json(metrics, summary), indent=2))
    written += [out / "config.json", out / "metrics.json"]
    for name, frame in (("metrics", metrics), ("summary", summary), ("table", table)):
        frame.write_parquet(out / f"{name}.parquet")
        frame.write_csv(out / f"{name}.csv")
        written += [out / f"{name}.parquet", out / f"{name}.csv"]
    (out / "table.md").write_text(table_markdown(table, cfg.datasets))
    written.append(out / "table.md")
    written += write_bench_plots(out, summary, per_class=bool(cfg.per_class), formats=parse_formats(cfg.plot_format))
    return written
