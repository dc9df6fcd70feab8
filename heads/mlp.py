"""``mlp``: a one-hidden-layer MLP probe, the example of a head knob that changes shapes.

    logits = W2 · ReLU(W1 f + b1) + b2,   W1 [H, D], W2 [C, H]

``hidden`` (H) is declared on the head (:class:`MlpHead.Knobs`) with ``shape=True``: members
of one batched head share one H, and ``featcache grid --param hidden=64,256`` trains each
width as its own head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from featcache.errors import FeatcacheError
from featcache.heads.base import Head, knob, register_head, uniform_


@register_head("mlp")
class MlpHead(Head):
    """MLP probe ``W2 ReLU(W1 f + b1) + b2``; nn.Linear's default init (U(±1/sqrt(fan_in)))."""

    @dataclass(frozen=True)
    class Knobs:
        hidden: int = knob(256, "Hidden width H of the MLP probe.",
                           "featcache's choice (no paper: a test of shape-changing knobs)",
                           shape=True)

        def __post_init__(self) -> None:
            if isinstance(self.hidden, bool) or not isinstance(self.hidden, int) or self.hidden < 1:
                raise FeatcacheError(f"Head 'mlp': hidden={self.hidden!r} is invalid: expected "
                                     "an integer >= 1 (e.g. --head-option hidden=256).")

    def init_params(self, g: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        H, D, C = self.knobs[g].hidden, self.in_dim, self.num_classes
        b1, b2 = 1.0 / math.sqrt(D), 1.0 / math.sqrt(H)
        return {
            "weight": uniform_((H, D), b1, gen),  # W1 [H, D]
            "bias": uniform_((H,), b1, gen),  # b1 [H]
            "out_weight": uniform_((C, H), b2, gen),  # W2 [C, H]
            "out_bias": uniform_((C,), b2, gen),  # b2 [C]
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [G, B, D] -> [G, B, C]
        self.check_input(x)
        # the first layer stays fp32 (two chained half products put bf16's gradient error over
        # 2 %, tests/test_heads.py); the output layer runs in the --precision dtype
        h = torch.relu(torch.baddbmm(self.bias[:, None, :], x, self.weight.transpose(1, 2)))
        return self.linear(h, "out_weight", "out_bias")
