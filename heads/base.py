"""What every head shares: the member spec, the head context, the HEADS registry, checkpoints.

A head here is *batched*: one module holds G members of the same shape, every parameter has a
leading member dimension ``[G, ...]``, and ``forward`` maps ``[G, B, in_dim]`` features to
``[G, B, C]`` logits with ``torch.bmm``/``einsum``. Training one head is the case ``G = 1``;
TFA-LT's two stage-I adapters, the seeds of a run and the configurations of a grid are
members of one head that train in one step (see :mod:`featcache.heads.training`).

A new head is one small class plus one decorator::

    @HEADS.register("my-head")
    class MyHead(Head):
        def init_params(self, g, gen): ...   # create member g's initial values
        def forward(self, x): ...            # [G, B, in_dim] -> [G, B, C]

Each member draws its initial values from its own ``torch.Generator``, seeded from
``(seed, stream)`` of its :class:`MemberSpec`, so a member trained jointly with others gets
exactly the parameters it gets when trained alone.

Mixed precision (``--precision bf16|fp16``): inside :meth:`Head.matmul_precision` the products
of features with the head's weight matrices (:meth:`Head.linear`, the adapter's ``A``, the
linear/cosine classifiers) take both operands in that dtype and return fp32, when the weight
is large enough to pay for the casts (:meth:`Head.product_dtype`); weights, gradients,
optimiser state, the logit products with fixed prototypes and the losses stay fp32. Outside
it (the default, and evaluation) everything is fp32.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar

import torch
from torch import nn

from featcache import knobs
from featcache.errors import FeatcacheError, did_you_mean, number_problem
from featcache.lift import cosine_logits
from featcache.registry import Registry
from featcache.schedules import SCHEDULES
from featcache.seeding import stream_seed, torch_generator

#: The batched trainer's optimisers (featcache.heads.training): SGD with momentum, AdamW.
OPTIMIZERS = ("sgd", "adamw")
# Weights with fewer elements than this (per product) keep fp32 products under bf16/fp16: a
# 7-class classifier's product is bound by per-operation overhead, and casting its operands
# only adds time (measured on 2 CPU cores: TFA-LT's [7, 14] ensembler step 0.55 -> 0.7 ms).
HALF_MIN_WEIGHT = 1 << 16
INITS = ("random", "text", "class-mean")


@dataclass(frozen=True)
class MemberSpec:
    """Every per-member knob of a batched training run (names are the CLI's long options).

    Optimisation (``optimizer``, ``lr``, ``weight_decay``, ``momentum`` (SGD only),
    ``epochs``, ``batch_size``, ``schedule`` with ``lr_decay`` and ``decay_every`` for
    ``step``, ``steps``, ``drop_last``), loss (``loss`` and its knobs ``gamma``, ``la_tau``, ``cb_beta``), sampling
    (``sampler``), head (``tau`` cosine-logit temperature, ``sigma`` cosine-classifier scale,
    ``init``) and randomness (``seed``; ``stream`` names the random stream, so two members
    that differ only in optimisation knobs see the same initial values and batches).
    Defaults are TFA-LT's (DESIGN.md §1): SGD momentum 0.9, wd 5e-4, batch 128, lr 0.1 cosine.

    An epoch is one draw of the sampler cut into batches of ``batch_size``; its last partial
    batch is a smaller batch, or dropped with ``drop_last`` (``torch.utils.data.DataLoader``'s
    meaning). A run lasts ``epochs`` epochs, or with ``steps > 0`` exactly ``steps``
    optimiser steps (epochs repeat; the last one may end early): the MedMNIST probes' fixed
    iteration budget.
    """

    seed: int = 0
    stream: str = "head"
    sampler: str = knobs.SAMPLER
    loss: str = knobs.LOSS
    optimizer: str = knobs.OPTIMIZER
    lr: float = knobs.LR
    weight_decay: float = knobs.WEIGHT_DECAY
    momentum: float = knobs.MOMENTUM
    epochs: int = knobs.EPOCHS
    batch_size: int = knobs.BATCH_SIZE
    schedule: str = knobs.SCHEDULE
    lr_decay: float = knobs.LR_DECAY  # schedule "step": lr · lr_decay^⌊t / decay_every⌋
    decay_every: int = knobs.DECAY_EVERY  # optimiser steps (FMMIC's 200 iterations)
    steps: int = 0  # > 0: exactly this many optimiser steps instead of ``epochs`` epochs
    drop_last: bool = False  # drop each epoch's last partial batch
    gamma: float = knobs.GAMMA  # focal loss
    la_tau: float = knobs.LA_TAU  # logit-adjusted loss
    cb_beta: float = knobs.CB_BETA  # class-balanced loss
    tau: float = knobs.TAU_FALLBACK  # cosine-logit temperature (runs pass 1/logit_scale)
    sigma: float = knobs.SIGMA  # cosine classifier scale
    init: str = knobs.INIT
    # the head's own knobs (:attr:`Head.Knobs`), as given: ((name, value), ...) sorted by name
    head_options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "head_options",
                           tuple(sorted((str(k), v) for k, v in self.head_options)))

        def bad(name: str, why: str) -> FeatcacheError:
            return FeatcacheError(f"{name}={getattr(self, name)!r} is invalid: {why}.")

        if self.lr < 0 or not math.isfinite(self.lr):
            raise bad("lr", "expected a finite number >= 0")
        if self.weight_decay < 0:
            raise bad("weight_decay", "expected >= 0")
        if not 0 <= self.momentum < 1:
            raise bad("momentum", "expected 0 <= momentum < 1")
        if self.epochs < 0:
            raise bad("epochs", "expected an integer >= 0")
        if self.batch_size < 1:
            raise bad("batch_size", "expected an integer >= 1")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"expected one of {', '.join(SCHEDULES)}")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"expected one of {', '.join(OPTIMIZERS)}")
        if not 0 < self.lr_decay <= 1:
            raise bad("lr_decay", "expected 0 < lr_decay <= 1")
        if self.decay_every < 1:
            raise bad("decay_every", "expected an integer >= 1")
        if self.steps < 0:
            raise bad("steps", "expected an integer >= 0 (0: run for the epochs)")
        if self.gamma < 0:
            raise bad("gamma", "expected >= 0")
        if not 0 <= self.cb_beta < 1:
            raise bad("cb_beta", "expected 0 <= beta < 1")
        if not self.tau > 0:
            raise bad("tau", "expected a temperature > 0")
        if not self.sigma > 0:
            raise bad("sigma", "expected a scale > 0")
        if self.init not in INITS:
            raise bad("init", f"expected one of {', '.join(INITS)}")

    def rng_seed(self, purpose: str) -> int:
        """A 63-bit seed for this member's ``purpose`` stream ("init" or "sample")."""
        return stream_seed(self.seed, self.stream, purpose)  # featcache.seeding

    def generator(self, purpose: str, device: torch.device | str = "cpu") -> torch.Generator:
        """A fresh generator on ``device`` for this member's ``purpose`` stream."""
        return torch_generator(self.rng_seed(purpose), device)  # featcache.seeding

    def to_dict(self) -> dict:
        """Every knob as a plain dict (JSON-safe)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MemberSpec:
        """Rebuild from :meth:`to_dict` output (unknown keys are ignored, for older files)."""
        names = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        if "head_options" in d:  # JSON/asdict turned the pairs into lists
            d["head_options"] = tuple((str(k), v) for k, v in d["head_options"])
        return cls(**d)

    def with_(self, **changes: object) -> MemberSpec:
        """A copy with some knobs changed (validated again)."""
        return replace(self, **changes)


def knob(default: Any, help: str, source: str, *, shape: bool = False) -> Any:  # noqa: A002
    """A field of a head's :attr:`Head.Knobs` dataclass: its default, a one-line ``help`` and the
    ``source`` of the default (paper + section/equation, or repo file/line). ``shape=True`` marks
    a knob that changes the parameters' shapes (an MLP's width): the members of one batched head
    must agree on it, so ``featcache grid`` trains each of its values as a separate head."""
    return field(default=default, metadata={"help": help, "source": source, "shape": shape})


@dataclass(frozen=True)
class NoKnobs:
    """The knobs of a head that declares none."""


_KNOB_TYPES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _knob_value(head: str, f: Any, value: Any) -> Any:
    """``value`` (a CLI string or a Python value) as knob ``f``'s declared type, or an error."""
    base = f.type if isinstance(f.type, type) else {"int": int, "float": float, "str": str,
                                                   "bool": bool}.get(str(f.type), str)
    bad = FeatcacheError(f"Head '{head}' knob '{f.name}' expects {_KNOB_TYPES.get(base, base)}, "
                         f"got {value!r} (e.g. --head-option {f.name}={f.default}).")
    if isinstance(value, str):
        text = value.strip()
        try:
            if base is bool:
                return {"true": True, "1": True, "yes": True, "false": False, "0": False,
                        "no": False}[text.lower()]
            if base is int:
                out = int(text)
                if number_problem(out):
                    raise ValueError
                return out
            if base is float:  # inf is a value some knobs allow (clap's penalty_scale)
                return float(text)  # each head's Knobs.__post_init__ says what it accepts
        except (KeyError, ValueError):
            raise bad from None
        return text
    if base is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, base) and not (base is int and isinstance(value, bool)):
        return value
    raise bad


@dataclass(frozen=True)
class HeadContext:
    """What a head needs to know about its data: widths and, for text heads, prototypes.

    ``prototypes`` is ``[G, C, P]``: per member, one L2-normalised vector per class (text
    features of a prompt, or class means of that member's training rows) in the space the
    head compares against; ``class_means`` ``[G, C, in_dim]`` serves ``init=class-mean``.
    """

    in_dim: int
    num_classes: int
    prototypes: torch.Tensor | None = None  # [G, C, P]
    class_means: torch.Tensor | None = None  # [G, C, in_dim]
    loading: bool = False  # True when a checkpoint's state will overwrite the initial values


class Head(nn.Module):
    """G members of one head shape. Subclasses set ``name`` through the registry."""

    name: ClassVar[str] = ""
    trainable: ClassVar[bool] = True
    needs_prototypes: ClassVar[bool] = False
    # True for methods whose paper needs the cache's text features (Tip-Adapter, CLIP-Adapter,
    # LP++, CLAP, TaskRes): a run refuses class-mean prototypes for them.
    needs_text: ClassVar[bool] = False
    # The head's own knobs: a frozen dataclass of :func:`knob` fields (defaults, help, source),
    # validated in its ``__post_init__``; each member carries its values
    # (``MemberSpec.head_options``, ``--head-option NAME=VALUE``, a ``grid --param`` axis).
    Knobs: ClassVar[type] = NoKnobs
    # Parameters/buffers whose shape depends on the training data (a k-NN's stored training
    # features): set by :meth:`attach_data`, and resized to a checkpoint's shape on loading.
    data_shaped: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        ctx: HeadContext,
        members: Sequence[MemberSpec],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not members:
            raise FeatcacheError("A head needs at least one member.")
        self.ctx = ctx
        self.members = list(members)
        self.in_dim = ctx.in_dim
        self.num_classes = ctx.num_classes
        G = len(self.members)
        self.knobs = [self.resolve_knobs(m.head_options) for m in self.members]
        for f in fields(self.Knobs):
            if f.metadata.get("shape") and len({getattr(k, f.name) for k in self.knobs}) > 1:
                raise FeatcacheError(
                    f"Head '{self.name}': knob '{f.name}' changes the parameters' shape, so the "
                    "members of one batched head must share it; got "
                    f"{sorted({getattr(k, f.name) for k in self.knobs})}.")
        if self.needs_prototypes:
            if ctx.prototypes is None:
                raise FeatcacheError(
                    f"Head '{self.name}' compares features with class prototypes, but none "
                    "were given (use --text-source prompts with a cache that has text "
                    "features, or --text-source class-mean)."
                )
            protos = ctx.prototypes
            if protos.dim() == 2:
                protos = protos.expand(G, *protos.shape)
            if protos.shape[:2] != (G, ctx.num_classes):
                raise FeatcacheError(
                    f"Head '{self.name}': prototypes have shape {tuple(protos.shape)}, expected "
                    f"[{G}, {ctx.num_classes}, P]."
                )
            self.register_buffer(
                "prototypes", protos.to(device=device, dtype=dtype or torch.float32).contiguous()
            )
        tau = torch.tensor([m.tau for m in self.members], dtype=dtype or torch.float32)
        sigma = torch.tensor([m.sigma for m in self.members], dtype=dtype or torch.float32)
        self.register_buffer("tau", tau.to(device))
        self.register_buffer("sigma", sigma.to(device))
        self.matmul_dtype = torch.float32  # see matmul_precision
        values = [self.init_params(g, m.generator("init")) for g, m in enumerate(self.members)]
        for key in values[0]:
            stacked = torch.stack([v[key] for v in values]).to(device=device, dtype=dtype)
            self.register_parameter(key, nn.Parameter(stacked))

    # -- the head's own knobs ----------------------------------------------------------------
    @classmethod
    def knob_fields(cls) -> list:
        """The dataclass fields of :attr:`Knobs` (name, type, default, metadata help/source/shape)."""
        return list(fields(cls.Knobs))

    @classmethod
    def parse_options(cls, options: Mapping[str, Any] | Sequence[tuple[str, Any]]) -> tuple:
        """``{name: value}`` (CLI strings or Python values) checked against :attr:`Knobs`:
        unknown names get a did-you-mean error, values their declared type, and the whole is
        validated by the Knobs' ``__post_init__``. Returns sorted ``((name, value), ...)``."""
        items = dict(options.items() if isinstance(options, Mapping) else options)
        by_name = {f.name: f for f in cls.knob_fields()}
        out = []
        for name, value in items.items():
            key = str(name).strip().replace("-", "_")
            if key not in by_name:
                known = ", ".join(by_name) or "none"
                raise FeatcacheError(
                    f"Head '{cls.name}' has no knob '{name}'.{did_you_mean(key, by_name)} "
                    f"Its knobs: {known}.")
            out.append((key, _knob_value(cls.name, by_name[key], value)))
        out = tuple(sorted(out))
        cls.resolve_knobs(out)  # validated here, before any work
        return out

    @classmethod
    def resolve_knobs(cls, options: Sequence[tuple[str, Any]] = ()) -> Any:
        """The :attr:`Knobs` instance for ``options`` (defaults for what is not given)."""
        try:
            return cls.Knobs(**dict(options))
        except TypeError as e:
            names = ", ".join(f.name for f in fields(cls.Knobs)) or "none"
            raise FeatcacheError(f"Head '{cls.name}': {e} (its knobs: {names}).") from None

    @classmethod
    def shape_knobs(cls, options: Sequence[tuple[str, Any]] = ()) -> tuple:
        """The resolved values of the knobs that change parameter shapes (a grid's group key)."""
        k = cls.resolve_knobs(options)
        return tuple((f.name, getattr(k, f.name)) for f in fields(cls.Knobs)
                     if f.metadata.get("shape"))

    def attach_data(self, inputs: torch.Tensor, labels: torch.Tensor,
                    pools: list[torch.Tensor]) -> None:
        """Called by the trainer before training (also for heads with nothing to train):
        heads that keep training rows (k-NN, Tip-Adapter's cache) store them here. ``inputs``
        ``[N, D]`` or ``[G, N, D]``, ``labels`` ``[N]``, ``pools[g]`` member g's rows."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        for name in self.data_shaped:  # resize data-shaped tensors to the checkpoint's
            src = state_dict.get(prefix + name)
            cur = getattr(self, name, None)
            if src is None or cur is None or cur.shape == src.shape:
                continue
            new = torch.zeros(src.shape, dtype=cur.dtype, device=cur.device)
            if name in self._parameters:
                self._parameters[name] = nn.Parameter(new, requires_grad=cur.requires_grad)
            else:
                self._buffers[name] = new
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- what a subclass provides ----------------------------------------------------------
    def init_params(self, g: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Initial values of member ``g``'s parameters (no member dimension), drawn from ``gen``."""
        return {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [G, B, in_dim] -> [G, B, C]
        raise NotImplementedError

    def forward_shared(self, x: torch.Tensor, members: slice = slice(None)) -> torch.Tensor:
        """Optional: logits of ``members`` on ONE batch, ``[B, in_dim] -> [g, B, C]``.

        The same logits as :meth:`forward` on ``x`` expanded to every member, for heads whose
        logits are a map of the input that stacks over members (``linear``, ``cosine``): one
        ``[B, D] @ [D, g·C]`` product instead of a ``[g, B, D]`` copy of the batch. Used by
        :func:`featcache.heads.training.train_members` with ``share_batches=True`` (a grid's members
        that draw the same batches). Heads that do not override it never get that path.
        """
        raise NotImplementedError

    # -- shared helpers --------------------------------------------------------------------
    @property
    def num_members(self) -> int:
        """G, the number of members."""
        return len(self.members)

    def out_dim(self) -> int:
        """Width of what :meth:`features` returns (the logits' width unless overridden)."""
        return self.num_classes

    def features(self, x: torch.Tensor) -> torch.Tensor:  # [G, B, in_dim] -> [G, B, F]
        """The head's internal feature (an adapter's adapted feature); logits by default."""
        return self.forward(x)

    def prototype_logits(self, f: torch.Tensor) -> torch.Tensor:  # [G, B, P] -> [G, B, C]
        """``cos(f, prototypes) / τ`` per member, through :func:`featcache.lift.cosine_logits`
        (the one cosine classifier; the prototypes ``[G, C, P]`` are unit-norm already and
        ``self.tau`` is ``[G]``). For heads that score against fixed prototypes."""
        return cosine_logits(f, self.prototypes, (1.0 / self.tau)[:, None, None],
                             matmul=bmm_t, unit_weight=True)

    @contextlib.contextmanager
    def matmul_precision(self, dtype: torch.dtype) -> Iterator[None]:
        """Inside the block, weight products run in ``dtype`` (bf16/fp16) and return fp32.

        The trainer wraps its loop in this for ``--precision bf16|fp16``; parameters stay
        fp32 (the master weights) and receive fp32 gradients. fp32 leaves every head exactly
        as it is without the block.
        """
        before, self.matmul_dtype = self.matmul_dtype, dtype
        try:
            yield
        finally:
            self.matmul_dtype = before

    def product_dtype(self, weight_elements: int) -> torch.dtype:
        """The dtype of a product with a weight of ``weight_elements`` elements: the
        :meth:`matmul_precision` dtype, or fp32 for weights under ``HALF_MIN_WEIGHT``."""
        if weight_elements < HALF_MIN_WEIGHT:
            return torch.float32
        return self.matmul_dtype

    def scratch(self, key: str, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A buffer shaped like ``like`` (in ``dtype``), kept across training steps.

        For outputs written every step (weight gradients, a weight's low-precision copy): on
        the CPU, fresh multi-MB buffers cost page faults that were as slow as the matmul itself.
        """
        dtype = dtype or like.dtype
        bufs = self.__dict__.setdefault("_grad_buffers", {})
        buf = bufs.get((key, dtype))
        if buf is None or buf.shape != like.shape or buf.device != like.device:
            buf = bufs[(key, dtype)] = torch.empty_like(like, dtype=dtype)
        return buf

    def linear(self, x: torch.Tensor, weight: str = "weight", bias: str = "bias") -> torch.Tensor:
        """``x W^T + b`` per member: x [G, B, I], W [G, O, I], b [G, O] -> [G, B, O] (fp32).

        While training, the weight gradient is written into a buffer kept across steps
        (:class:`_BatchedLinear`, :meth:`scratch`), so the large ``[G, O, I]`` gradient is not
        a fresh allocation every step. Under :meth:`matmul_precision` the product runs in
        that dtype.
        """
        w, b = getattr(self, weight), getattr(self, bias)
        dtype = self.product_dtype(w[0].numel())
        if not (torch.is_grad_enabled() and w.requires_grad):
            if dtype != torch.float32:
                return torch.add(torch.bmm(x.to(dtype), w.to(dtype).transpose(1, 2)), b[:, None, :])
            return torch.baddbmm(b[:, None, :], x, w.transpose(1, 2))
        return _BatchedLinear.apply(x, w, b, self.scratch(weight, w), dtype)

    def check_input(self, x: torch.Tensor) -> None:
        """Refuse features whose width is not the head's input width, naming both."""
        if x.shape[-1] != self.in_dim:
            raise FeatcacheError(
                f"Head '{self.name}' expects {self.in_dim}-d features but got {x.shape[-1]}-d "
                "ones: the cache (or --feature embed|cls) does not match the one it was "
                "trained on."
            )

    def member(self, g: int) -> Head:
        """Member ``g`` alone, as a head with ``G = 1`` (a copy)."""
        return self.subset([g])

    def subset(self, idx: Sequence[int]) -> Head:
        """Members ``idx`` as a new head with ``G = len(idx)`` (a copy), e.g. one seed's WRS
        and RUS adapters out of a batched TFA-LT stage I."""
        idx = list(idx)
        ctx = HeadContext(
            self.in_dim,
            self.num_classes,
            prototypes=self.prototypes[idx] if self.needs_prototypes else None,
            loading=True,
        )
        sub = type(self)(ctx, [self.members[g] for g in idx], device=self.tau.device)
        sub.load_state_dict({k: v[idx].clone() for k, v in self.state_dict().items()})
        return sub

    def checkpoint(self) -> dict:
        """Everything needed to rebuild this head for prediction: name, widths, knobs, state."""
        return {
            "head": self.name,
            "in_dim": self.in_dim,
            "num_classes": self.num_classes,
            "members": [m.to_dict() for m in self.members],
            "state": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }


class _BatchedLinear(torch.autograd.Function):
    """``baddbmm(b, x, W^T)`` whose backward writes dL/dW into a reused fp32 buffer.

    With a half ``dtype`` both products (forward and dL/dW) take their operands in that dtype;
    the output and every gradient are fp32 (the bias is added in fp32).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, grad_buffer, dtype):  # noqa: ANN001, ANN205
        if dtype != torch.float32:
            x, weight = x.to(dtype), weight.to(dtype)
            out = torch.add(torch.bmm(x, weight.transpose(1, 2)), bias[:, None, :])  # fp32
        else:
            out = torch.baddbmm(bias[:, None, :], x, weight.transpose(1, 2))  # [G, B, O]
        ctx.save_for_backward(x, weight)
        ctx.grad_buffer = grad_buffer
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        x, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous()  # [G, B, O]
        grad_x = None
        if x.dtype != torch.float32:  # mixed precision: half products, fp32 gradients
            low = grad_out.to(x.dtype)
            grad_w = ctx.grad_buffer.copy_(torch.bmm(low.transpose(1, 2), x))  # [G, O, I]
            if ctx.needs_input_grad[0]:
                grad_x = torch.bmm(low, weight).float()
            return grad_x, grad_w, grad_out.sum(1), None, None
        grad_w = torch.bmm(grad_out.transpose(1, 2), x, out=ctx.grad_buffer)  # [G, O, I]
        grad_x = torch.bmm(grad_out, weight) if ctx.needs_input_grad[0] else None
        return grad_x, grad_w, grad_out.sum(1), None, None


HEADS: Registry[type[Head]] = Registry("head")


register_head = HEADS.register  # sets the class's ``name`` (see Registry.register)


def build_head(
    name: str,
    ctx: HeadContext,
    members: Sequence[MemberSpec],
    *,
    device: torch.device | str | None = None,
) -> Head:
    """Build head ``name`` with one member per spec (unknown names get a did-you-mean error)."""
    return HEADS.get(name)(ctx, members, device=device)


def load_head(ckpt: dict, *, device: torch.device | str | None = None) -> Head:
    """Rebuild a head from :meth:`Head.checkpoint` output."""
    state = ckpt["state"]
    protos = state.get("prototypes")
    ctx = HeadContext(
        int(ckpt["in_dim"]), int(ckpt["num_classes"]), prototypes=protos, loading=True
    )
    members = [MemberSpec.from_dict(m) for m in ckpt["members"]]
    head = HEADS.get(ckpt["head"])(ctx, members, device=device)
    head.load_state_dict(state)
    return head


def uniform_(shape: tuple[int, ...], bound: float, gen: torch.Generator) -> torch.Tensor:
    """``U(-bound, bound)`` drawn from ``gen`` (nn.Linear's default init with bound 1/sqrt(fan_in))."""
    return (torch.rand(shape, generator=gen) * 2 - 1) * bound


def product(op, a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:  # noqa: ANN001
    """``op(a, b)`` (``torch.mm`` or ``torch.bmm``); for a half ``dtype`` both operands are cast
    to it and the result back to fp32 (autograd carries fp32 gradients through the casts)."""
    if dtype == torch.float32:
        return op(a, b)
    return op(a.to(dtype), b.to(dtype)).float()


def bmm_t(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a b^T`` for stacked members: ``[G, B, P] x [G, C, P] -> [G, B, C]``."""
    return torch.bmm(a, b.transpose(1, 2))
