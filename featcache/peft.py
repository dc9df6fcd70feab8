"""Parameter-efficient fine-tuning (PEFT) methods for open_clip vision transformers (LIFT).

Every method has peft's shape, without depending on peft: a frozen config dataclass
(validated in ``__post_init__``) registered in :data:`METHODS` under the name users type,
plus three verbs shared by all methods:

- :func:`inject` ``(visual, config, num_classes) -> visual`` adds the method's modules to an
  open_clip ``VisionTransformer`` in place (the model's own weights are never copied);
- :func:`mark_trainable` ``(visual, config)`` sets ``requires_grad`` on exactly the parameters
  the method trains and freezes everything else;
- :func:`expected_trainable` ``(dims, config, num_classes) -> int`` is the closed-form count
  of those parameters, which the tests compare with :func:`count_parameters`.

Methods (LIFT, ICML 2024, Table 6; defaults follow the public code github.com/shijxcs/LIFT,
and where it differs from the papers the difference is a documented option):

- ``adaptformer`` (default): a bottleneck branch parallel to every block's MLP,
  ``x <- x + MLP(LN(x)) + s * up(ReLU(down(LN'(x))))``.
- ``adapter``: a sequential bottleneck adapter ``h <- h + up(ReLU(down(LN'(h))))`` on a
  sub-layer's output.
- ``lora``: low-rank deltas ``(alpha / r) * B A x`` on the attention projections.
- ``vpt-shallow`` / ``vpt-deep``: learnable prompt tokens in the first / every layer.
- ``bitfit``: the biases of the transformer blocks.
- ``full``: the transformer blocks themselves.
- ``classifier``: nothing in the backbone (only the head trains).

Block-level methods replace each ``ResidualAttentionBlock`` by a :class:`PeftBlock`, a
subclass that adopts the block's own submodules, so parameter names (and checkpoints) stay
those of open_clip and the new ones are added beside them (``...resblocks.3.adaptformer.*``).
Attention still runs through ``nn.MultiheadAttention`` (fused ``scaled_dot_product_attention``),
or, for LoRA, through ``F.scaled_dot_product_attention`` directly while training. New
modules take the device and dtype of the block they join, so a bf16 model gets bf16
adapters. Every zero-initialised method (adaptformer, adapter, lora) starts bit for bit as
the frozen model (``torch.equal``, tested in train and eval mode): their branches add exact
zeros, and LoRA without autograd runs the frozen ``nn.MultiheadAttention`` itself on the
merged weights ``W + (alpha/r) B A`` (= ``W`` at init), so it takes the same kernel (PyTorch's
fused inference fast path in eval mode) as the frozen model. One context is not bit-exact:
eval mode *with* autograd enabled, where the frozen module takes the fast path and LoRA's
differentiable path cannot (differences ~1e-7 relative, float rounding only).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import nn

from featcache.errors import FeatcacheError, did_you_mean
from featcache.registry import Registry

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "AdapterConfig",
    "AdaptFormerConfig",
    "BitFitConfig",
    "ClassifierOnlyConfig",
    "FullConfig",
    "LoRAConfig",
    "MethodConfig",
    "PeftBlock",
    "PromptedTransformer",
    "VitDims",
    "VPTDeepConfig",
    "VPTShallowConfig",
    "apply_method",
    "count_parameters",
    "expected_trainable",
    "inject",
    "lift_bottleneck",
    "make_config",
    "mark_trainable",
    "merge_lora",
    "trainable_names",
    "vit_dims",
]

METHODS: Registry[type[MethodConfig]] = Registry("fine-tuning method")
DEFAULT_METHOD = "adaptformer"


# --------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------


def lift_bottleneck(num_classes: int, num_blocks: int) -> int:
    """LIFT's default bottleneck width ``r = 2^max(0, floor(log2(K / (2L))))``.

    32 for ImageNet-LT (K=1000, L=12), 8 for Places-LT (365), 256 for iNat2018 (8142),
    4 for CIFAR-100 (100), 1 for 5-7 classes. LIFT uses the same value as the LoRA rank.
    """
    if num_classes < 1 or num_blocks < 1:
        raise FeatcacheError(
            f"lift_bottleneck needs num_classes >= 1 and num_blocks >= 1, "
            f"got num_classes={num_classes}, num_blocks={num_blocks}."
        )
    # Integer arithmetic instead of log2 of a float: floor(log2(K / 2L)) is the position of
    # the highest set bit of floor(K / 2L), and exactly -inf..-1 when K < 2L.
    ratio = num_classes // (2 * num_blocks)
    return 1 << max(0, ratio.bit_length() - 1)


@dataclass(frozen=True)
class VitDims:
    """The sizes of an open_clip ViT that the parameter-count formulas need."""

    width: int  # d, the residual stream width (768 for ViT-B/16)
    layers: int  # L, the number of blocks
    heads: int
    mlp_width: int  # hidden width of each block's MLP (4d for CLIP)
    patch_size: int
    num_tokens: int  # 1 + number of patches
    output_dim: int  # E, the width after ``proj``


def _check_vit(visual: nn.Module) -> None:
    """Raise a clear error unless ``visual`` is an open_clip ViT with standard blocks."""
    if not isinstance(visual, VisionTransformer):
        raise FeatcacheError(
            f"LIFT fine-tuning methods need an open_clip VisionTransformer image tower, got "
            f"{type(visual).__name__}. Choose a ViT backbone (e.g. --model ViT-B-16); ResNet and "
            "timm towers are not supported."
        )
    for i, block in enumerate(visual.transformer.resblocks):
        if not isinstance(block, ResidualAttentionBlock) or hasattr(block, "ln_1_kv"):
            raise FeatcacheError(
                f"Block {i} of this ViT is a {type(block).__name__}; LIFT fine-tuning methods "
                "support open_clip's standard ResidualAttentionBlock only (no custom block_type)."
            )
        if not getattr(block.attn, "batch_first", False) or not block.attn._qkv_same_embed_dim:
            raise FeatcacheError(
                f"Block {i}'s attention is not batch-first with a packed qkv projection; "
                "upgrade open_clip (>= 2.24) to use LIFT fine-tuning methods."
            )


def vit_dims(visual: nn.Module) -> VitDims:
    """The :class:`VitDims` of an open_clip ``VisionTransformer``."""
    _check_vit(visual)
    blocks = visual.transformer.resblocks
    block = blocks[0]
    patch = visual.conv1.kernel_size
    return VitDims(
        width=int(visual.transformer.width),
        layers=len(blocks),
        heads=int(block.attn.num_heads),
        mlp_width=int(block.mlp.c_fc.out_features),
        patch_size=int(patch[0]),
        num_tokens=int(visual.positional_embedding.shape[0]),
        output_dim=int(visual.proj.shape[1]) if visual.proj is not None else int(visual.transformer.width),
    )


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts of ``module`` (shared parameters counted once)."""
    params = list(module.parameters())  # nn.Module.parameters() already deduplicates
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return trainable, sum(p.numel() for p in params)


def trainable_names(module: nn.Module) -> list[str]:
    """Names of the parameters of ``module`` that have ``requires_grad``, in model order."""
    return [name for name, p in module.named_parameters() if p.requires_grad]


def _factory(block: nn.Module) -> dict:
    """``device``/``dtype`` keyword arguments matching ``block``'s weights."""
    weight = block.mlp.c_fc.weight
    return {"device": weight.device, "dtype": weight.dtype}


def _norm_like(norm: nn.Module, width: int, factory: dict) -> nn.Module:
    """A fresh LayerNorm of the same class (and eps) as ``norm``: weight 1, bias 0.

    open_clip's ``LayerNorm`` subclasses cast back to the input dtype, which keeps bf16 models
    in bf16; reusing the model's norm class keeps that behaviour.
    """
    cls = type(norm) if isinstance(norm, nn.LayerNorm) else nn.LayerNorm
    return cls(width, eps=getattr(norm, "eps", 1e-5), **factory)


# --------------------------------------------------------------------------------------
# Modules added to the model
# --------------------------------------------------------------------------------------


class Bottleneck(nn.Module):
    """``scale * up(ReLU(down(norm(x))))``: the branch of AdaptFormer and of the Adapter.

    As in LIFT's code: ``down`` is Kaiming-normal (``a = sqrt(5)``, i.e. std ``1/sqrt(3d)``)
    with zero bias, ``up`` is all zeros (weight and bias), so the branch outputs exactly zero
    at initialisation. ``scale`` is a learnable scalar initialised to ``scale_init`` (LIFT's
    AdaptFormer), a fixed buffer (``learnable_scale=False``), or absent (``None``: Adapter).
    ``norm=None`` means the caller applies a norm itself (AdaptFormer reusing ``ln_2``).
    """

    def __init__(
        self,
        width: int,
        bottleneck: int,
        norm: nn.Module | None,
        scale_init: float | None = None,
        learnable_scale: bool = True,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.norm = norm
        self.down = nn.Linear(width, bottleneck, **factory)
        self.up = nn.Linear(bottleneck, width, **factory)
        nn.init.kaiming_normal_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        if scale_init is None:
            self.scale = None
        elif learnable_scale:
            self.scale = nn.Parameter(torch.full((1,), float(scale_init), **factory))
        else:
            self.register_buffer("scale", torch.full((1,), float(scale_init), **factory))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, T, d] -> branch output [B, T, d]."""
        h = self.norm(x) if self.norm is not None else x
        h = self.up(F.relu(self.down(h)))  # [B, T, d] via [B, T, r]
        # scale in h's dtype: an fp32 scalar would promote a bf16 residual stream to fp32
        return h * self.scale.to(h.dtype) if self.scale is not None else h


class LowRankDelta(nn.Module):
    """LoRA's ``(alpha / r) * B(A(x))`` with ``A: in -> r``, ``B: r -> out``, ``B = 0`` at start.

    ``A`` is uniform in ``+-1/sqrt(r)``: LIFT's code stores ``A`` as ``[in, r]`` and applies
    ``kaiming_uniform_(a=sqrt(5))``, whose fan-in is then ``r`` (peft's ``[r, in]`` layout
    gives ``+-1/sqrt(in)``). LIFT's scaling is ``1/r``, i.e. ``alpha = 1``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        rank: int,
        alpha: float,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.lora_a = nn.Parameter(torch.empty(rank, in_dim, **factory))  # [r, in]
        self.lora_b = nn.Parameter(torch.zeros(out_dim, rank, **factory))  # [out, r]
        bound = 1.0 / math.sqrt(rank)
        nn.init.uniform_(self.lora_a, -bound, bound)
        self.scaling = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [..., in] -> delta [..., out]."""
        return F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """The merged delta ``(alpha / r) * B A`` ``[out, in]`` (exact zeros while ``B = 0``)."""
        return (self.lora_b @ self.lora_a) * self.scaling


class PeftBlock(ResidualAttentionBlock):
    """An open_clip ``ResidualAttentionBlock`` with optional PEFT modules.

    It adopts the original block's submodules (``ln_1, attn, ls_1, ln_2, mlp, ls_2``: the
    same ``Parameter`` objects, so names and checkpoints are unchanged) and computes::

        h = ls_1(attn(ln_1(x)));        h = h + adapter_attn(h)      # Adapter, optional
        x = x + h
        m = ls_2(mlp(ln_2(x)));         m = m + adapter_mlp(m)       # Adapter, optional
        x = x + m + adaptformer(x)                                   # AdaptFormer, optional

    with LoRA deltas, when present, added to the attention's q/k/v/out projections.
    """

    def __init__(self, block: ResidualAttentionBlock) -> None:
        nn.Module.__init__(self)  # adopt block's modules instead of building new ones
        self.ln_1, self.attn, self.ls_1 = block.ln_1, block.attn, block.ls_1
        self.ln_2, self.mlp, self.ls_2 = block.ln_2, block.mlp, block.ls_2
        self.training = block.training
        self.adaptformer: Bottleneck | None = None
        self.adaptformer_norm_shared = False  # True: AdaptFormer's LN' is the frozen ln_2
        self.adapter_attn: Bottleneck | None = None
        self.adapter_mlp: Bottleneck | None = None
        self.lora: nn.ModuleDict | None = None

    def _lora_attention(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """Self-attention with LoRA deltas.

        Without autograd (evaluation): the frozen ``nn.MultiheadAttention`` on the merged
        weights ``W + (alpha/r) B A`` (:func:`torch.func.functional_call`), so the module picks
        the same kernel as the frozen model and an untrained LoRA (``B = 0``) gives its output
        bit for bit. With autograd (training): the low-rank form ``W x + (alpha/r) B A x``
        through ``F.scaled_dot_product_attention`` — no ``[d, d]`` weight gradient is formed —
        which is what ``nn.MultiheadAttention``'s own (non-fast) path computes, op for op.
        """
        if not torch.is_grad_enabled():
            return self._merged_attention(x, attn_mask)
        attn, lora = self.attn, self.lora
        batch, tokens, width = x.shape  # [B, T, d]
        heads = attn.num_heads
        qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)  # [B, T, 3d]
        q, k, v = qkv.chunk(3, dim=-1)  # 3 x [B, T, d]
        q = q + lora["q"](x) if "q" in lora else q
        k = k + lora["k"](x) if "k" in lora else k
        v = v + lora["v"](x) if "v" in lora else v
        q, k, v = (t.view(batch, tokens, heads, width // heads).transpose(1, 2) for t in (q, k, v))
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            # nn.MultiheadAttention: True = masked out; SDPA: True = attend. Use an additive mask.
            attn_mask = torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill(attn_mask, -math.inf)
        elif attn_mask is not None:
            attn_mask = attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=attn.dropout if self.training else 0.0
        )  # [B, H, T, d/H]
        out = out.transpose(1, 2).reshape(batch, tokens, width)  # [B, T, d]
        y = attn.out_proj(out)
        return y + lora["out"](out) if "out" in lora else y

    def _merged_attention(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """``self.attn`` run with LoRA's deltas merged into its projection weights."""
        attn, lora = self.attn, self.lora
        d = attn.embed_dim
        weight = attn.in_proj_weight  # [3d, d]: q, k, v stacked
        parts = [weight[k * d : (k + 1) * d] for k in range(3)]
        parts = [p + lora[t].delta_weight().to(p.dtype) if t in lora else p for p, t in zip(parts, "qkv", strict=True)]
        params = {"in_proj_weight": torch.cat(parts)}
        if "out" in lora:
            w_out = attn.out_proj.weight
            params["out_proj.weight"] = w_out + lora["out"].delta_weight().to(w_out.dtype)
        out = torch.func.functional_call(attn, params, (x, x, x), {"need_weights": False, "attn_mask": attn_mask})
        return out[0]  # [B, T, d]

    def forward(
        self,
        q_x: torch.Tensor,
        k_x: torch.Tensor | None = None,
        v_x: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Self-attention block on ``q_x`` [B, T, d] (``k_x``/``v_x`` exist for signature parity)."""
        if k_x is not None or v_x is not None:
            raise ValueError("PeftBlock is a self-attention block; k_x and v_x must be None")
        x = q_x  # [B, T, d]
        if self.lora is None:
            h = self.attention(q_x=self.ln_1(x), attn_mask=attn_mask)
        else:
            h = self._lora_attention(self.ln_1(x), attn_mask)
        h = self.ls_1(h)  # [B, T, d]
        if self.adapter_attn is not None:
            h = h + self.adapter_attn(h)
        x = x + h
        normed = self.ln_2(x)
        m = self.ls_2(self.mlp(normed))  # [B, T, d]
        if self.adapter_mlp is not None:
            m = m + self.adapter_mlp(m)
        if self.adaptformer is not None:
            m = m + self.adaptformer(normed if self.adaptformer_norm_shared else x)
        return x + m


class PromptedTransformer(nn.Module):
    """open_clip's ``Transformer`` with Visual Prompt Tuning (VPT) tokens.

    It shares the original ``resblocks`` (names unchanged) and owns ``prompts``
    ``[num_prompt_layers, P, d]``. Before block 0 the P prompts are appended to the token
    sequence (after ``ln_pre``, so after the CLS token and position embeddings); with
    ``deep=True`` they are replaced by the next layer's prompts before every block; after the
    last block they are dropped, so pooling sees the original ``[B, T, d]`` tokens and the CLS
    output is pooled as usual. LIFT's code appends prompts at the end of the sequence (not
    between CLS and the patches as in the VPT paper); attention without position-dependent
    operations makes the two equivalent. Init as LIFT/VPT: uniform in
    ``+-sqrt(6 / (3 * patch^2 + d))``.
    """

    def __init__(self, transformer: nn.Module, prompt_length: int, deep: bool, patch_size: int) -> None:
        super().__init__()
        self.resblocks = transformer.resblocks  # shared, not copied
        self.width = transformer.width
        self.layers = transformer.layers
        self.batch_first = getattr(transformer, "batch_first", True)
        self.grad_checkpointing = getattr(transformer, "grad_checkpointing", False)
        self.deep = deep
        weight = self.resblocks[0].mlp.c_fc.weight
        num_prompt_layers = len(self.resblocks) if deep else 1
        self.prompts = nn.Parameter(
            torch.empty(num_prompt_layers, prompt_length, self.width, device=weight.device, dtype=weight.dtype)
        )  # [Lp, P, d]
        bound = math.sqrt(6.0 / float(3 * patch_size * patch_size + self.width))
        nn.init.uniform_(self.prompts, -bound, bound)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens ``x`` [B, T, d] -> [B, T, d], with prompts present only inside the blocks."""
        if not self.batch_first:
            raise FeatcacheError("VPT needs a batch-first open_clip transformer (open_clip >= 2.24).")
        if attn_mask is not None:
            raise FeatcacheError("VPT does not support attention masks (image towers use none).")
        batch, tokens, _ = x.shape
        for i, block in enumerate(self.resblocks):
            if i == 0 or self.deep:
                prompts = self.prompts[i].to(x.dtype).expand(batch, -1, -1)  # [B, P, d]
                x = torch.cat([x[:, :tokens], prompts], dim=1)  # [B, T + P, d]
            if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(block, x, None, None, None, use_reentrant=False)
            else:
                x = block(x)
        return x[:, :tokens]  # [B, T, d]: prompts removed before pooling


# --------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method's config: names the method and its three verbs.

    Subclasses are frozen dataclasses that validate their fields in ``__post_init__`` and
    implement ``_inject``, ``_trainable`` (a predicate on parameter names) and ``_count``.
    """

    name: ClassVar[str] = ""

    def resolve(self, dims: VitDims, num_classes: int) -> MethodConfig:
        """A copy with every ``None`` default filled in for this model and class count."""
        return self

    def _inject(self, visual: VisionTransformer, dims: VitDims) -> None:
        """Add this method's modules to ``visual`` (config already resolved)."""

    def _trainable(self, name: str) -> bool:
        """Whether the parameter ``name`` (as in ``visual.named_parameters()``) trains."""
        return False

    def _count(self, dims: VitDims) -> int:
        """Closed-form number of trainable parameters (config already resolved)."""
        return 0


def _positive_int_or_none(cls_name: str, field: str, value: object, hint: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise FeatcacheError(f"{cls_name}.{field} must be a positive integer or None ({hint}), got {value!r}.")


def _distinct_choices(cls_name: str, field: str, value: object, choices: tuple[str, ...], hint: str = "") -> tuple[str, ...]:
    """``value`` (one name or a sequence) as a tuple of distinct, known, at least one ``choices``."""
    names = tuple(value) if not isinstance(value, str) else (value,)
    bad = [n for n in names if n not in choices]
    if bad or not names or len(set(names)) != len(names):
        raise FeatcacheError(f"{cls_name}.{field} must be distinct entries of {choices}, got {value!r}.{hint}")
    return names


def _wrap_blocks(visual: VisionTransformer) -> list[PeftBlock]:
    """Replace every block of ``visual`` by a :class:`PeftBlock` adopting its modules."""
    blocks = visual.transformer.resblocks
    for i, block in enumerate(blocks):
        blocks[i] = PeftBlock(block)
    return list(blocks)


@METHODS.register("adaptformer")
@dataclass(frozen=True)
class AdaptFormerConfig(MethodConfig):
    """AdaptFormer (Chen et al., NeurIPS 2022) as LIFT uses it: in every block, parallel to the MLP,
    ``x <- x + MLP(LN(x)) + s * up(ReLU(down(LN'(x))))``, up zero-initialised, s learnable (init 1).

    - ``bottleneck``: r; ``None`` means LIFT's ``lift_bottleneck(num_classes, num_blocks)``.
    - ``own_norm``: LN' is a new trainable LayerNorm on the residual stream, as in LIFT's code
      (``AdaptFormer.ln``), counted in the trainable parameters (2d per block). ``False`` reuses
      the block's frozen ``ln_2`` output (the formula then has no extra 2d).
    - ``scale`` / ``learnable_scale``: LIFT's ``adaptformer_scale`` ("learnable", or a fixed value).

    Trainable per block: ``2*d*r + r + d`` (down, up) ``+ 1`` (s, if learnable) ``+ 2*d`` (LN', if own).
    """

    name: ClassVar[str] = "adaptformer"
    bottleneck: int | None = None
    own_norm: bool = True
    scale: float = 1.0
    learnable_scale: bool = True

    def __post_init__(self) -> None:
        _positive_int_or_none(type(self).__name__, "bottleneck", self.bottleneck, "None = LIFT's default")
        if not math.isfinite(self.scale):
            raise FeatcacheError(f"AdaptFormerConfig.scale must be a finite number, got {self.scale!r}.")

    def resolve(self, dims: VitDims, num_classes: int) -> AdaptFormerConfig:
        """Fill ``bottleneck`` with LIFT's formula when it is ``None``."""
        if self.bottleneck is not None:
            return self
        return dataclasses.replace(self, bottleneck=lift_bottleneck(num_classes, dims.layers))

    def _inject(self, visual: VisionTransformer, dims: VitDims) -> None:
        for block in _wrap_blocks(visual):
            factory = _factory(block)
            norm = _norm_like(block.ln_2, dims.width, factory) if self.own_norm else None
            block.adaptformer = Bottleneck(
                dims.width, self.bottleneck, norm, self.scale, self.learnable_scale, **factory
            )
            block.adaptformer_norm_shared = not self.own_norm

    def _trainable(self, name: str) -> bool:
        return ".adaptformer." in name

    def _count(self, dims: VitDims) -> int:
        d, r = dims.width, self.bottleneck
        per_block = 2 * d * r + r + d + int(self.learnable_scale) + (2 * d if self.own_norm else 0)
        return dims.layers * per_block


ADAPTER_POSITIONS = ("attn", "mlp")


@METHODS.register("adapter")
@dataclass(frozen=True)
class AdapterConfig(MethodConfig):
    """Sequential bottleneck adapter (Houlsby et al., ICML 2019): ``h <- h + up(ReLU(down(LN'(h))))``
    on a sub-layer's output ``h``, before the residual addition; up zero-initialised.

    - ``positions``: ``("mlp",)`` (default) follows LIFT's code, which places one adapter after
      each block's MLP only; ``("attn", "mlp")`` is Houlsby's placement (after attention and MLP).
    - ``bottleneck``: r; ``None`` means ``lift_bottleneck(num_classes, num_blocks)`` (LIFT).
    - Each adapter has its own LayerNorm (LIFT's ``Adapter.ln``; Houlsby's has none).

    Trainable per adapter: ``2*d*r + r + d`` (down, up) ``+ 2*d`` (LN').
    """

    name: ClassVar[str] = "adapter"
    bottleneck: int | None = None
    positions: tuple[str, ...] = ("mlp",)

    def __post_init__(self) -> None:
        _positive_int_or_none(type(self).__name__, "bottleneck", self.bottleneck, "None = LIFT's default")
        hint = " Use ('mlp',) for LIFT, ('attn', 'mlp') for Houlsby."
        positions = _distinct_choices("AdapterConfig", "positions", self.positions, ADAPTER_POSITIONS, hint)
        object.__setattr__(self, "positions", positions)

    def resolve(self, dims: VitDims, num_classes: int) -> AdapterConfig:
        """Fill ``bottleneck`` with LIFT's formula when it is ``None``."""
        if self.bottleneck is not None:
            return self
        return dataclasses.replace(self, bottleneck=lift_bottleneck(num_classes, dims.layers))

    def _inject(self, visual: VisionTransformer, dims: VitDims) -> None:
        for block in _wrap_blocks(visual):
            factory = _factory(block)
            for position in self.positions:
                norm = _norm_like(block.ln_2, dims.width, factory)
                adapter = Bottleneck(dims.width, self.bottleneck, norm, None, **factory)
                setattr(block, f"adapter_{position}", adapter)

    def _trainable(self, name: str) -> bool:
        return any(f".adapter_{p}." in name for p in self.positions)

    def _count(self, dims: VitDims) -> int:
        d, r = dims.width, self.bottleneck
        return dims.layers * len(self.positions) * (2 * d * r + r + d + 2 * d)


LORA_TARGETS = ("q", "k", "v", "out")


@METHODS.register("lora")
@dataclass(frozen=True)
class LoRAConfig(MethodConfig):
    """LoRA (Hu et al., ICLR 2022) on the attention of every block: ``W x + (alpha/r) B A x``.

    - ``targets``: which projections get a delta: ``q``, ``k``, ``v`` (slices of the packed
      ``in_proj``) and ``out`` (``out_proj``). Default ``("q", "v")``, as in LIFT's code and the
      LoRA paper; ``("q", "k", "v", "out")`` adapts all of them.
    - ``rank``: r; ``None`` means LIFT's choice, the AdaptFormer bottleneck formula.
    - ``alpha``: scaling ``alpha / r``; LIFT's code uses ``1 / r``, i.e. ``alpha = 1``
      (peft's default is 8).

    Trainable per block and target: ``2*d*r`` (A, B; no biases).
    """

    name: ClassVar[str] = "lora"
    rank: int | None = None
    alpha: float = 1.0
    targets: tuple[str, ...] = ("q", "v")

    def __post_init__(self) -> None:
        _positive_int_or_none(type(self).__name__, "rank", self.rank, "None = LIFT's default")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise FeatcacheError(f"LoRAConfig.alpha must be a positive number, got {self.alpha!r}.")
        targets = _distinct_choices("LoRAConfig", "targets", self.targets, LORA_TARGETS)
        object.__setattr__(self, "targets", targets)

    def resolve(self, dims: VitDims, num_classes: int) -> LoRAConfig:
        """Fill ``rank`` with LIFT's formula when it is ``None``."""
        if self.rank is not None:
            return self
        return dataclasses.replace(self, rank=lift_bottleneck(num_classes, dims.layers))

    def _inject(self, visual: VisionTransformer, dims: VitDims) -> None:
        d = dims.width
        for block in _wrap_blocks(visual):
            factory = _factory(block)
            block.lora = nn.ModuleDict(
                {t: LowRankDelta(d, d, self.rank, self.alpha, **factory) for t in self.targets}
            )

    def _trainable(self, name: str) -> bool:
        return ".lora." in name

    def _count(self, dims: VitDims) -> int:
        return dims.layers * len(self.targets) * 2 * dims.width * self.rank


@dataclass(frozen=True)
class _VPTConfig(MethodConfig):
    """Shared fields of the two VPT variants."""

    deep: ClassVar[bool] = False
    prompt_length: int = 10

    def __post_init__(self) -> None:
        if isinstance(self.prompt_length, bool) or not isinstance(self.prompt_length, int) or self.prompt_length < 1:
            raise FeatcacheError(
                f"{type(self).__name__}.prompt_length must be a positive integer "
                f"(LIFT uses 10), got {self.prompt_length!r}."
            )

    def _inject(self, visual: VisionTransformer, dims: VitDims) -> None:
        visual.transformer = PromptedTransformer(
            visual.transformer, self.prompt_length, self.deep, dims.patch_size
        )

    def _trainable(self, name: str) -> bool:
        return name == "transformer.prompts"

    def _count(self, dims: VitDims) -> int:
        return (dims.layers if self.deep else 1) * self.prompt_length * dims.width


@METHODS.register("vpt-shallow")
@dataclass(frozen=True)
class VPTShallowConfig(_VPTConfig):
    """VPT-shallow (Jia et al., ECCV 2022): ``prompt_length`` learnable tokens enter before the
    first block only (LIFT's default length 10). Trainable: ``P*d``."""

    name: ClassVar[str] = "vpt-shallow"
    deep: ClassVar[bool] = False


@METHODS.register("vpt-deep")
@dataclass(frozen=True)
class VPTDeepConfig(_VPTConfig):
    """VPT-deep: a fresh set of ``prompt_length`` learnable tokens replaces the previous layer's
    prompts before every block (LIFT's default length 10). Trainable: ``L*P*d``."""

    name: ClassVar[str] = "vpt-deep"
    deep: ClassVar[bool] = True


@METHODS.register("bitfit")
@dataclass(frozen=True)
class BitFitConfig(MethodConfig):
    """BitFit (Ben Zaken et al., ACL 2022): every bias inside the transformer blocks trains
    (LayerNorm, attention in/out projections, MLP), as LIFT's ``bias_tuning``; ``ln_pre`` and
    ``ln_post`` stay frozen. Trainable per block: ``7*d + mlp_width``."""

    name: ClassVar[str] = "bitfit"

    def _trainable(self, name: str) -> bool:
        return name.startswith("transformer.resblocks.") and name.endswith("bias")

    def _count(self, dims: VitDims) -> int:
        d, m = dims.width, dims.mlp_width
        # ln_1 d + in_proj 3d + out_proj d + ln_2 d + c_fc m + c_proj d
        return dims.layers * (7 * d + m)


FULL_SCOPES = ("blocks", "all")


@METHODS.register("full")
@dataclass(frozen=True)
class FullConfig(MethodConfig):
    """Full fine-tuning. ``scope="blocks"`` (default) trains every transformer block, as LIFT's
    ``full_tuning`` does (patch embedding, CLS/position embeddings, ``ln_pre``, ``ln_post`` and
    ``proj`` stay frozen); ``scope="all"`` trains every parameter of the image tower.
    Trainable per block: ``4*d^2 + 2*d*m + 9*d + m`` (m the MLP width)."""

    name: ClassVar[str] = "full"
    scope: str = "blocks"

    def __post_init__(self) -> None:
        if self.scope not in FULL_SCOPES:
            raise FeatcacheError(
                f"Unknown full fine-tuning scope '{self.scope}'.{did_you_mean(self.scope, FULL_SCOPES)} "
                f"Choose from: {', '.join(FULL_SCOPES)}."
            )

    def _trainable(self, name: str) -> bool:
        return self.scope == "all" or name.startswith("transformer.resblocks.")

    def _count(self, dims: VitDims) -> int:
        d, m = dims.width, dims.mlp_width
        blocks = dims.layers * (4 * d * d + 2 * d * m + 9 * d + m)
        if self.scope == "blocks":
            return blocks
        p, t, e = dims.patch_size, dims.num_tokens, dims.output_dim
        # conv1 (no bias) + CLS + positions + ln_pre + ln_post + proj [d, E]
        return blocks + 3 * p * p * d + d + t * d + 2 * d + 2 * d + d * e


@METHODS.register("classifier")
@dataclass(frozen=True)
class ClassifierOnlyConfig(MethodConfig):
    """Classifier only: the whole backbone stays frozen; only the head trains (which can run
    from cached features). Trainable in the backbone: 0."""

    name: ClassVar[str] = "classifier"


# --------------------------------------------------------------------------------------
# The verbs
# --------------------------------------------------------------------------------------


def make_config(method: str = DEFAULT_METHOD, **options: object) -> MethodConfig:
    """Build the config of ``method`` (a registry name) from keyword options, validated.

    Unknown option names are refused with a did-you-mean, never silently ignored.
    """
    cls = METHODS.get(method)
    fields = [f.name for f in dataclasses.fields(cls)]
    for key in options:
        if key not in fields:
            raise FeatcacheError(
                f"Fine-tuning method '{method}' has no option '{key}'.{did_you_mean(key, fields)} "
                f"Its options: {', '.join(fields) or 'none'}."
            )
    return cls(**options)


def _resolved(visual: nn.Module, config: MethodConfig, num_classes: int) -> tuple[VitDims, MethodConfig]:
    if not isinstance(config, MethodConfig):
        raise TypeError(f"config must be a MethodConfig (see make_config), got {type(config).__name__}")
    dims = vit_dims(visual)
    return dims, config.resolve(dims, num_classes)


def inject(visual: nn.Module, config: MethodConfig, num_classes: int) -> nn.Module:
    """Add ``config``'s modules to the open_clip ViT ``visual`` in place and return it.

    ``num_classes`` fills LIFT's defaults (bottleneck / rank). A tower that already carries a
    method is refused: methods do not stack.
    """
    dims, resolved = _resolved(visual, config, num_classes)
    if isinstance(visual.transformer, PromptedTransformer) or any(
        isinstance(b, PeftBlock) for b in visual.transformer.resblocks
    ):
        raise FeatcacheError(
            f"This image tower already has a fine-tuning method injected; cannot add "
            f"'{config.name}' on top. Load a fresh backbone for each method."
        )
    resolved._inject(visual, dims)
    return visual


def mark_trainable(visual: nn.Module, config: MethodConfig) -> None:
    """Set ``requires_grad`` on exactly the parameters ``config`` trains; freeze all others."""
    if not isinstance(config, MethodConfig):
        raise TypeError(f"config must be a MethodConfig (see make_config), got {type(config).__name__}")
    for name, param in visual.named_parameters():
        param.requires_grad_(config._trainable(name))


def expected_trainable(visual: nn.Module, config: MethodConfig, num_classes: int) -> int:
    """Closed-form count of the parameters ``config`` trains in ``visual`` (for checks and logs).

    Computed from the model's sizes only (:func:`vit_dims`), not from the injected modules, so
    it checks them. Works before or after :func:`inject`.
    """
    dims, resolved = _resolved(visual, config, num_classes)
    return resolved._count(dims)


def apply_method(visual: nn.Module, method: str | MethodConfig, num_classes: int) -> MethodConfig:
    """Inject a method into ``visual``, mark what trains, and return the resolved config."""
    config = make_config(method) if isinstance(method, str) else method
    _, resolved = _resolved(visual, config, num_classes)
    inject(visual, resolved, num_classes)
    mark_trainable(visual, resolved)
    return resolved


@torch.no_grad()
def merge_lora(visual: nn.Module) -> int:
    """Fold every block's LoRA deltas into its attention weights, in place: ``W <- W + (alpha/r) B A``
    for the q/k/v slices of ``in_proj_weight`` and for ``out_proj.weight``, then drop the LoRA
    modules (the block then runs as a plain open_clip block). The merged weights are exactly
    those :meth:`PeftBlock._merged_attention` builds for evaluation, so logits are unchanged
    up to float rounding. Returns the number of blocks merged (0 for a tower without LoRA)."""
    merged = 0
    for block in getattr(visual.transformer, "resblocks", []):
        if not isinstance(block, PeftBlock) or block.lora is None:
            continue
        attn, lora, d = block.attn, block.lora, block.attn.embed_dim
        weight = attn.in_proj_weight
        for k, t in enumerate("qkv"):
            if t in lora:
                weight[k * d : (k + 1) * d] += lora[t].delta_weight().to(weight.dtype)
        if "out" in lora:
            w_out = attn.out_proj.weight
            w_out += lora["out"].delta_weight().to(w_out.dtype)
        block.lora = None
        merged += 1
    return merged
