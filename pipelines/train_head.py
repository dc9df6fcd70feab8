"""``featcache train-head --head H --loss L``: one head on cached features, every seed at once.

Read top to bottom: load the cache's features onto the device once; draw each seed's split
(:mod:`featcache.splits`); build one batched head whose members are the seeds (each with its
own random stream, so the result per seed equals training that seed alone); train it with
:func:`featcache.training.train_members`; evaluate each member on its seed's test rows
(optionally averaging logits over the five cached TTE crops, optionally with post-hoc logit
adjustment); write the run directory (:class:`featcache.runs.RunWriter`).

The helpers here (:func:`load_data`, :func:`seed_setups`, :class:`Predictor`,
:func:`predict_run`) are shared with :mod:`pipelines.tfa_lt` and ``featcache predict``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import polars as pl
import torch

from featcache.cache import FeatureCache, open_cache
from featcache.device import PRECISIONS, resolve_device, resolve_precision
from featcache.errors import FeatcacheError, number_problem
from featcache.metrics import compute_metrics
from featcache.runs import RunWriter, clear_run, load_checkpoint, refuse_existing_run, write_json
from featcache.splits import PROTOCOLS, Split, make_split
from featcache.training import predict_logits, train_members
from heads import (
    HEADS,
    LOSSES,
    SAMPLERS,
    ClassPrior,
    HeadContext,
    MemberSpec,
    build_head,
    load_head,
    posthoc_adjust,
    prototypes_for,
)
from heads.base import INITS, SCHEDULES

log = logging.getLogger(__name__)

TTE_VIEWS = ("tte_c", "tte_tl", "tte_tr", "tte_bl", "tte_br")
FEATURE_KINDS = ("embed", "cls")
TEXT_SOURCES = ("auto", "prompts", "class-mean")


def _check_numbers(cfg: object) -> None:
    """Every float setting finite, every integer within int64 (the CLI, the grid and Python
    callers all land here): nan/inf would train to chance with exit 0, a huge integer ends
    in an OverflowError deep in torch."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        values = value if isinstance(value, tuple | list) else (value,)
        for v in values:
            problem = number_problem(v)
            if problem:
                raise FeatcacheError(f"--{f.name.replace('_', '-')} {problem}, got {v}.")


def _check_common(cfg: object) -> None:
    """Validation shared by the train-head and TFA-LT configs."""
    _check_numbers(cfg)
    seeds = cfg.seeds
    if not seeds or len(set(seeds)) != len(seeds):
        raise FeatcacheError(f"--seeds must be distinct integers, got {list(seeds)}.")
    if cfg.protocol is not None and cfg.protocol not in PROTOCOLS:
        from featcache.errors import unknown

        raise unknown("protocol", cfg.protocol, PROTOCOLS)
    if cfg.feature not in FEATURE_KINDS:
        raise FeatcacheError(f"--feature must be embed or cls, got '{cfg.feature}'.")
    if cfg.text_source not in TEXT_SOURCES:
        raise FeatcacheError(
            f"--text-source must be one of {', '.join(TEXT_SOURCES)}, got '{cfg.text_source}'."
        )
    if cfg.tau is not None and not cfg.tau > 0:
        raise FeatcacheError(f"--tau must be > 0, got {cfg.tau}.")
    if any(s < 0 for s in seeds):
        raise FeatcacheError(f"--seeds must be integers >= 0, got {list(seeds)}.")
    if cfg.test_per_class is not None and cfg.test_per_class < 1:
        raise FeatcacheError(f"--test-per-class must be an integer >= 1, got {cfg.test_per_class}.")
    if cfg.schedule not in SCHEDULES:
        raise FeatcacheError(f"--schedule must be one of {', '.join(SCHEDULES)}.")
    if cfg.tte and cfg.view != "standard":
        raise FeatcacheError("--tte evaluates on the five cached crops; it needs --view standard.")
    if cfg.precision not in PRECISIONS:
        from featcache.errors import unknown

        raise unknown("precision", cfg.precision, PRECISIONS)
    if cfg.device == "cpu":
        resolve_precision(cfg.precision, torch.device("cpu"))  # refuses fp16 on the CPU, now


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """Settings every run on cached features shares: which features and text, how the split
    is drawn and scored, where and in which precision it trains, and where it goes.
    (Keyword-only, so subclasses can start with required fields such as ``cache``.)

    ``precision``: ``fp32`` (default), ``bf16``, or ``fp16`` (GPU only) for the heads' weight
    products while training; mixed precision with fp32 master weights, optimiser state and
    losses (:func:`featcache.training.train_members`). Evaluation runs in fp32."""

    text_source: str = "auto"
    template: str = "auto"
    view: str = "standard"
    feature: str = "embed"
    tte: bool = False
    posthoc_tau: float = 0.0
    val_fraction: float = 0.0
    test_per_class: int | None = None
    device: str = "auto"
    precision: str = "fp32"
    out: str | None = None
    method: str = ""

    @classmethod
    def knobs(cls) -> list[str]:
        """Every setting's name (the CLI's long options with underscores), the method's own first."""
        shared = [f.name for f in fields(RunSettings)]
        return [f.name for f in fields(cls) if f.name not in shared] + shared


@dataclass(frozen=True)
class TrainHeadConfig(RunSettings):
    """Every setting of a single-head run. Optimiser defaults are TFA-LT's (DESIGN.md §1)."""

    cache: str
    head: str = "linear"
    loss: str = "ce"
    sampler: str = "instance"
    protocol: str | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    momentum: float = 0.9
    schedule: str = "cosine"
    tau: float | None = None  # cosine-logit temperature; None = 1/logit_scale of the cache
    sigma: float = 25.0
    gamma: float = 2.0
    la_tau: float = 1.0
    cb_beta: float = 0.9999
    init: str = "random"

    def __post_init__(self) -> None:
        HEADS.get(self.head), LOSSES.get(self.loss), SAMPLERS.get(self.sampler)
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        _check_common(self)
        if self.init not in INITS:
            raise FeatcacheError(f"--init must be one of {', '.join(INITS)}, got '{self.init}'.")
        # every remaining knob is validated by MemberSpec
        self.member(self.seeds[0], tau=self.tau or 0.01)

    def member(self, seed: int, *, tau: float) -> MemberSpec:
        """The member spec of ``seed`` (``tau`` resolved)."""
        return MemberSpec(
            seed=seed, stream=f"{self.head}/{self.sampler}", sampler=self.sampler,
            loss=self.loss, lr=self.lr, weight_decay=self.weight_decay, momentum=self.momentum,
            epochs=self.epochs, batch_size=self.batch_size, schedule=self.schedule,
            gamma=self.gamma, la_tau=self.la_tau, cb_beta=self.cb_beta, tau=tau,
            sigma=self.sigma, init=self.init,
        )


# --------------------------------------------------------------------------------------
# Shared helpers


@dataclass
class CachedData:
    """A cache's features for one view/kind, on the device, with labels."""

    cache: FeatureCache
    device: torch.device
    feats: torch.Tensor  # [N, D] training view
    eval_feats: list[torch.Tensor]  # views averaged at evaluation (the five crops with --tte)
    labels: torch.Tensor  # [N] int64 (or [N, C])
    tau: float  # resolved cosine-logit temperature

    @property
    def num_classes(self) -> int:
        """C, the number of classes."""
        return self.cache.num_classes


def load_data(cache_path: str, *, view: str, feature: str, tte: bool, device: str,
              tau: float | None) -> CachedData:
    """Open the cache and move the features of ``view`` (and the TTE crops) to the device."""
    cache = open_cache(cache_path)
    dev = resolve_device(device)
    feats = cache.features(view, feature).to(dev)  # [N, D]
    eval_feats = [cache.features(v, feature).to(dev) for v in TTE_VIEWS] if tte else [feats]
    labels = torch.as_tensor(cache.labels).to(dev)
    if labels.dim() == 1:
        labels = labels.long()
    resolved = tau if tau is not None else (1.0 / cache.logit_scale if cache.logit_scale else 0.01)
    return CachedData(cache, dev, feats, eval_feats, labels, resolved)


@dataclass
class SeedSetup:
    """One seed's split, its training rows on the device and its class prototypes."""

    seed: int
    split: Split
    pool: torch.Tensor  # [n_train] rows
    prototypes: torch.Tensor | None  # [C, D]
    prototypes_from: str
    class_means: torch.Tensor  # [C, D]


def seed_setups(data: CachedData, cfg: object, *, need_prototypes: bool) -> list[SeedSetup]:
    """Draw every seed's split and prototypes (text features or training class means)."""
    from heads.text import class_means

    cache = data.cache
    if data.num_classes < 2:
        raise FeatcacheError(
            f"Cache {cache.path} has {data.num_classes} class; a classifier needs at least two "
            "(with one, every prediction is right and accuracy is 100 %)."
        )
    out = []
    for seed in cfg.seeds:
        split = make_split(cache.labels, cache.splits, cache.descriptor, cfg.protocol, seed,
                           val_fraction=cfg.val_fraction, test_per_class=cfg.test_per_class,
                           where=str(cache.path))
        empty = np.flatnonzero(np.asarray(split.train_counts) == 0)
        if empty.size:
            names = ", ".join(str(cache.descriptor.class_ids[c]) for c in empty[:10])
            raise FeatcacheError(
                f"Seed {seed}, protocol {split.protocol}: class(es) {names} of {cache.path} have "
                "no training rows, so they cannot be learned (do train/ and test/ name the same "
                "classes?). Use another --protocol or a cache in which every class has "
                "training images."
            )
        pool = torch.as_tensor(split.train, device=data.device)
        train_x, train_y = data.feats[pool], data.labels[pool]
        protos, used = None, ""
        if need_prototypes:
            protos, used = prototypes_for(
                cfg.text_source, text_features=cache.text_features, templates=cache.templates,
                template=cfg.template, projection=cache.projection, kind=cfg.feature,
                train_feats=train_x, train_labels=train_y, num_classes=data.num_classes)
            protos = protos.to(data.device)
            if protos.shape[-1] != data.feats.shape[-1]:
                raise FeatcacheError(
                    f"Prototypes are {protos.shape[-1]}-d but the {cfg.feature} features are "
                    f"{data.feats.shape[-1]}-d; use --feature embed or --text-source class-mean."
                )
        means = class_means(train_x, train_y, data.num_classes).to(data.device)
        out.append(SeedSetup(seed, split, pool, protos, used, means))
    return out


class Predictor:
    """Logits from a saved model description (``checkpoint['model']``), for any features.

    Kinds: ``{"kind": "head", "head": ckpt}`` and ``{"kind": "tfa-lt", "branches": ckpt,
    "combine": "logit"|"feature"|"mean", "ensembler": ckpt | None}`` (the two stage-I
    branches as one head with two members, then the ensembler or the mean of their logits).
    """

    def __init__(self, model: dict, device: torch.device) -> None:
        self.kind = model["kind"]
        if self.kind == "head":
            self.head = load_head(model["head"], device=device)
            self.in_dim = self.head.in_dim
        elif self.kind == "tfa-lt":
            self.branches = load_head(model["branches"], device=device)
            self.combine = model["combine"]
            self.ensembler = (
                load_head(model["ensembler"], device=device) if model.get("ensembler") else None
            )
            self.in_dim = self.branches.in_dim
        else:
            raise FeatcacheError(f"Unknown model kind '{self.kind}' in checkpoint.")

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # [N, D] -> [N, C]
        if x.shape[-1] != self.in_dim:
            raise FeatcacheError(
                f"The trained head expects {self.in_dim}-d features but the cache gives "
                f"{x.shape[-1]}-d ones (a different model, or --feature embed vs cls)."
            )
        if self.kind == "head":
            return predict_logits(self.head, x)[0]
        return combine_branches(self.branches, self.combine, self.ensembler, x)


@torch.no_grad()
def combine_branches(branches, combine: str, ensembler, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """TFA-LT inference: two branches (members 0, 1 of ``branches``) then the ensembler."""
    from featcache.training import head_features

    if combine == "mean":
        return predict_logits(branches, x).mean(0)  # [N, C]
    outputs = predict_logits if combine == "logit" else head_features
    z = outputs(branches, x)  # [2, N, C] logits or [2, N, D] adapted features
    z = torch.cat([z[0], z[1]], -1)  # [N, 2C] or [N, 2D]
    return predict_logits(ensembler, z)[0]


def evaluate(logits_of, data: CachedData, setup: SeedSetup, posthoc_tau: float) -> tuple[dict, np.ndarray, np.ndarray]:  # noqa: ANN001
    """Metrics of one seed on its test rows; logits averaged over the evaluation views.

    Returns ``(metrics, labels [n], scores [n, C])``.
    """
    test = torch.as_tensor(setup.split.test, device=data.device)
    logits = torch.stack([logits_of(v[test]) for v in data.eval_feats]).mean(0)  # [n, C]
    counts = torch.as_tensor(setup.split.train_counts, device=data.device)
    logits = posthoc_adjust(logits, ClassPrior.from_counts(counts).log_prior[0], posthoc_tau)
    scores = logits.float().cpu().numpy()
    labels = data.cache.labels[setup.split.test]
    metrics = compute_metrics(labels, scores, num_classes=data.num_classes,
                              train_counts=setup.split.train_counts, groups=setup.split.groups)
    return metrics, labels, scores


def checkpoint_for(pipeline: str, model: dict, cfg: object, data: CachedData, setup: SeedSetup) -> dict:
    """What ``checkpoints/seed-S.pt`` holds: the model, the config and what it needs to match."""
    return {
        "pipeline": pipeline,
        "model": model,
        "config": asdict(cfg),
        "feature": cfg.feature,
        "view": cfg.view,
        "model_fingerprint": data.cache.model_fingerprint,
        "cache_fingerprint": data.cache.fingerprint,
        "class_ids": list(data.cache.descriptor.class_ids),
        "train_counts": setup.split.train_counts.tolist(),
        "posthoc_tau": cfg.posthoc_tau,
    }


def resolved_config(cfg: object, data: CachedData, setups: list[SeedSetup], pipeline: str) -> dict:
    """config.json: every setting, resolved (protocol, tau, device, prototypes, cache)."""
    d = asdict(cfg)
    d.update(
        pipeline=pipeline,
        protocol=setups[0].split.protocol,
        tau=data.tau,
        device=str(data.device),
        seeds=list(cfg.seeds),
        prototypes=setups[0].prototypes_from or None,
        cache_fingerprint=data.cache.fingerprint,
        model_fingerprint=data.cache.model_fingerprint,
        dataset=data.cache.descriptor.name,
        num_classes=data.num_classes,
        in_dim=int(data.feats.shape[-1]),
        torch_version=torch.__version__,
    )
    return d


def default_out(cfg: object, name: str) -> Path:
    """``runs/<cache stem>-<name>`` when ``--out`` is not given."""
    return Path("runs") / f"{Path(cfg.cache).stem}-{name}"


# --------------------------------------------------------------------------------------
# The pipeline


@dataclass
class RunResult:
    """What a pipeline returns: the summary written to metrics.json and where it went."""

    out_dir: Path
    metrics: dict
    config: dict


def run(cfg: TrainHeadConfig, *, overwrite: bool = False) -> RunResult:
    """Train ``cfg.head`` for every seed (one batched run) and write the run directory.

    An ``out`` that already holds a run is refused before any work, unless ``overwrite``:
    then that run's files are deleted once training has succeeded, just before the new
    run is written (so no stale checkpoint stays beside the new ones).
    """
    out_dir = Path(cfg.out) if cfg.out else default_out(cfg, cfg.head)
    refuse_existing_run(out_dir, overwrite=overwrite)
    data = load_data(cfg.cache, view=cfg.view, feature=cfg.feature, tte=cfg.tte,
                     device=cfg.device, tau=cfg.tau)
    head_cls = HEADS.get(cfg.head)
    need = head_cls.needs_prototypes or cfg.init == "text"
    setups = seed_setups(data, cfg, need_prototypes=need)
    members = [cfg.member(s.seed, tau=data.tau) for s in setups]
    ctx = HeadContext(
        in_dim=int(data.feats.shape[-1]),
        num_classes=data.num_classes,
        prototypes=torch.stack([s.prototypes for s in setups]) if need else None,
        class_means=torch.stack([s.class_means for s in setups]),
    )
    head = build_head(cfg.head, ctx, members, device=data.device)
    if hasattr(head, "fit"):  # a head with its own solver (logreg: L-BFGS, C chosen on val)
        result = head.fit(data.feats, data.labels, [s.pool for s in setups])
    else:
        result = train_members(head, data.feats, data.labels, [s.pool for s in setups],
                               precision=cfg.precision)
    if overwrite:
        clear_run(out_dir)
    config = resolved_config(cfg, data, setups, "train-head")
    writer = RunWriter(out_dir, config, data.cache.class_names, method=cfg.method or cfg.head)
    for g, setup in enumerate(setups):
        member = head.member(g)
        metrics, labels, scores = evaluate(lambda x, m=member: predict_logits(m, x)[0], data,
                                           setup, cfg.posthoc_tau)
        metrics["train_loss"] = result.epoch_loss[g][-1] if result.epoch_loss[g] else math.nan
        if hasattr(result, "chosen_c"):
            metrics["logreg_c"] = result.chosen_c[g]
        model = {"kind": "head", "head": member.checkpoint()}
        writer.add_seed(setup.seed, metrics, labels=labels, scores=scores, rows=setup.split.test,
                        ids=data.cache.ids, split=setup.split.to_frame(data.cache.ids),
                        train_counts=setup.split.train_counts,
                        checkpoint=checkpoint_for("train-head", model, cfg, data, setup))
    summary = writer.finish()
    summary["train_seconds"] = result.seconds
    return RunResult(out_dir, summary, config)


# --------------------------------------------------------------------------------------
# Prediction on another cache


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
