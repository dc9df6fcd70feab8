"""The batched trainer: G members of one head shape trained together on cached features.

Every step reads one batch of rows per member, ``idx`` ``[G, B]`` from that member's own
sampler stream, gathers ``x = inputs[idx]`` ``[G, B, D]`` and runs the batched head once
(``torch.bmm`` over the member dimension). The loss is the sum over members of each member's
masked mean loss, so one backward gives every member exactly its own gradient. The
optimiser (SGD with momentum, or AdamW) and the schedule (cosine, constant, or per-iteration
step decay) are applied to the stacked parameters with per-member ``[G]`` learning rates,
weight decays and momenta. This one trainer serves every head, TFA-LT's stages, the grid and
the MedMNIST benchmark's linear probes (AdamW with FMMIC's step decay). With ``share_batches=True`` (a
grid), adjacent members that draw the same batches read one gather ``[B, D]`` and a head with
``forward_shared`` (linear, cosine) computes them all in one ``[B, D] @ [D, G·C]`` product.

Why this shape:

- TFA-LT's two stage-I adapters (WRS and RUS), the seeds of a run and the configurations of
  a grid are all members: one pass over the features feeds them all (DESIGN.md §6).
- Joint training equals training alone: each member has its own ``torch.Generator`` (seeded
  from its :class:`~featcache.heads.base.MemberSpec`), members never mix in any reduction, members whose
  epoch is shorter (RUS) or whose run ended sit out steps with their parameters and momentum
  left untouched, and the optimiser uses the same elementwise operations in every case.
- Data stays on the device as tensors; the step plan (which member is active, its learning
  rate, its batch's valid rows) is computed on the host in advance from sizes alone, so the
  loop never waits for the device (no ``.item()``), which keeps a GPU fed.

Mixed precision (``precision="bf16"``, or ``"fp16"`` on a GPU): the head's large weight
products (the adapter's ``[B, D] × [D, D]`` and its weight gradient, the feature ensembler, a
grid's shared classifier product; not a 7-class probe, see ``featcache.heads.base.HALF_MIN_WEIGHT``) run
in that dtype through :meth:`~featcache.heads.base.Head.matmul_precision`; the parameters stay fp32
master weights, their gradients and the optimiser state are fp32, and logits, softmax and
losses are fp32. ``"fp32"`` (the default) runs the exact fp32 arithmetic, unchanged.

SGD follows ``torch.optim.SGD`` (dampening 0, no Nesterov): d = g + wd·p; buf = m·buf + d
(buf = d at the first step); p = p − lr·buf. AdamW follows ``torch.optim.AdamW`` (its
defaults β = (0.9, 0.999), ε = 1e-8, no amsgrad): p ← p·(1 − lr·wd); m ← β1·m + (1 − β1)·g;
v ← β2·v + (1 − β2)·g²; p ← p − lr/(1 − β1^t) · m / (√v / √(1 − β2^t) + ε), t the member's
step count (members only ever sit out after their run ended, so t is the global step). The
rates come from :func:`featcache.schedules.step_rates`: cosine is per epoch, as
``CosineAnnealingLR(T_max=epochs)`` stepped once per epoch (lr_e = lr·(1 + cos(π e / E)) / 2);
``step`` is ``StepLR`` stepped once per iteration.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from featcache.device import resolve_precision
from featcache.errors import FeatcacheError
from featcache.heads.base import Head, MemberSpec
from featcache.heads.losses import LOSS_KNOBS, LOSSES, MULTI_LABEL_LOSSES, ClassPrior
from featcache.heads.samplers import SAMPLERS, Sampler
from featcache.progress import bar as progress_bar
from featcache.schedules import step_rates

log = logging.getLogger(__name__)

# torch.optim.AdamW's defaults (FMMIC passes none: Common_Trainer.py l. 94-95)
ADAMW_BETAS = (0.9, 0.999)
ADAMW_EPS = 1e-8


@dataclass
class TrainResult:
    """What a batched run returns besides the trained head (updated in place)."""

    epoch_loss: list[list[float]]  # per member, mean training loss of each epoch
    steps: list[int]  # optimiser steps per member
    seconds: float


def steps_per_epoch(spec: MemberSpec, epoch_length: int) -> int:
    """Optimiser steps of one epoch of ``epoch_length`` rows: ⌈L / B⌉, or ⌊L / B⌋ with
    ``drop_last`` (an error when that is none: the batch is larger than the epoch)."""
    if spec.drop_last:
        if spec.batch_size > epoch_length:
            raise FeatcacheError(
                f"drop_last with batch_size={spec.batch_size} leaves no batch of an epoch of "
                f"{epoch_length} rows; use a batch of at most {epoch_length}.")
        return epoch_length // spec.batch_size
    return -(-epoch_length // spec.batch_size)


def run_steps(spec: MemberSpec, per_epoch: int) -> int:
    """Optimiser steps of the member's whole run: ``steps``, else epochs × steps per epoch."""
    return spec.steps if spec.steps > 0 else spec.epochs * per_epoch


def run_epochs(spec: MemberSpec, per_epoch: int) -> int:
    """Epochs the run starts (the last may be cut short by ``steps``)."""
    return -(-spec.steps // per_epoch) if spec.steps > 0 else spec.epochs


def member_rates(spec: MemberSpec, per_epoch: int) -> np.ndarray:
    """``[steps]`` learning rate of each of the member's optimiser steps (featcache.schedules)."""
    return np.asarray(step_rates(spec.schedule, spec.lr, run_steps(spec, per_epoch), per_epoch,
                                 run_epochs(spec, per_epoch), spec.lr_decay, spec.decay_every),
                      dtype=np.float32)


class _Stream:
    """One member's stream of batches: ``take(n)`` returns its next n steps, padded to Bmax."""

    def __init__(
        self, sampler: Sampler, pool: torch.Tensor, spec: MemberSpec, width: int, total: int
    ) -> None:
        self.sampler, self.pool, self.spec, self.width = sampler, pool, spec, width
        self.gen = spec.generator("sample", pool.device)
        self.length = sampler.epoch_length
        self.per_epoch = steps_per_epoch(spec, self.length)
        self.remaining = total  # real steps still to produce
        self.blocks: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.pending = 0
        # row weights of one epoch: 1/batch_rows for real rows, 0 for padding (host-known)
        B, L, k = spec.batch_size, self.length, self.per_epoch
        w = np.zeros((k, width), dtype=np.float32)
        w[:, :B] = 1.0 / B
        if not spec.drop_last:
            last = L - (k - 1) * B
            w[-1, :] = 0.0
            w[-1, :last] = 1.0 / last
        self.epoch_weights = torch.from_numpy(w).to(pool.device)  # [k, Bmax]

    def _epoch(self) -> None:
        B, k = self.spec.batch_size, self.per_epoch
        rows = self.pool[self.sampler.draw(self.gen)]  # [L] global row indices
        if self.spec.drop_last:
            rows = rows[: k * B].view(k, B)  # the tail of the epoch is dropped
        else:
            rows = torch.nn.functional.pad(rows, (0, k * B - self.length)).view(k, B)
        if self.width > B:
            rows = torch.nn.functional.pad(rows, (0, self.width - B))
        self.blocks.append((rows, self.epoch_weights))
        self.pending += k

    def take(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Next ``n`` steps: row indices ``[n, Bmax]`` and row weights ``[n, Bmax]``."""
        real = min(n, self.remaining)
        while self.pending < real:
            self._epoch()
        idx, wts, need = [], [], real
        while need > 0:
            rows, w = self.blocks[0]
            use = min(need, rows.shape[0])
            idx.append(rows[:use])
            wts.append(w[:use])
            if use == rows.shape[0]:
                self.blocks.pop(0)
            else:
                self.blocks[0] = (rows[use:], w[use:])
            need -= use
        self.pending -= real
        self.remaining -= real
        if real < n:  # the member's run is over: padding steps with zero weight
            dev = self.pool.device
            idx.append(torch.zeros(n - real, self.width, dtype=torch.long, device=dev))
            wts.append(torch.zeros(n - real, self.width, device=dev))
        return torch.cat(idx), torch.cat(wts)


def batch_rows(spec: MemberSpec, labels: torch.Tensor, pool: torch.Tensor, num_classes: int,
               *, chunk_steps: int = 512) -> Iterator[torch.Tensor]:
    """The rows of each of ``spec``'s optimiser steps, exactly as :func:`train_members` draws
    them for that member (its sampler, seed stream, batch size, ``drop_last``, run length):
    for a loop that cannot be batched, such as the MedMNIST benchmark's end-to-end
    fine-tuning, so that it sees the batches its linear probe of the same seed sees."""
    sampler = SAMPLERS.get(spec.sampler)(labels[pool], num_classes)
    total = run_steps(spec, steps_per_epoch(spec, sampler.epoch_length))
    stream = _Stream(sampler, pool, spec, spec.batch_size, total)
    for c0 in range(0, total, chunk_steps):
        idx, w = stream.take(min(chunk_steps, total - c0))
        for rows, weights in zip(idx, w, strict=True):
            yield rows[weights > 0]


# glibc's mallopt parameters and their defaults (malloc.h: M_TRIM_THRESHOLD -1, M_MMAP_THRESHOLD -3)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_GLIBC_DEFAULT_THRESHOLD = 128 * 1024


def _mallopt(trim: int, mmap: int) -> bool:
    """Set glibc's trim and mmap thresholds; False where there is no glibc."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, mmap) == 1
        return libc.mallopt(_M_TRIM_THRESHOLD, trim) == 1 and ok
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def cpu_training_mode() -> Iterator[bool]:
    """Process-wide CPU settings for the training loop, restored on leaving (even on error).

    - glibc keeps freed buffers of a few MB inside the process (``mallopt``): each step
      allocates and frees activations of ``[G, B, D]`` (0.5 MB for TFA-LT) and more; glibc
      hands buffers over 128 KB back to the OS at once, so every step would pay fresh page
      faults, which on the CPU cost as much as the step's matmuls. On leaving, both
      thresholds go back to glibc's documented default (128 KB).
    - denormals are flushed to zero: late-epoch gradients underflow, and denormal arithmetic
      is ~100× slower on x86. On leaving, torch's default (off) is restored.

    Yields whether the allocator setting applied (glibc only; elsewhere a no-op).
    """
    tuned = _mallopt(256 << 20, 32 << 20)  # glibc caps the mmap threshold at 32 MB
    if tuned:
        log.debug("glibc mmap/trim thresholds raised for the CPU training loop")
    torch.set_flush_denormal(True)
    try:
        yield tuned
    finally:
        torch.set_flush_denormal(False)
        if tuned:
            _mallopt(_GLIBC_DEFAULT_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)


def class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[C]`` rows per class (positives per class for multi-label ``[n, C]`` labels)."""
    if labels.dim() == 2:
        return labels.float().sum(0)
    return torch.bincount(labels, minlength=num_classes).float()


def train_members(
    head: Head,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    pools: list[torch.Tensor],
    *,
    share_batches: bool = False,
    chunk_steps: int = 512,
    precision: str = "fp32",
    cuda_graphs: bool = False,
    progress: bool | None = None,
    desc: str = "train",
    checkpoint_at: Collection[int] = (),
    on_checkpoint: Callable[[int, Head], None] | None = None,
) -> TrainResult:
    """Train every member of ``head`` in place, jointly; return per-epoch losses.

    ``inputs`` is ``[N, D]`` (shared by all members) or ``[G, N, D]`` (one matrix per member),
    ``labels`` ``[N]`` (or ``[N, C]`` multi-label), ``pools[g]`` the rows member g trains on
    (its training split). All on the head's device. Members' knobs come from ``head.members``.

    ``share_batches=True`` (a grid's linear-eval style): adjacent members that draw the same
    batches (:func:`stream_key`: same seed, random stream, sampler, batch size and pool, e.g.
    configurations that differ only in lr or weight decay) read ONE gather ``[B, D]`` per
    step, and a head that provides :meth:`~featcache.heads.base.Head.forward_shared` computes all of
    them in one matrix product. Every member still gets exactly its own batches, so the result
    equals training it alone up to float rounding of the batched product. Needs ``[N, D]``
    inputs; otherwise (or for heads without ``forward_shared``) it has no effect.

    ``precision``: ``fp32`` (default), ``bf16``, or ``fp16`` (GPU only): the dtype of the
    head's weight products while training (mixed precision, fp32 master weights; see the
    module docstring). Evaluation afterwards runs in fp32.

    ``cuda_graphs=True``: on a CUDA device each step (gather, forward, loss, backward, SGD,
    loss record) is captured once as a CUDA graph, after a few eager warm-up steps, one
    graph for steps where every member is active and one for steps where some sit out, and
    then replayed with the step's batch, weights, learning rates and activity copied into
    static buffers: one launch per step instead of dozens (TFA-LT's steps are launch-bound,
    DESIGN.md §6). Where the device is not CUDA, or a capture fails, the steps run eagerly
    through the same static buffers, with a logged note; the results equal the default
    path's exactly (tests/test_gpu_suite.py checks it on the CPU).

    ``progress`` (``None``: as :func:`featcache.progress.quiet` says, shown by default): a
    bar named ``desc`` over the epochs of the longest member (every member trains in the
    same vectorised steps), with the mean loss of the last epoch over the members still
    training and an ETA; reading the loss costs one device sync per epoch, only while shown.

    ``on_checkpoint(t, head)`` is called after optimiser step ``t`` (1-based) for every ``t``
    in ``checkpoint_at``, with the live head (copy what you keep): the MedMNIST benchmark keeps
    each member's best-validation weights this way. A member whose run ended before ``t``
    holds its final weights.

    Every member of one call uses one ``optimizer`` (the state differs: momentum for SGD, two
    moments for AdamW); a grid trains each optimiser as its own head.
    """
    t0 = time.perf_counter()
    members = head.members
    dtype = resolve_precision(precision, inputs.device)
    G, C = len(members), head.num_classes
    if len(pools) != G:
        raise ValueError(f"{G} members but {len(pools)} row pools")
    shared = inputs.dim() == 2
    if not shared and inputs.shape[0] != G:
        raise ValueError(f"per-member inputs have {inputs.shape[0]} members, head has {G}")
    head.check_input(inputs[None] if shared else inputs)
    dev = inputs.device
    multi = labels.dim() == 2
    for m in members:
        LOSSES.get(m.loss), SAMPLERS.get(m.sampler)  # unknown names fail here, with a hint
        if multi != (m.loss in MULTI_LABEL_LOSSES):
            raise FeatcacheError(
                f"--loss {m.loss} does not fit this cache's "
                f"{'multi-label' if multi else 'single-label'} labels; use "
                f"{'bce' if multi else 'ce, focal, la, bs or cb'}."
            )
    optimizers = sorted({m.optimizer for m in members})
    if len(optimizers) > 1:
        raise FeatcacheError(
            f"The members of one batched run share one optimizer; got {', '.join(optimizers)} "
            "(train each optimizer as its own head, as featcache grid does).")
    adamw = optimizers == ["adamw"]
    head.attach_data(inputs, labels, pools)  # heads that keep training rows (k-NN, Tip-Adapter)
    params = [p for p in head.parameters() if p.requires_grad]
    if not head.trainable or not params:
        return TrainResult([[] for _ in members], [0] * G, 0.0)

    samplers = [SAMPLERS.get(m.sampler)(labels[p], C) for m, p in zip(members, pools, strict=True)]
    width = max(m.batch_size for m in members)
    per_epoch = [steps_per_epoch(m, s.epoch_length) for s, m in zip(samplers, members, strict=True)]
    totals = [run_steps(m, k) for k, m in zip(per_epoch, members, strict=True)]
    S = max(totals)
    # runs of members that read one batch stream: [(g0, g1)], one member each unless shared
    forward_shared = share_batches and shared and type(head).forward_shared is not Head.forward_shared
    runs = _runs(members, pools) if forward_shared else [(g, g + 1) for g in range(G)]
    K = len(runs)
    streams = [_Stream(samplers[g0], pools[g0], members[g0], width, max(totals[g0:g1]))
               for g0, g1 in runs]
    run_of = None if K == G else torch.tensor(
        [k for k, (g0, g1) in enumerate(runs) for _ in range(g0, g1)], device=dev)  # [G]
    # The step plan, on the host: learning rate and activity of every member at every step.
    lr_plan = np.zeros((S, G), dtype=np.float32)
    for g, (m, k) in enumerate(zip(members, per_epoch, strict=True)):
        lr_plan[: totals[g], g] = member_rates(m, k)  # featcache.schedules.step_rates
    active_plan = np.arange(S)[:, None] < np.array(totals)[None, :]  # [S, G]
    all_active = active_plan.all(1)

    def member_view(values: list[float], like: torch.Tensor) -> torch.Tensor:  # [G] -> [G,1,..]
        return torch.tensor(values, device=dev).view(G, *([1] * (like.dim() - 1)))

    wd = [member_view([m.weight_decay for m in members], p) for p in params]
    mom = [member_view([m.momentum for m in members], p) for p in params]
    bufs = [torch.zeros_like(p) for p in params]  # SGD momentum; AdamW's first moment
    second = [torch.zeros_like(p) for p in params] if adamw else []  # AdamW's second moment
    # AdamW's bias corrections of step t (row t-1): 1/(1 − β1^t) and √(1 − β2^t), on the device
    # so that a CUDA graph reads them by the step's index
    beta1, beta2 = ADAMW_BETAS
    corrections = torch.tensor([[1.0 / (1 - beta1**t), math.sqrt(1 - beta2**t)] for t in range(1, S + 1)],
                               device=dev) if adamw else None
    scratches = [torch.empty_like(p) for p in params]  # reused by steps where members sit out
    knobs = {k: torch.tensor([getattr(m, k) for m in members], device=dev) for k in LOSS_KNOBS}
    counts = torch.stack([class_counts(labels[p], C) for p in pools])  # [G, C]
    prior = ClassPrior.from_counts(counts)
    by_loss: dict[str, list[int]] = {}
    for g, m in enumerate(members):
        by_loss.setdefault(m.loss, []).append(g)
    loss_groups = [
        (LOSSES.get(name), None if len(gs) == G else torch.tensor(gs, device=dev), gs)
        for name, gs in by_loss.items()
    ]
    member_idx = torch.arange(G, device=dev)[:, None]  # [G, 1] for per-member inputs
    hist_dev = torch.zeros(S, G, device=dev)  # [S, G] loss of every step, read once at the end
    # shared inputs: every step's gather lands in one buffer (index_select with out=)
    x_buf = inputs.new_empty(K * width, inputs.shape[-1]) if shared else None

    def step(idx: torch.Tensor, w: torch.Tensor, lr: torch.Tensor, act: torch.Tensor,
             all_act: bool, pos: int | torch.Tensor) -> None:
        """One optimiser step of every member: idx [K, Bmax], w [G, Bmax], lr [G], act [G]."""
        if shared:
            x = torch.index_select(inputs, 0, idx.view(-1), out=x_buf).view(K, width, -1)
        else:
            x = inputs[member_idx, idx]  # [G, Bmax, D]
        y = labels[idx] if run_of is None else labels[idx][run_of]  # [G, Bmax] (or [.., C])
        if forward_shared:
            logits = torch.cat([head.forward_shared(x[k], slice(g0, g1))
                                for k, (g0, g1) in enumerate(runs)]) if K > 1 else (
                head.forward_shared(x[0]))
        else:
            logits = head(x)  # [G, Bmax, C]
        per_row = _member_losses(logits.float(), y, knobs, prior, loss_groups, G)  # [G, Bmax]
        loss = (per_row * w).sum(1)  # [G]: each member's mean over its real rows
        grads = torch.autograd.grad(loss.sum(), params)
        with torch.no_grad():
            if adamw:
                bc = corrections[pos].view(2)
                _adamw_step(params, grads, bufs, second, wd, lr, bc[0], bc[1], None if all_act else act)
            elif all_act:
                _sgd_step(params, grads, bufs, wd, mom, lr, None)
            else:
                _sgd_step(params, grads, bufs, wd, mom, lr, act, scratches)
            if isinstance(pos, int):
                hist_dev[pos] = loss.detach()
            else:  # a device-side step index: the same write, replayable in a CUDA graph
                hist_dev.index_copy_(0, pos, loss.detach()[None])

    graphs = _StepGraphs(step, dev, K, G, width) if cuda_graphs else None
    ref = int(np.argmax(totals))  # the longest member: its epochs are the bar's
    bar = progress_bar(run_epochs(members[ref], per_epoch[ref]), desc, progress=progress)
    checkpoint_at = set(checkpoint_at) if on_checkpoint is not None else set()
    ref_steps = per_epoch[ref]

    def epoch_done(t: int) -> None:
        """After step ``t``: advance the bar when an epoch of the longest member ended."""
        if bar.disable or (t + 1) % ref_steps:
            return
        a, b = t + 1 - ref_steps, t + 1
        act = torch.from_numpy(active_plan[a:b]).to(dev)
        loss = float((hist_dev[a:b] * act).sum() / act.sum().clamp_min(1))
        bar.set_postfix_str(f"loss {loss:.4g}", refresh=False)
        bar.update(1)

    head.train()
    cpu_mode = cpu_training_mode() if dev.type == "cpu" else contextlib.nullcontext()
    with cpu_mode, head.matmul_precision(dtype):  # fp32: the head is left exactly as it is
        for c0 in range(0, S, chunk_steps):
            n = min(chunk_steps, S - c0)
            taken = [st.take(n) for st in streams]
            idx_c = torch.stack([t[0] for t in taken], 1)  # [n, K, Bmax]
            w_c = torch.stack([t[1] for t in taken], 1)  # [n, K, Bmax]
            if run_of is not None:
                w_c = w_c[:, run_of]  # [n, G, Bmax]
            lr_c = torch.from_numpy(lr_plan[c0 : c0 + n]).to(dev)  # [n, G]
            act_c = torch.from_numpy(active_plan[c0 : c0 + n]).to(dev)  # [n, G]
            for j in range(n):
                if graphs is None:
                    step(idx_c[j], w_c[j], lr_c[j], act_c[j], bool(all_active[c0 + j]), c0 + j)
                else:
                    graphs.run(idx_c[j], w_c[j], lr_c[j], act_c[j], bool(all_active[c0 + j]), c0 + j)
                epoch_done(c0 + j)
                if c0 + j + 1 in checkpoint_at:
                    on_checkpoint(c0 + j + 1, head)
                    head.train()
    bar.close()
    head.eval()
    hist = hist_dev.cpu().numpy()
    epoch_loss = [_epoch_means(hist[: totals[g], g], per_epoch[g]) for g in range(G)]
    seconds = time.perf_counter() - t0
    log.info("trained %d member(s) of '%s' on %d batch stream(s) for %d steps in %.2f s (%s%s)",
             G, head.name, K, S, seconds, precision,
             "" if graphs is None else f", {graphs.describe()}")
    return TrainResult(epoch_loss=epoch_loss, steps=totals, seconds=seconds)


class _StepGraphs:
    """Runs ``step`` through static buffers, replaying one CUDA graph per ``all_act`` value.

    Follows PyTorch's whole-network capture recipe (torch.cuda.graphs docs, "Whole-network
    capture": warm up on a side stream, capture with ``torch.cuda.graph``, then copy new
    inputs into the captured tensors and ``replay()``). Nothing in a step reads back to the
    host, so the loop only enqueues: five small copies and one replay per step.
    """

    WARMUP = 3  # eager steps of each kind before its capture (autograd allocates on the first)

    def __init__(self, step, dev: torch.device, K: int, G: int, width: int) -> None:  # noqa: ANN001
        self.step, self.dev = step, dev
        self.idx = torch.zeros(K, width, dtype=torch.long, device=dev)
        self.w = torch.zeros(G, width, device=dev)
        self.lr = torch.zeros(G, device=dev)
        self.act = torch.zeros(G, dtype=torch.bool, device=dev)
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)
        self.graphs: dict[bool, torch.cuda.CUDAGraph] = {}
        self.seen = {True: 0, False: 0}
        self.replays = 0
        self.capture = dev.type == "cuda"
        if not self.capture:
            log.info("cuda_graphs: the device is %s, not CUDA; the steps run eagerly "
                     "(same static buffers, same results)", dev)

    def run(self, idx: torch.Tensor, w: torch.Tensor, lr: torch.Tensor, act: torch.Tensor,
            all_act: bool, pos: int) -> None:
        self.idx.copy_(idx)
        self.w.copy_(w)
        self.lr.copy_(lr)
        self.act.copy_(act)
        self.pos.fill_(pos)
        graph = self.graphs.get(all_act)
        if graph is not None:
            graph.replay()
            self.replays += 1
            return
        if self.capture and self.seen[all_act] >= self.WARMUP:
            graph = self._capture(all_act)
            if graph is not None:
                graph.replay()
                self.replays += 1
                return
        self.seen[all_act] += 1
        if self.capture:  # warm-up on a side stream, as the capture recipe asks
            side = torch.cuda.Stream(self.dev)
            side.wait_stream(torch.cuda.current_stream(self.dev))
            with torch.cuda.stream(side):
                self._eager(all_act)
            torch.cuda.current_stream(self.dev).wait_stream(side)
        else:
            self._eager(all_act)

    def _eager(self, all_act: bool) -> None:
        self.step(self.idx, self.w, self.lr, self.act, all_act, self.pos)

    def _capture(self, all_act: bool) -> torch.cuda.CUDAGraph | None:
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._eager(all_act)
        except Exception as e:  # an op that cannot be captured: stay eager from here on
            log.warning("cuda_graphs: capture failed (%s: %s); the steps run eagerly",
                        type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            self.capture = False
            return None
        self.graphs[all_act] = graph
        return graph

    def describe(self) -> str:
        if not self.graphs:
            return "cuda_graphs requested, steps run eagerly"
        return f"CUDA graphs: {len(self.graphs)} captured, {self.replays} replays"


def stream_key(m: MemberSpec) -> tuple:
    """Members with equal keys (and the same row pool) draw the same batches (:class:`_Stream`)."""
    return (m.seed, m.stream, m.sampler, m.batch_size)


def _runs(members: list[MemberSpec], pools: list[torch.Tensor]) -> list[tuple[int, int]]:
    """Maximal runs ``[(g0, g1)]`` of adjacent members that draw the same batches."""
    starts = [0]
    for g in range(1, len(members)):
        a, b = pools[g - 1], pools[g]
        same_pool = a is b or (a.shape == b.shape and bool(torch.equal(a, b)))
        if stream_key(members[g]) != stream_key(members[g - 1]) or not same_pool:
            starts.append(g)
    return list(zip(starts, starts[1:] + [len(members)], strict=True))


def _member_losses(
    logits: torch.Tensor,
    y: torch.Tensor,
    knobs: dict[str, torch.Tensor],
    prior: ClassPrior,
    groups: list[tuple],
    G: int,
) -> torch.Tensor:
    """Per-row losses ``[G, B]``, each member with its own loss function and knobs."""
    if len(groups) == 1:
        return groups[0][0](logits, y, knobs, prior)
    out = logits.new_zeros(logits.shape[:2])
    for fn, sel, _ in groups:
        sub_knobs = {k: v[sel] for k, v in knobs.items()}
        sub_prior = ClassPrior(prior.counts[sel], prior.log_prior[sel])
        out = out.index_copy(0, sel, fn(logits[sel], y[sel], sub_knobs, sub_prior))
    return out


def _epoch_means(losses: np.ndarray, per_epoch: int) -> list[float]:
    """Mean step loss of each epoch (a last epoch cut short by ``steps`` over its own steps)."""
    whole = len(losses) // per_epoch
    out = losses[: whole * per_epoch].reshape(whole, per_epoch).mean(1).tolist()
    if len(losses) % per_epoch:
        out.append(float(losses[whole * per_epoch :].mean()))
    return out


def _adamw_step(
    params: list[torch.Tensor],
    grads: tuple[torch.Tensor, ...],
    exp_avg: list[torch.Tensor],
    exp_avg_sq: list[torch.Tensor],
    wd: list[torch.Tensor],
    lr: torch.Tensor,  # [G]
    inv_bc1: torch.Tensor,  # 1 / (1 − β1^t), a 0-d tensor
    sqrt_bc2: torch.Tensor,  # √(1 − β2^t)
    active: torch.Tensor | None,  # [G] bool, None when every member is active
) -> None:
    """One AdamW step on stacked parameters (``torch.optim.AdamW``'s single-tensor arithmetic,
    per-member rates and decays); inactive members keep their weights and moments."""
    beta1, beta2 = ADAMW_BETAS
    for p, grad, m, v, wd_g in zip(params, grads, exp_avg, exp_avg_sq, wd, strict=True):
        shape = (-1,) + (1,) * (p.dim() - 1)
        lr_g = lr.view(shape)
        new_p = p * (1 - lr_g * wd_g)  # decoupled weight decay
        new_m = torch.lerp(m, grad, 1 - beta1)
        new_v = (v * beta2).addcmul_(grad, grad, value=1 - beta2)
        new_p.sub_(lr_g * inv_bc1 * new_m / (new_v.sqrt() / sqrt_bc2).add_(ADAMW_EPS))
        for old, new in ((m, new_m), (v, new_v), (p, new_p)):
            if active is None:
                old.copy_(new)
            else:  # inactive members keep their old values
                torch.where(active.view(shape), new, old, out=old)


def _sgd_step(
    params: list[torch.Tensor],
    grads: tuple[torch.Tensor, ...],
    bufs: list[torch.Tensor],
    wd: list[torch.Tensor],
    mom: list[torch.Tensor],
    lr: torch.Tensor,  # [G]
    active: torch.Tensor | None,  # [G] bool, None when every member is active
    scratches: list[torch.Tensor] | None = None,  # one per param, reused (else allocated)
) -> None:
    """One SGD-momentum step on stacked parameters; inactive members are left untouched.

    Three fused elementwise passes per parameter (d = g + wd·p; buf = d + m·buf;
    p = p − lr·buf): on the CPU these passes over the 512×512 adapters cost as much as the
    matmuls, so they are kept few. Both branches use the same kernels, so a member's update
    is the same whether or not another member sits out this step.
    """
    if scratches is None:
        scratches = [torch.empty_like(p) for p in params] if active is not None else [None] * len(params)
    for p, grad, buf, scratch, wd_g, mom_g in zip(params, grads, bufs, scratches, wd, mom, strict=True):
        shape = (-1,) + (1,) * (p.dim() - 1)
        neg_lr = -lr.view(shape)
        d = grad.addcmul_(p, wd_g)  # the gradient tensor is ours: no new allocation
        if active is None:
            torch.addcmul(d, buf, mom_g, out=buf)
            p.addcmul_(buf, neg_lr)
        else:
            # inactive members keep buf and p: where() picks the old values for them; for
            # active members buf is then exactly the new buffer, as in the branch above
            a = active.view(shape)
            torch.addcmul(d, buf, mom_g, out=scratch)
            torch.where(a, scratch, buf, out=buf)
            torch.addcmul(p, buf, neg_lr, out=scratch)
            torch.where(a, scratch, p, out=p)


def rows_per_chunk(G: int, width: int, budget: int = 2**26) -> int:
    """Rows per inference chunk so that ``[G, rows, width]`` stays under ``budget`` floats."""
    return max(64, budget // max(1, G * width))


@torch.no_grad()
def predict_logits(head: Head, inputs: torch.Tensor, *, batch: int = 16384) -> torch.Tensor:
    """Logits of every member on every row: ``[N, D]`` or ``[G, N, D]`` -> ``[G, N, C]``."""
    return _apply(head.forward, head, inputs, batch)


@torch.no_grad()
def head_features(head: Head, inputs: torch.Tensor, *, batch: int = 16384) -> torch.Tensor:
    """The head's internal features (e.g. adapted features): -> ``[G, N, F]``."""
    return _apply(head.features, head, inputs, batch)


def _apply(fn, head: Head, inputs: torch.Tensor, batch: int) -> torch.Tensor:  # noqa: ANN001
    head.eval()
    G = head.num_members
    x = inputs.expand(G, *inputs.shape) if inputs.dim() == 2 else inputs  # [G, N, D]
    return torch.cat([fn(x[:, i : i + batch]) for i in range(0, x.shape[1], batch)], 1)
