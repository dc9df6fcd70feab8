"""Tests of the LIFT fine-tuning methods (featcache.peft) and LIFT's head/TTE helpers (featcache.lift).

Every registered method is tested automatically (the tests iterate ``METHODS``) on the tiny
random-weight open_clip ViT (2 blocks, width 64, 32x32 images).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from open_clip.transformer import ResidualAttentionBlock

from featcache.errors import FeatcacheError
from featcache.lift import (
    TTE_VIEWS,
    CosineClassifier,
    five_crop_boxes,
    five_crops,
    pre_projection_features,
    semantic_init_weights,
    tte_logits,
)
from featcache.models import load_backbone, text_features
from featcache.peft import (
    DEFAULT_METHOD,
    METHODS,
    AdapterConfig,
    AdaptFormerConfig,
    FullConfig,
    LoRAConfig,
    PeftBlock,
    VPTDeepConfig,
    VPTShallowConfig,
    apply_method,
    count_parameters,
    expected_trainable,
    inject,
    lift_bottleneck,
    make_config,
    mark_trainable,
    trainable_names,
    vit_dims,
)

NUM_CLASSES = 64  # LIFT's bottleneck / rank for the tiny 2-block ViT: 2^floor(log2(64/4)) = 16
VPT_METHODS = {"vpt-shallow", "vpt-deep"}
# Methods that train some of the model's own parameters; every other method trains only the
# modules it adds (and all of them), which is what a newly registered method is held to.
TRAINS_OWN = {
    "bitfit": lambda n: n.startswith("transformer.resblocks.") and n.endswith("bias"),
    "full": lambda n: n.startswith("transformer.resblocks."),
}


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return load_backbone("tiny-clip")


@pytest.fixture
def visual(backbone):
    """A fresh copy of the tiny image tower for each test (eval mode, frozen)."""
    return copy.deepcopy(backbone.visual)


@pytest.fixture(scope="module")
def images():
    return torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _prepare(visual, name: str, num_classes: int = NUM_CLASSES, **options):
    before = dict(visual.named_parameters())
    config = apply_method(visual, make_config(name, **options), num_classes)
    return before, config


# ---------------------------------------------------------------------------------- formula


@pytest.mark.parametrize(
    ("num_classes", "expected"),
    [(1000, 32), (365, 8), (8142, 256), (100, 4), (7, 1), (5, 1), (1, 1), (24, 1), (48, 2)],
)
def test_lift_bottleneck_values(num_classes, expected):
    assert lift_bottleneck(num_classes, 12) == expected


def test_lift_bottleneck_matches_float_formula():
    for layers in (1, 2, 12, 24):
        for k in range(1, 3000, 7):
            assert lift_bottleneck(k, layers) == 2 ** max(0, int(math.floor(math.log2(k / (2 * layers)))))
    with pytest.raises(FeatcacheError, match="num_classes"):
        lift_bottleneck(0, 12)


# --------------------------------------------------------------------------------- registry


def test_registry_holds_lift_methods():
    assert set(METHODS.names()) >= {
        "adaptformer", "bitfit", "vpt-shallow", "vpt-deep", "adapter", "lora", "full", "classifier",
    }
    assert DEFAULT_METHOD == "adaptformer"
    with pytest.raises(FeatcacheError, match="Did you mean 'adaptformer'"):
        make_config("adaptfromer")
    with pytest.raises(FeatcacheError, match="Did you mean 'rank'"):
        make_config("lora", rnak=4)


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("adaptformer", {"bottleneck": 0}, "bottleneck"),
        ("adaptformer", {"bottleneck": 2.5}, "bottleneck"),
        ("adaptformer", {"scale": float("nan")}, "scale"),
        ("adapter", {"positions": ("mlp", "ffn")}, "positions"),
        ("adapter", {"positions": ()}, "positions"),
        ("lora", {"rank": -1}, "rank"),
        ("lora", {"alpha": 0.0}, "alpha"),
        ("lora", {"targets": ("q", "x")}, "targets"),
        ("lora", {"targets": ("q", "q")}, "targets"),
        ("vpt-deep", {"prompt_length": 0}, "prompt_length"),
        ("full", {"scope": "blcks"}, "Did you mean 'blocks'"),
    ],
)
def test_configs_validate(name, options, match):
    with pytest.raises(FeatcacheError, match=match):
        make_config(name, **options)


def test_configs_are_frozen_and_normalise_sequences():
    config = make_config("adapter", positions=["attn", "mlp"])
    assert config.positions == ("attn", "mlp")
    with pytest.raises(AttributeError):
        config.bottleneck = 3  # type: ignore[misc]


def test_defaults_follow_lift(visual):
    dims = vit_dims(visual)
    assert AdaptFormerConfig().resolve(dims, 1000).bottleneck == lift_bottleneck(1000, 2)
    assert LoRAConfig().resolve(dims, 365).rank == lift_bottleneck(365, 2)
    assert LoRAConfig().targets == ("q", "v") and LoRAConfig().alpha == 1.0
    assert VPTShallowConfig().prompt_length == 10 == VPTDeepConfig().prompt_length
    assert AdapterConfig().positions == ("mlp",)
    assert FullConfig().scope == "blocks"


def test_non_vit_and_double_injection_are_refused(visual):
    with pytest.raises(FeatcacheError, match="VisionTransformer"):
        inject(torch.nn.Linear(3, 3), make_config("adaptformer"), NUM_CLASSES)
    inject(visual, make_config("adaptformer"), NUM_CLASSES)
    for name in ("lora", "vpt-deep"):
        with pytest.raises(FeatcacheError, match="already has a fine-tuning method"):
            inject(visual, make_config(name), NUM_CLASSES)


# ------------------------------------------------------------- every method, from the registry


@pytest.mark.parametrize("name", METHODS.names())
def test_marks_exactly_the_intended_parameters(visual, name):
    before, config = _prepare(visual, name)
    after = dict(visual.named_parameters())
    assert set(before) <= set(after), "injection must keep the model's own parameter names"
    assert all(after[n] is before[n] for n in before), "injection must not copy the model's weights"
    added = set(after) - set(before)
    own_rule = TRAINS_OWN.get(name, lambda n: False)
    expected = added | {n for n in before if own_rule(n)}
    assert set(trainable_names(visual)) == expected
    trainable, total = count_parameters(visual)
    assert trainable == expected_trainable(visual, config, NUM_CLASSES) == sum(
        after[n].numel() for n in expected
    )
    assert total == sum(p.numel() for p in before.values()) + sum(after[n].numel() for n in added)
    if name == "classifier":
        assert trainable == 0


@pytest.mark.parametrize("name", METHODS.names())
def test_starts_as_the_frozen_model(visual, images, name):
    # bit for bit (torch.equal), in eval mode without autograd (evaluation: PyTorch's fused
    # attention fast path) and in train mode with autograd (training); LoRA used to differ
    # by ~6e-7 in eval mode because its own attention could not take the fast path
    frozen = copy.deepcopy(visual)
    _prepare(visual, name)
    for train in (False, True):
        frozen.train(train)
        visual.train(train)
        with torch.set_grad_enabled(train):
            want, out = frozen(images), visual(images)  # [B, E]
        assert out.shape == want.shape
        if name in VPT_METHODS:
            assert not torch.allclose(out, want, atol=1e-3), "prompts must change the output"
        else:
            assert torch.equal(out, want), f"{name} (train={train}): max diff {(out - want).abs().max():.3g}"


def test_lora_merged_evaluation_equals_its_training_path(visual, images):
    # trained LoRA: the no-autograd path (merged weights through nn.MultiheadAttention) and
    # the autograd path (low-rank deltas) compute the same function
    inject(visual, LoRAConfig(rank=3, alpha=2.0, targets=("q", "k", "v", "out")), NUM_CLASSES)
    with torch.no_grad():
        for block in visual.transformer.resblocks:
            _randomise(block.lora)
    for train in (False, True):
        visual.train(train)
        with torch.no_grad():
            merged = visual(images)
        low_rank = visual(images).detach()
        torch.testing.assert_close(merged, low_rank, rtol=1e-5, atol=1e-5)


# every method but `classifier` (which trains nothing in the backbone: its own test above)
BACKBONE_METHODS = [name for name in METHODS.names() if name != "classifier"]


@pytest.mark.parametrize("name", BACKBONE_METHODS)
def test_sgd_steps_lower_the_loss_and_touch_only_trainable(visual, images, name):
    before, config = _prepare(visual, name)
    params = [p for p in visual.parameters() if p.requires_grad]
    assert params, f"'{name}' should train some backbone parameters"
    torch.manual_seed(0)
    labels = torch.randint(0, NUM_CLASSES, (images.shape[0],))
    head = CosineClassifier(vit_dims(visual).width, NUM_CLASSES).requires_grad_(False)
    start = {n: p.detach().clone() for n, p in visual.named_parameters()}
    optim = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    visual.train()
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(head(pre_projection_features(visual, images)), labels)
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1e-3, losses
    for n, p in visual.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p, start[n]), f"trainable {n} did not move"
        else:
            assert p.grad is None and torch.equal(p, start[n]), f"frozen {n} changed or got a grad"


@pytest.mark.parametrize("name", METHODS.names())
def test_bf16(visual, images, name):
    visual = visual.to(torch.bfloat16)
    x = images.to(torch.bfloat16)
    with torch.no_grad():
        frozen = visual(x)
    _prepare(visual, name)
    assert all(p.dtype == torch.bfloat16 for p in visual.parameters())
    out = visual(x)
    assert out.dtype == torch.bfloat16 and out.shape == frozen.shape
    if name not in VPT_METHODS:
        torch.testing.assert_close(out.detach(), frozen, rtol=2e-2, atol=2e-2)
    if any(p.requires_grad for p in visual.parameters()):
        out.float().square().mean().backward()
        assert any(p.grad is not None for p in visual.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", BACKBONE_METHODS)
def test_gradient_checkpointing_gives_the_same_gradients(visual, images, name):
    _prepare(visual, name)
    assert any(p.requires_grad for p in visual.parameters())
    checkpointed = copy.deepcopy(visual)
    checkpointed.set_grad_checkpointing(True)
    for model in (visual, checkpointed):
        model.train()
        model(images).square().sum().backward()
    grads = [(n, p.grad) for n, p in visual.named_parameters() if p.requires_grad]
    other = dict(checkpointed.named_parameters())
    for n, grad in grads:
        torch.testing.assert_close(other[n].grad, grad, rtol=1e-4, atol=1e-6, msg=n)


def test_mark_trainable_freezes_everything_else(visual):
    mark_trainable(visual, make_config("full"))
    assert count_parameters(visual)[0] == expected_trainable(visual, FullConfig(), NUM_CLASSES)
    mark_trainable(visual, make_config("full", scope="all"))
    trainable, total = count_parameters(visual)
    assert trainable == total == expected_trainable(visual, FullConfig(scope="all"), NUM_CLASSES)
    mark_trainable(visual, make_config("classifier"))
    assert count_parameters(visual)[0] == 0


# ------------------------------------------------------------------- each method, by hand


def _randomise(module: torch.nn.Module) -> None:
    """Give the (zero-initialised) added parameters random values so the methods act."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2 + (1.0 if p.ndim == 1 and p.numel() == 1 else 0.0))


@pytest.mark.parametrize("own_norm", [True, False])
def test_adaptformer_block_matches_formula(visual, own_norm):
    original = copy.deepcopy(visual.transformer.resblocks[0])
    inject(visual, AdaptFormerConfig(bottleneck=8, own_norm=own_norm), NUM_CLASSES)
    block = visual.transformer.resblocks[0]
    assert isinstance(block, PeftBlock) and isinstance(block, ResidualAttentionBlock)
    _randomise(block.adaptformer)
    x = torch.randn(3, 17, 64)
    branch = block.adaptformer
    with torch.no_grad():
        h = x + original.attention(original.ln_1(x))
        ln_prime = branch.norm if own_norm else original.ln_2
        expected = h + original.mlp(original.ln_2(h)) + branch.scale * branch.up(
            F.relu(branch.down(ln_prime(h)))
        )
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)
    assert branch.up.weight.shape == (64, 8) and branch.down.weight.shape == (8, 64)


def test_adaptformer_fixed_scale_is_not_trained(visual):
    _, config = _prepare(visual, "adaptformer", scale=0.5, learnable_scale=False)
    block = visual.transformer.resblocks[1]
    assert "scale" not in dict(block.adaptformer.named_parameters())
    assert float(block.adaptformer.scale) == 0.5
    assert count_parameters(visual)[0] == 2 * (2 * 64 * 16 + 16 + 64 + 2 * 64)


def test_adapter_placement_matches_formula(visual):
    original = copy.deepcopy(visual.transformer.resblocks[1])
    inject(visual, AdapterConfig(bottleneck=4, positions=("attn", "mlp")), NUM_CLASSES)
    block = visual.transformer.resblocks[1]
    _randomise(block.adapter_attn)
    _randomise(block.adapter_mlp)

    def adapter(module, h):
        return h + module.up(F.relu(module.down(module.norm(h))))

    x = torch.randn(2, 17, 64)
    with torch.no_grad():
        h = x + adapter(block.adapter_attn, original.attention(original.ln_1(x)))
        expected = h + adapter(block.adapter_mlp, original.mlp(original.ln_2(h)))
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_lora_equals_merged_weights(visual, images):
    merged = copy.deepcopy(visual)
    config = LoRAConfig(rank=3, alpha=6.0, targets=("q", "k", "v", "out"))
    inject(visual, config, NUM_CLASSES)
    with torch.no_grad():
        for block, target in zip(visual.transformer.resblocks, merged.transformer.resblocks, strict=True):
            _randomise(block.lora)
            delta = {t: (m.lora_b @ m.lora_a) * (6.0 / 3) for t, m in block.lora.items()}  # [d, d]
            target.attn.in_proj_weight += torch.cat([delta["q"], delta["k"], delta["v"]])
            target.attn.out_proj.weight += delta["out"]
        torch.testing.assert_close(visual(images), merged(images), rtol=1e-4, atol=1e-5)


def test_lora_init_bound_follows_lift(visual):
    inject(visual, LoRAConfig(rank=4), NUM_CLASSES)
    lora_q = visual.transformer.resblocks[0].lora["q"]
    assert lora_q.lora_a.abs().max() <= 1 / math.sqrt(4)
    assert lora_q.lora_a.abs().max() > 1 / math.sqrt(64)  # wider than peft's 1/sqrt(in_dim)
    assert torch.count_nonzero(lora_q.lora_b) == 0 and lora_q.scaling == 1 / 4


@pytest.mark.parametrize("deep", [False, True])
def test_vpt_equals_prompts_through_frozen_blocks(visual, images, deep):
    frozen = copy.deepcopy(visual)
    config = VPTDeepConfig(prompt_length=3) if deep else VPTShallowConfig(prompt_length=3)
    inject(visual, config, NUM_CLASSES)
    prompts = visual.transformer.prompts  # [L or 1, P, d]
    assert prompts.shape == ((2 if deep else 1), 3, 64)
    bound = math.sqrt(6.0 / (3 * 8 * 8 + 64))
    assert prompts.abs().max() <= bound
    with torch.no_grad():
        x = frozen._embeds(images)  # [B, T, d]
        tokens = x.shape[1]
        for i, block in enumerate(frozen.transformer.resblocks):
            if i == 0 or deep:
                x = torch.cat([x[:, :tokens], prompts[i].expand(x.shape[0], -1, -1)], dim=1)
            x = block(x)
        pooled, _ = frozen._pool(x[:, :tokens])
        expected = pooled @ frozen.proj
        torch.testing.assert_close(visual(images), expected, rtol=1e-5, atol=1e-5)
        # Tokens seen by pooling keep their count; the CLS output keeps its shape.
        assert visual.transformer(frozen._embeds(images)).shape == frozen._embeds(images).shape
        assert pre_projection_features(visual, images).shape == (images.shape[0], 64)


# ------------------------------------------------------------------------ head and features


def test_pre_projection_features_project_to_the_embedding(visual, images):
    with torch.no_grad():
        pre = pre_projection_features(visual, images)  # [B, W]
        torch.testing.assert_close(pre @ visual.proj, visual(images), rtol=1e-5, atol=1e-5)
    assert pre.shape == (images.shape[0], 64)


def test_cosine_classifier_is_scaled_cosine():
    head = CosineClassifier(16, 5)
    torch.testing.assert_close(head.weight.norm(dim=-1), torch.ones(5))
    feats = torch.randn(7, 16)
    expected = 25.0 * F.cosine_similarity(feats[:, None], head.weight[None], dim=-1)  # [B, C]
    torch.testing.assert_close(head(feats), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(FeatcacheError, match="width 16"):
        head(torch.randn(2, 8))


def test_cosine_classifier_stays_fp32_under_bf16_autocast():
    # σ = 25 logits in bf16 keep ~8 bits: the head (and so the loss) must see fp32 logits
    head = CosineClassifier(16, 1000)
    feats = torch.randn(4, 16).to(torch.bfloat16)  # a bf16 backbone's output
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(feats)
    assert logits.dtype == torch.float32
    want = 25.0 * F.normalize(feats.float(), dim=-1) @ F.normalize(head.weight, dim=-1).t()
    torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-5)
    assert logits[0].unique().numel() > 900  # bf16 logits would hold only a few hundred values


def test_semantic_init_from_text(backbone, visual):
    prompts = [f"a photo of a {c}." for c in ("nevus", "melanoma", "keratosis")]
    text = text_features(backbone, prompts, torch.device("cpu"))  # [C, E]
    proj = backbone.projection()  # [W, E]
    head = CosineClassifier(64, 3).init_from_text(text, proj)
    expected = F.normalize(F.normalize(text, dim=-1) @ proj.t(), dim=-1)  # [C, W]
    torch.testing.assert_close(head.weight.detach(), expected)
    torch.testing.assert_close(semantic_init_weights(text * 3.0, proj), expected)
    # The init aligns each class weight with its text embedding carried back by proj.
    scores = F.normalize(head.weight @ proj, dim=-1) @ text.t()  # [C, C]
    assert torch.equal(scores.argmax(dim=1), torch.arange(3))
    with pytest.raises(FeatcacheError, match="do not match"):
        semantic_init_weights(text, proj.t())
    with pytest.raises(FeatcacheError, match="this head is"):
        CosineClassifier(64, 4).init_from_text(text, proj)


# ------------------------------------------------------------------------------- TTE


@pytest.mark.parametrize(("height", "width"), [(56, 56), (56, 75), (81, 56)])
def test_five_crop_boxes_match_torchvision(height, width):
    images = torch.randn(2, 3, height, width)
    boxes = five_crop_boxes(height, width, 32)
    tl, tr, bl, br, center = TF.five_crop(images, [32, 32])
    reference = {"tte_tl": tl, "tte_tr": tr, "tte_bl": bl, "tte_br": br, "tte_c": center}
    crops = five_crops(images, 32)  # [B, 5, 3, 32, 32]
    assert tuple(boxes) == TTE_VIEWS
    for j, view in enumerate(TTE_VIEWS):
        assert torch.equal(crops[:, j], reference[view]), view
    assert boxes["tte_br"] == (height - 32, width - 32)
    assert boxes["tte_c"] == (round((height - 32) / 2), round((width - 32) / 2))
    with pytest.raises(FeatcacheError, match="Cannot cut"):
        five_crop_boxes(20, 40, 32)


def test_tte_averages_logits_of_the_five_crops(visual):
    head = CosineClassifier(64, 3)
    images = torch.randn(2, 3, 56, 70)  # shorter side S + 24 with S = 32

    def fn(x):
        return head(pre_projection_features(visual, x))

    with torch.no_grad():
        out = tte_logits(fn, images)  # [B, K]
        manual = torch.stack(
            [fn(images[..., t : t + 32, left : left + 32]) for t, left in five_crop_boxes(56, 70, 32).values()]
        ).mean(dim=0)
        torch.testing.assert_close(out, manual, rtol=1e-5, atol=1e-5)
        # Averaging logits is not averaging features: the two differ for a cosine head.
        crops = five_crops(images, 32)  # [B, 5, 3, S, S]
        feats = torch.stack([pre_projection_features(visual, crops[:, j]) for j in range(5)])
        assert not torch.allclose(out, head(feats.mean(dim=0)), atol=1e-4)
        # A dataset's FiveCrop output [B, 5, C, S, S] gives the same logits.
        stacked = torch.stack(TF.five_crop(images, [32, 32]), dim=1)
        torch.testing.assert_close(tte_logits(fn, stacked), out, rtol=1e-5, atol=1e-5)
    assert out.shape == (2, 3)
