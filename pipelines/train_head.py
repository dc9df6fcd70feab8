"""``featcache train-head --head H --loss L``: one head on cached features, every seed at once.

Read top to bottom: load the cache's features onto the device once; draw each seed's split
(:mod:`featcache.splits`); build one batched head whose members are the seeds (each with its
own random stream, so the result per seed equals training that seed alone); train it with
:func:`featcache.heads.training.train_members`; evaluate each member on its seed's test rows
(optionally averaging logits over the five cached TTE crops, optionally with post-hoc logit
adjustment); write the run directory (:class:`featcache.runs.RunWriter`).

What every run on a cache shares (loading, splits, prototypes, evaluation, the run's config)
is in :mod:`featcache.heads.cached`; this module is the config and its ``run``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from featcache import knobs
from featcache.errors import FeatcacheError
from featcache.heads import HEADS, LOSSES, SAMPLERS, HeadContext, MemberSpec, build_head
from featcache.heads.base import INITS
from featcache.heads.cached import (
    RunSettings,
    check_run_settings,
    checkpoint_for,
    default_out,
    evaluate,
    load_data,
    resolved_config,
    seed_setups,
)
from featcache.heads.training import predict_logits, train_members
from featcache.knob_fields import knob_field
from featcache.runs import RunResult, RunWriter, clear_run, refuse_existing_run, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainHeadConfig(RunSettings):
    """Every setting of a single-head run. Optimiser defaults are TFA-LT's (DESIGN.md §1)."""

    cache: str
    head: str = knob_field("head")
    loss: str = knob_field("loss")
    sampler: str = knob_field("sampler")
    protocol: str | None = knob_field("protocol")
    seeds: tuple[int, ...] = knob_field("seeds")
    epochs: int = knob_field("epochs")
    batch_size: int = knob_field("batch_size")
    lr: float = knob_field("lr")
    weight_decay: float = knob_field("weight_decay")
    momentum: float = knob_field("momentum")
    schedule: str = knob_field("schedule")
    optimizer: str = knob_field("optimizer")
    lr_decay: float = knob_field("lr_decay")
    decay_every: int = knob_field("decay_every")
    tau: float | None = knob_field("tau")  # cosine-logit temperature; None = 1/logit_scale of the cache
    sigma: float = knob_field("sigma")
    gamma: float = knob_field("gamma")
    la_tau: float = knob_field("la_tau")
    cb_beta: float = knob_field("cb_beta")
    init: str = knob_field("init")
    head_options: tuple[tuple[str, object], ...] = ()  # the head's own knobs (--head-option)

    def __post_init__(self) -> None:
        HEADS.get(self.head), LOSSES.get(self.loss), SAMPLERS.get(self.sampler)
        opts = self.head_options
        object.__setattr__(self, "head_options", HEADS.get(self.head).parse_options(
            opts.items() if isinstance(opts, dict) else tuple(opts)))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        check_run_settings(self)
        if self.init not in INITS:
            raise FeatcacheError(f"--init must be one of {', '.join(INITS)}, got '{self.init}'.")
        # every remaining knob is validated by MemberSpec
        self.member(self.seeds[0], tau=self.tau or knobs.TAU_FALLBACK)

    def member(self, seed: int, *, tau: float) -> MemberSpec:
        """The member spec of ``seed`` (``tau`` resolved)."""
        return MemberSpec(
            seed=seed, stream=f"{self.head}/{self.sampler}", sampler=self.sampler,
            loss=self.loss, lr=self.lr, weight_decay=self.weight_decay, momentum=self.momentum,
            epochs=self.epochs, batch_size=self.batch_size, schedule=self.schedule,
            optimizer=self.optimizer, lr_decay=self.lr_decay, decay_every=self.decay_every,
            gamma=self.gamma, la_tau=self.la_tau, cb_beta=self.cb_beta, tau=tau,
            sigma=self.sigma, init=self.init, head_options=self.head_options,
        )


def name_parts(cfg: TrainHeadConfig) -> list[str]:
    """What tells this run apart in its default folder name: the head, then the loss,
    sampler, initialisation and head knobs that are not the defaults
    (``runs/<cache>-linear-la-wrs-tte``)."""
    parts = [cfg.head]
    if cfg.loss != "ce":
        parts.append(cfg.loss)
    if cfg.sampler != "instance":
        parts.append(cfg.sampler)
    if cfg.init != "random":
        parts.append(f"init-{cfg.init}")
    if cfg.optimizer != knobs.OPTIMIZER:
        parts.append(cfg.optimizer)
    parts += [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in cfg.head_options]
    return parts


def refuse_without_text(head_cls: type, prototypes_from: str) -> None:
    """Methods whose paper needs text features refuse class-mean prototypes."""
    if head_cls.needs_text and not prototypes_from.startswith("prompts"):
        raise FeatcacheError(
            f"Head '{head_cls.name}' adapts CLIP's text classifier, but this run's prototypes are "
            f"{prototypes_from or 'none'} (the cache holds no text features, or --text-source "
            "class-mean was given). Use a cache extracted with text features and --text-source "
            "auto|prompts, or a head that needs no text (linear, cosine, mlp, knn, logreg).")


# --------------------------------------------------------------------------------------
# The pipeline


def run(cfg: TrainHeadConfig, *, overwrite: bool = False) -> RunResult:
    """Train ``cfg.head`` for every seed (one batched run) and write the run directory.

    An ``out`` that already holds a run is refused before any work, unless ``overwrite``:
    then that run's files are deleted once training has succeeded, just before the new
    run is written (so no stale checkpoint stays beside the new ones).
    """
    out_dir = Path(cfg.out) if cfg.out else default_out(cfg, *name_parts(cfg))
    refuse_existing_run(out_dir, overwrite=overwrite)
    data = load_data(cfg.cache, view=cfg.view, feature=cfg.feature, tte=cfg.tte,
                     device=cfg.device, tau=cfg.tau)
    head_cls = HEADS.get(cfg.head)
    need = head_cls.needs_prototypes or cfg.init == "text"
    setups = seed_setups(data, cfg, need_prototypes=need)
    refuse_without_text(head_cls, setups[0].prototypes_from)
    members = [cfg.member(s.seed, tau=data.tau) for s in setups]
    ctx = HeadContext(
        in_dim=int(data.feats.shape[-1]),
        num_classes=data.num_classes,
        prototypes=torch.stack([s.prototypes for s in setups]) if need else None,
        class_means=torch.stack([s.class_means for s in setups]),
    )
    head = build_head(cfg.head, ctx, members, device=data.device)
    if hasattr(head, "fit"):  # a head with its own solver (logreg: L-BFGS, C chosen on val)
        # validation-free: no C search, the documented fixed C (heads/logreg.py)
        result = head.fit(data.feats, data.labels, [s.pool for s in setups],
                          search=not cfg.validation_free)
    else:
        result = train_members(head, data.feats, data.labels, [s.pool for s in setups],
                               precision=cfg.precision, desc=cfg.method or cfg.head)
    if overwrite:
        clear_run(out_dir)
    config = resolved_config(cfg, data, setups, "train-head")
    writer = RunWriter(out_dir, config, data.cache.class_names, method=cfg.method or cfg.head)
    for g, setup in enumerate(setups):
        member = head.member(g)
        metrics, labels, scores = evaluate(lambda x, m=member: predict_logits(m, x)[0], data,
                                           setup, cfg.posthoc_tau, cfg.calibrate)
        metrics["train_loss"] = result.epoch_loss[g][-1] if result.epoch_loss[g] else math.nan
        metrics["epoch_loss"] = list(result.epoch_loss[g])  # the loss curve (featcache.plots)
        if hasattr(result, "chosen_c"):
            metrics["logreg_c"] = result.chosen_c[g]
        model = {"kind": "head", "head": member.checkpoint()}
        ckpt = checkpoint_for("train-head", model, cfg, data, setup)
        if "temperature" in metrics:  # predict's calibrated probabilities (heads/saved.py)
            ckpt["temperature"] = metrics["temperature"]
        writer.add_seed(setup.seed, metrics, labels=labels, scores=scores, rows=setup.split.test,
                        ids=data.cache.ids, split=setup.split.to_frame(data.cache.ids),
                        train_counts=setup.split.train_counts, groups=setup.split.groups,
                        checkpoint=ckpt)
    summary = writer.finish()
    summary["train_seconds"] = result.seconds
    if cfg.calibrate != "none":  # config.json: the fitted temperature of every seed
        config = writer.config  # with its provenance
        config["temperature"] = {str(m["seed"]): m["temperature"] for m in writer.per_seed}
        write_json(out_dir / "config.json", config)
    return RunResult(out_dir, summary, config)


# --------------------------------------------------------------------------------------
# Prediction on another cache


