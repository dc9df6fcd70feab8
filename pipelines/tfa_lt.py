"""``featcache train-head --ensemble logit|feature``: the TFA-LT method (DESIGN.md §1).

Stage I: two residual adapters (``featcache.heads.adapter``) with cosine logits to the text features,
one trained on a class-balanced weighted-random-sampling stream (WRS), one on a random
under-sampled set (RUS), both with cross-entropy. ``rus="fixed"`` (default) draws the
under-sampled set once and trains every epoch on it, as the paper describes RUS: it
"generates" a re-balanced training set (DESIGN.md §1); ``rus="fresh"`` draws a new subset
each epoch (sampler ``rus``: more distinct rows seen, not the paper's procedure). They are members of ONE batched head and
train in one step, together with the adapters of every other seed: G = 2 × seeds.

Stage II: both adapters frozen; their outputs on every training row are computed once, and a
linear ensembler is trained with focal loss (γ = 2) on the original long-tailed training set:
``ensemble-logit`` on [l_w ; l_r] or ``ensemble-feature`` on [f_w ; f_r].

Both stages are trained by :func:`featcache.heads.tfa_lt_stages.train_tfa_lt` (shared with
``featcache grid``, which passes many configurations); this module holds the configuration
(:meth:`TfaLtConfig.stage1` and :meth:`TfaLtConfig.stage2` give each stage's member specs) and
:func:`run`: load, train both stages, evaluate and write every seed.

Defaults: SGD momentum 0.9, weight decay 5e-4, batch 128, lr 0.1 cosine, 200 epochs
stage I and 100 stage II, seeds 0, 1, 2, fp32 (``precision="bf16"`` runs both stages' weight
products in bf16, with fp32 master weights; stage II's inputs are the adapters' fp32 outputs). Ablations: ``adapters=False`` (ensembler
only: both branches are the frozen features, i.e. zero-shot: Table 2's "ensembler only") and
``ensemble="mean"`` (the mean of the two balanced adapters' logits, no stage II; NOT the
paper's "adapter only" row, which is one adapter trained without balancing, see
:mod:`featcache.pipelines.reproduce`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from featcache import knobs
from featcache.errors import FeatcacheError
from featcache.heads import LOSSES, MemberSpec
from featcache.heads.cached import (
    RunSettings,
    check_run_settings,
    checkpoint_for,
    combine_branches,
    default_out,
    evaluate,
    load_data,
    resolved_config,
    seed_setups,
)
from featcache.heads.tfa_lt_stages import train_tfa_lt
from featcache.knob_fields import knob_field
from featcache.runs import RunResult, RunWriter, clear_run, refuse_existing_run, write_json

log = logging.getLogger(__name__)

ENSEMBLES = ("logit", "feature", "mean")
RUS_MODES = ("fixed", "fresh")
RUS_SAMPLER = {"fixed": "rus-fixed", "fresh": "rus"}
# The loss knobs each loss reads (featcache.heads.losses); a stage-I spec carries only its own loss's
# knobs, so a grid over a stage-II knob (focal γ) leaves stage I identical (trained once).
LOSS_READS = {"focal": ("gamma",), "la": ("la_tau",), "cb": ("cb_beta",)}


@dataclass(frozen=True)
class TfaLtConfig(RunSettings):
    """Every setting of a TFA-LT run; stage II knobs carry the ``ensemble_`` prefix."""

    cache: str
    ensemble: str = knob_field("ensemble")
    adapters: bool = True
    protocol: str | None = knob_field("protocol")
    seeds: tuple[int, ...] = knob_field("seeds")
    epochs: int = knob_field("epochs")  # stage I
    batch_size: int = knob_field("batch_size")
    lr: float = knob_field("lr")
    weight_decay: float = knob_field("weight_decay")
    momentum: float = knob_field("momentum")
    schedule: str = knob_field("schedule")
    optimizer: str = knob_field("optimizer")  # both stages
    lr_decay: float = knob_field("lr_decay")
    decay_every: int = knob_field("decay_every")
    loss: str = knob_field("loss")  # stage I
    ensemble_epochs: int = knob_field("ensemble_epochs")
    ensemble_lr: float = knob_field("ensemble_lr")
    ensemble_loss: str = knob_field("ensemble_loss")
    gamma: float = knob_field("gamma")
    la_tau: float = knob_field("la_tau")
    cb_beta: float = knob_field("cb_beta")
    tau: float | None = knob_field("tau")
    rus: str = knob_field("rus")  # stage I RUS: fixed (the paper's generated set) | fresh (each epoch)

    def __post_init__(self) -> None:
        if self.rus not in RUS_MODES:
            from featcache.errors import unknown

            raise unknown("rus", self.rus, RUS_MODES)
        if self.ensemble not in ENSEMBLES:
            from featcache.errors import unknown

            raise unknown("ensemble", self.ensemble, ENSEMBLES)
        if not self.adapters and self.ensemble == "mean":
            raise FeatcacheError("--no-adapters with --ensemble mean leaves nothing to train; "
                                 "use --head zeroshot for that.")
        LOSSES.get(self.loss), LOSSES.get(self.ensemble_loss)
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        check_run_settings(self)
        self.stage1(self.seeds[0], "wrs", tau=self.tau or knobs.TAU_FALLBACK)
        self.stage2(self.seeds[0], tau=self.tau or knobs.TAU_FALLBACK)

    def _shared(self, tau: float) -> dict:
        return dict(batch_size=self.batch_size, weight_decay=self.weight_decay,
                    momentum=self.momentum, schedule=self.schedule, optimizer=self.optimizer,
                    lr_decay=self.lr_decay, decay_every=self.decay_every, gamma=self.gamma,
                    la_tau=self.la_tau, cb_beta=self.cb_beta, tau=tau)

    def stage1(self, seed: int, sampler: str, *, tau: float) -> MemberSpec:
        """The adapter trained on the ``sampler`` (wrs|rus) stream for ``seed``.

        ``rus`` becomes the sampler of ``self.rus`` (``rus-fixed`` or ``rus``); the random
        stream keeps the name ``adapter-rus`` either way. Loss knobs that stage I's loss does
        not read are left at their defaults (they are stage II's: focal γ with CE in stage I).
        """
        shared = self._shared(tau)
        for knob in ("gamma", "la_tau", "cb_beta"):
            if knob not in LOSS_READS.get(self.loss, ()):
                del shared[knob]  # MemberSpec's default: the spec does not depend on it
        name = RUS_SAMPLER[self.rus] if sampler == "rus" else sampler
        return MemberSpec(seed=seed, stream=f"tfa-lt/adapter-{sampler}", sampler=name,
                          loss=self.loss, lr=self.lr, epochs=self.epochs, **shared)

    def stage2(self, seed: int, *, tau: float) -> MemberSpec:
        """The ensembler of ``seed`` (the original long-tailed set: instance sampling)."""
        return MemberSpec(seed=seed, stream=f"tfa-lt/ensemble-{self.ensemble}",
                          sampler="instance", loss=self.ensemble_loss, lr=self.ensemble_lr,
                          epochs=self.ensemble_epochs, **self._shared(tau))


def name_parts(cfg: TfaLtConfig) -> list[str]:
    """What tells this run apart in its default folder name (``runs/<cache>-tfa-lt-logit``,
    ``...-tfa-lt-feature-ensembler-only``, ``...-tfa-lt-logit-la-rus-fresh``)."""
    parts = ["tfa-lt", cfg.ensemble]
    if not cfg.adapters:
        parts.append("ensembler-only")
    if cfg.loss != "ce":
        parts.append(cfg.loss)
    if cfg.ensemble_loss != "focal" and cfg.ensemble != "mean":
        parts.append(f"ens-{cfg.ensemble_loss}")
    if cfg.rus != "fixed":
        parts.append(f"rus-{cfg.rus}")
    return parts


def run(cfg: TfaLtConfig, *, overwrite: bool = False) -> RunResult:
    """Run TFA-LT for every seed (stage I and stage II each one batched run, through
    :func:`~featcache.heads.tfa_lt_stages.train_tfa_lt`); write the run.

    An ``out`` (given or default) that already holds a run is refused before any work,
    unless ``overwrite``: then that run's files are deleted once training has succeeded."""
    out_dir = Path(cfg.out) if cfg.out else default_out(cfg, *name_parts(cfg))
    refuse_existing_run(out_dir, overwrite=overwrite)
    data = load_data(cfg.cache, view=cfg.view, feature=cfg.feature, tte=cfg.tte,
                     device=cfg.device, tau=cfg.tau)
    setups = seed_setups(data, cfg, need_prototypes=True)
    # Stage I (two adapters per seed, WRS and RUS) and stage II (one ensembler per seed), each
    # one batched run over every seed: featcache.heads.tfa_lt_stages, shared with the grid.
    trained = train_tfa_lt([cfg], data, setups, desc=cfg.method or "TFA-LT")

    name = cfg.method or _method_name(cfg)
    if overwrite:
        clear_run(out_dir)
    config = resolved_config(cfg, data, setups, "tfa-lt")
    writer = RunWriter(out_dir, config, data.cache.class_names, method=name)
    for i, setup in enumerate(setups):  # pair i: this configuration's seed i
        pair, ens = trained.pair(i)

        def logits_of(x: torch.Tensor, pair=pair, ens=ens) -> torch.Tensor:  # noqa: ANN001
            return combine_branches(pair, cfg.ensemble, ens, x)

        metrics, labels, scores = evaluate(logits_of, data, setup, cfg.posthoc_tau, cfg.calibrate)
        curves = trained.curves(i)  # the loss curves (featcache.plots)
        metrics["stage1_loss_wrs"] = _last(curves["stage1_epoch_loss_wrs"])
        metrics["stage1_loss_rus"] = _last(curves["stage1_epoch_loss_rus"])
        metrics.update(curves)
        ckpt = checkpoint_for("tfa-lt", trained.model(i), cfg, data, setup)
        if "temperature" in metrics:  # predict's calibrated probabilities (heads/saved.py)
            ckpt["temperature"] = metrics["temperature"]
        writer.add_seed(setup.seed, metrics, labels=labels, scores=scores, rows=setup.split.test,
                        ids=data.cache.ids, split=setup.split.to_frame(data.cache.ids),
                        train_counts=setup.split.train_counts, groups=setup.split.groups,
                        checkpoint=ckpt)
    summary = writer.finish()
    summary["train_seconds"] = trained.seconds
    if cfg.calibrate != "none":  # config.json: the fitted temperature of every seed
        config = writer.config  # with its provenance
        config["temperature"] = {str(m["seed"]): m["temperature"] for m in writer.per_seed}
        write_json(out_dir / "config.json", config)
    return RunResult(out_dir, summary, config)


def _last(values: list[float]) -> float:
    return values[-1] if values else math.nan


def _method_name(cfg: TfaLtConfig) -> str:
    if cfg.ensemble == "mean":
        return "TFA-LT adapter only"
    if not cfg.adapters:
        return f"TFA-LT ensembler only ({cfg.ensemble})"
    return f"TFA-LT ({cfg.ensemble})"
