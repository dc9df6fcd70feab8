"""TFA-LT's two training stages for a list of (configuration, seed) pairs: the one home of the
wiring that ``featcache train-head --ensemble`` (:mod:`featcache.pipelines.tfa_lt`, one
configuration) and ``featcache grid`` (:mod:`featcache.pipelines.grid`, many) share.

Stage I: one batched head of adapters (``zeroshot`` branches with ``adapters=False``), one
member per distinct (adapter spec, seed): each pair has a WRS and a RUS branch, and pairs whose
stage-I specs are equal (a grid over stage-II knobs such as focal γ: ``stage1`` leaves out loss
knobs its loss does not read) share them, so they are trained once.

Stage II: the branches are frozen; their outputs (logits, or adapted features for
``ensemble="feature"``) on every training row are computed once, concatenated per pair
([l_w ; l_r] or [f_w ; f_r]) and one ensembler per pair is trained in one batched run.
``ensemble="mean"`` has no stage II (the mean of the pair's two logits).

Every configuration of one call shares ``adapters``, ``ensemble`` and ``precision`` (the grid's
group key); the per-member knobs come from each configuration's ``stage1``/``stage2`` specs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from featcache.heads.base import Head, HeadContext, MemberSpec, build_head
from featcache.heads.cached import CachedData, SeedSetup
from featcache.heads.training import head_features, predict_logits, rows_per_chunk, train_members

log = logging.getLogger(__name__)


class TfaLtStages(Protocol):
    """What a TFA-LT configuration gives this module (``featcache.pipelines.tfa_lt.TfaLtConfig``)."""

    adapters: bool
    ensemble: str  # logit | feature | mean
    precision: str
    tau: float | None

    def stage1(self, seed: int, sampler: str, *, tau: float) -> MemberSpec: ...
    def stage2(self, seed: int, *, tau: float) -> MemberSpec: ...


@dataclass
class TfaLtTrained:
    """Both stages of every pair. ``pairs[p] = (configuration position, seed index, WRS branch,
    RUS branch)`` (branch = member of ``branches``); ensembler member ``p`` is pair p's.
    ``logits(x)`` gives every pair's logits ``[P, n, C]`` for rows ``x`` ``[n, D]``."""

    branches: Head  # U distinct stage-I members
    ensembler: Head | None  # P members (None with ensemble="mean")
    ensemble: str
    pairs: list[tuple[int, int, int, int]]
    stage1_seconds: float
    stage2_seconds: float
    stage1_loss: list[list[float]]  # per branch, per epoch
    stage2_loss: list[list[float]] | None  # per pair, per epoch
    logits: Callable[[torch.Tensor], torch.Tensor]

    @property
    def seconds(self) -> float:
        return self.stage1_seconds + self.stage2_seconds

    def pair(self, p: int) -> tuple[Head, Head | None]:
        """Pair p's two branches (members 0 = WRS, 1 = RUS) and its ensembler member."""
        _, _, w, r = self.pairs[p]
        return (self.branches.subset([w, r]),
                self.ensembler.member(p) if self.ensembler is not None else None)

    def model(self, p: int) -> dict:
        """Pair p's checkpointable model (``kind: tfa-lt``, read by heads/saved.py)."""
        pair, ens = self.pair(p)
        return {"kind": "tfa-lt", "branches": pair.checkpoint(), "combine": self.ensemble,
                "ensembler": ens.checkpoint() if ens is not None else None}

    def final_loss(self, p: int) -> float:
        """Pair p's last stage-II epoch loss (NaN without stage II)."""
        loss = self.stage2_loss[p] if self.stage2_loss is not None else []
        return loss[-1] if loss else math.nan

    def curves(self, p: int) -> dict[str, list[float]]:
        """Pair p's loss curves under their ``metrics.json`` keys (featcache.plots)."""
        _, _, w, r = self.pairs[p]
        out = {"stage1_epoch_loss_wrs": list(self.stage1_loss[w]),
               "stage1_epoch_loss_rus": list(self.stage1_loss[r])}
        if self.stage2_loss is not None:
            out["stage2_epoch_loss"] = list(self.stage2_loss[p])
        return out


def train_tfa_lt(cfgs: Sequence[TfaLtStages], data: CachedData, setups: list[SeedSetup], *,
                 desc: str = "TFA-LT") -> TfaLtTrained:
    """Train TFA-LT for every (configuration, seed) pair, configurations outer, seeds inner:
    stage I once per distinct adapter spec, stage II one ensembler per pair, each stage one
    batched run in ``cfgs[0].precision``."""
    base = cfgs[0]
    D, C = int(data.feats.shape[-1]), data.num_classes
    # Stage I: distinct (adapter spec, seed index); pairs whose specs are equal share branches.
    unique: dict[tuple[MemberSpec, int], int] = {}
    pairs: list[tuple[int, int, int, int]] = []
    for k, c in enumerate(cfgs):
        tau = data.tau_for(c.tau)
        for j, s in enumerate(setups):
            w, r = (unique.setdefault((c.stage1(s.seed, smp, tau=tau), j), len(unique))
                    for smp in ("wrs", "rus"))
            pairs.append((k, j, w, r))
    specs = list(unique)
    ctx = HeadContext(D, C, prototypes=torch.stack([setups[j].prototypes for _, j in specs]))
    branches = build_head("adapter" if base.adapters else "zeroshot", ctx,
                          [m for m, _ in specs], device=data.device)
    stage1 = train_members(branches, data.feats, data.labels, [setups[j].pool for _, j in specs],
                           precision=base.precision, desc=f"{desc} stage I ({len(specs)} adapters)")
    log.info("stage I: %d adapter(s) for %d configuration-seed pair(s) in %.2f s",
             len(specs), len(pairs), stage1.seconds)
    wi = torch.tensor([p[2] for p in pairs], device=data.device)
    ri = torch.tensor([p[3] for p in pairs], device=data.device)
    outputs = head_features if base.ensemble == "feature" else predict_logits

    def stage2_inputs(z: torch.Tensor) -> torch.Tensor:  # [U, n, C | D] -> [P, n, 2C | 2D]
        return torch.cat([z[wi], z[ri]], -1)

    # Stage II: the frozen branches' outputs on every row, once; one ensembler per pair.
    ensembler, stage2_seconds, stage2_loss = None, 0.0, None
    if base.ensemble != "mean":
        with torch.no_grad():  # predict's default row batch: what train-head always used
            inputs = stage2_inputs(outputs(branches, data.feats)).contiguous()
        ens_ctx = HeadContext(int(inputs.shape[-1]), C,
                              prototypes=torch.stack([setups[j].prototypes for _, j, _, _ in pairs]))
        ens_members = [cfgs[k].stage2(setups[j].seed, tau=data.tau_for(cfgs[k].tau))
                       for k, j, _, _ in pairs]
        ensembler = build_head(f"ensemble-{base.ensemble}", ens_ctx, ens_members, device=data.device)
        stage2 = train_members(ensembler, inputs, data.labels, [setups[p[1]].pool for p in pairs],
                               precision=base.precision,
                               desc=f"{desc} stage II ({len(pairs)} ensemblers)")
        del inputs
        stage2_seconds, stage2_loss = stage2.seconds, stage2.epoch_loss
        log.info("stage II: %d ensembler(s) in %.2f s", len(pairs), stage2.seconds)
    # Inference in row chunks, so that [U | P, rows, width] stays bounded for big grids.
    chunk1 = rows_per_chunk(len(specs), max(D, C))
    chunk2 = rows_per_chunk(len(pairs), 2 * max(D, C))

    @torch.no_grad()
    def logits(x: torch.Tensor) -> torch.Tensor:  # [n, D] -> [P, n, C]
        outs = []
        for r in range(0, x.shape[0], chunk2):
            if ensembler is None:  # adapters only: mean of the pair's logits
                z = predict_logits(branches, x[r : r + chunk2], batch=chunk1)
                outs.append((z[wi] + z[ri]) / 2)
            else:
                z = outputs(branches, x[r : r + chunk2], batch=chunk1)
                outs.append(predict_logits(ensembler, stage2_inputs(z)))
        return torch.cat(outs, 1)

    return TfaLtTrained(branches, ensembler, base.ensemble, pairs, stage1.seconds,
                        stage2_seconds, stage1.epoch_loss, stage2_loss, logits)
