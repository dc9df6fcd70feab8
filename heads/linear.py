"""``linear`` (a linear probe) and ``cosine`` (LIFT's cosine classifier, scale σ)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from featcache.errors import FeatcacheError
from featcache.heads.base import Head, product, register_head, uniform_
from featcache.lift import cosine_logits


@register_head("linear")
class LinearHead(Head):
    """``logits = W f + b``, W [C, D]; nn.Linear's default init (U(±1/sqrt(D)))."""

    def init_params(self, g: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        if self.members[g].init != "random":
            raise FeatcacheError(
                f"Head 'linear' supports --init random only (got {self.members[g].init!r}); "
                "use --head cosine for text or class-mean initialisation."
            )
        bound = 1.0 / math.sqrt(self.in_dim)
        return {
            "weight": uniform_((self.num_classes, self.in_dim), bound, gen),  # [C, D]
            "bias": uniform_((self.num_classes,), bound, gen),  # [C]
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [G, B, D] -> [G, B, C]
        self.check_input(x)
        return self.linear(x)

    def forward_shared(self, x: torch.Tensor, members: slice = slice(None)) -> torch.Tensor:
        w, b = _rows(self.weight, members), _rows(self.bias, members)  # [g, C, D], [g, C]
        g, C, D = w.shape
        # [B, g·C]: one product for every member
        logits = product(torch.mm, x, w.reshape(g * C, D).T, self.product_dtype(w.numel()))
        # [g, B, C] made contiguous: log_softmax over a strided last dim is ~10x slower on CPU
        return (logits.view(-1, g, C).transpose(0, 1) + b[:, None, :]).contiguous()


@register_head("cosine")
class CosineHead(Head):
    """``logits = σ · cos(w_c, f)`` (LIFT, DESIGN.md §2: σ = 25).

    ``init``: ``random`` (U(±1/sqrt(D))), ``text`` (the class prototypes, e.g. text features
    mapped into the feature space: LIFT's semantic-aware initialisation) or ``class-mean``
    (the mean training feature of each class).
    """

    def init_params(self, g: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        init = self.members[g].init
        shape = (self.num_classes, self.in_dim)
        if init == "random" or self.ctx.loading:
            return {"weight": uniform_(shape, 1.0 / math.sqrt(self.in_dim), gen)}
        src = self.ctx.prototypes if init == "text" else self.ctx.class_means
        if src is None:
            what = "prototypes (text features)" if init == "text" else "class means"
            raise FeatcacheError(f"Head 'cosine' with --init {init} needs {what}; none were given.")
        w = src[g] if src.dim() == 3 else src
        if tuple(w.shape) != shape:
            raise FeatcacheError(
                f"Head 'cosine' --init {init}: got a {tuple(w.shape)} matrix, expected {shape} "
                "(the head's input width must match the prototypes' width)."
            )
        return {"weight": F.normalize(w.detach().float().cpu(), dim=-1).clone()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [G, B, D] -> [G, B, C]
        self.check_input(x)
        dtype = self.product_dtype(self.weight[0].numel())
        return cosine_logits(  # featcache.lift: the one cosine classifier
            x, self.weight, self.sigma[:, None, None], lambda f, w: product(torch.bmm, f, w.transpose(1, 2), dtype)
        )

    def forward_shared(self, x: torch.Tensor, members: slice = slice(None)) -> torch.Tensor:
        w = _rows(self.weight, members)
        g, C, D = w.shape
        dtype = self.product_dtype(w.numel())
        logits = cosine_logits(  # featcache.lift; [B, D] x [g, C, D] -> [B, g·C], scaled below
            x, w, None, lambda f, w: product(torch.mm, f, w.reshape(g * C, D).T, dtype)
        )
        logits = logits.view(-1, g, C).transpose(0, 1) * self.sigma[members, None, None]
        return logits.contiguous()  # see LinearHead.forward_shared


def _rows(p: torch.Tensor, members: slice) -> torch.Tensor:
    """``p[members]``, or ``p`` itself for every member (slicing a parameter costs a zero-filled
    full-size gradient in backward)."""
    return p if members == slice(None) else p[members]
