"""One cosine classifier and one text-initialisation step (featcache.lift) serve heads and LIFT."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from featcache.heads.base import HeadContext, MemberSpec, build_head
from featcache.heads.text import text_prototypes
from featcache.lift import CosineClassifier, cosine_logits, project_text, semantic_init_weights

G, B, C, D, E = 3, 5, 4, 6, 8


def test_cosine_head_and_lift_classifier_agree_with_the_formula_bit_for_bit() -> None:
    torch.manual_seed(0)
    x = torch.randn(G, B, D)
    head = build_head("cosine", HeadContext(D, C), [MemberSpec(seed=s, sigma=25.0) for s in range(G)])
    w = head.weight.detach().clone()
    # the formula these forwards computed before they shared featcache.lift.cosine_logits
    old = torch.bmm(F.normalize(x, dim=-1), F.normalize(w, dim=-1).transpose(1, 2)) * head.sigma[:, None, None]
    assert torch.equal(head(x), old)
    shared = head.forward_shared(x[0])
    old_shared = (F.normalize(x[0], dim=-1) @ F.normalize(w, dim=-1).reshape(G * C, D).T)
    assert torch.equal(shared, (old_shared.view(B, G, C).transpose(0, 1) * head.sigma[:, None, None]).contiguous())
    for g in range(G):  # the LIFT classifier with the same weights gives the same logits
        lift = CosineClassifier(D, C, scale=25.0)
        with torch.no_grad():
            lift.weight.copy_(w[g])
        got = lift(x[g])
        assert torch.equal(got, F.linear(F.normalize(x[g], dim=-1), F.normalize(w[g], dim=-1)) * 25.0)
        torch.testing.assert_close(got, head(x)[g], rtol=1e-6, atol=1e-5)
    assert torch.equal(cosine_logits(x[0], w[0], None), F.linear(F.normalize(x[0], dim=-1), F.normalize(w[0], dim=-1)))


def test_text_prototypes_for_cls_features_use_lifts_text_init() -> None:
    torch.manual_seed(1)
    text = F.normalize(torch.randn(2, C, E), dim=-1)  # [T, C, E]
    proj = torch.randn(D, E)  # [W, E]
    got = text_prototypes(text, ["a photo of a {}.", "x {}"], "a photo of a", projection=proj, kind="cls")
    unit = F.normalize(text[[0]].float().mean(0), dim=-1)  # [C, E]
    assert torch.equal(got, F.normalize(unit @ proj.T, dim=-1))  # the numbers from before
    assert torch.equal(got, project_text(unit, proj))
    lift = semantic_init_weights(text[0], proj)
    assert torch.equal(lift, project_text(F.normalize(text[0], dim=-1), proj))
    torch.testing.assert_close(got, lift)  # one template: heads' init equals LIFT's


def test_prototype_heads_score_through_the_one_cosine_classifier_bit_for_bit() -> None:
    """zeroshot, TFA-LT's ensembler and CLIP-Adapter (fixed unit prototypes) keep the numbers of
    the formula they computed before Head.prototype_logits routed them through cosine_logits."""
    torch.manual_seed(2)
    protos = F.normalize(torch.randn(G, C, D), dim=-1)
    ctx = HeadContext(D, C, prototypes=protos)
    head = build_head("zeroshot", ctx, [MemberSpec(seed=s, tau=0.01 * (s + 1)) for s in range(G)])
    x = torch.randn(G, B, D)
    old = torch.bmm(F.normalize(x, dim=-1), head.prototypes.transpose(1, 2)) * (1.0 / head.tau)[:, None, None]
    assert torch.equal(head(x), old)
    assert torch.equal(head.prototype_logits(x), old)
