"""Heads, losses, samplers and the batched trainer: invariants, and every registry entry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from featcache.errors import FeatcacheError
from featcache.heads import (
    HEADS,
    LOSSES,
    SAMPLERS,
    ClassPrior,
    HeadContext,
    MemberSpec,
    build_head,
    load_head,
    posthoc_adjust,
)
from featcache.heads.training import predict_logits, train_members

G, B, C, D = 2, 32, 5, 12


def _logits_labels(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(G, B, C, generator=gen) * 3, torch.randint(0, C, (G, B), generator=gen)


def _knobs(**over: float) -> dict[str, torch.Tensor]:
    base = {"gamma": 2.0, "la_tau": 1.0, "cb_beta": 0.9999} | over
    return {k: torch.full((G,), float(v)) for k, v in base.items()}


PRIOR = ClassPrior.from_counts(torch.tensor([[500.0, 100, 30, 10, 2]] * G))


def test_focal_gamma_zero_is_cross_entropy() -> None:
    logits, labels = _logits_labels()
    focal = LOSSES.get("focal")(logits, labels, _knobs(gamma=0.0), PRIOR)
    ce = F.cross_entropy(logits.reshape(-1, C), labels.reshape(-1), reduction="none").view(G, B)
    torch.testing.assert_close(focal, ce)
    assert not torch.allclose(LOSSES.get("focal")(logits, labels, _knobs(), PRIOR), ce)


def test_logit_adjusted_tau_zero_is_cross_entropy() -> None:
    logits, labels = _logits_labels(1)
    la = LOSSES.get("la")(logits, labels, _knobs(la_tau=0.0), PRIOR)
    torch.testing.assert_close(la, LOSSES.get("ce")(logits, labels, _knobs(), PRIOR))
    assert not torch.allclose(LOSSES.get("la")(logits, labels, _knobs(), PRIOR), la)


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_is_finite_and_has_gradients(name: str) -> None:
    logits, labels = _logits_labels(2)
    logits.requires_grad_(True)
    if name == "bce":
        labels = F.one_hot(labels, C)
    loss = LOSSES.get(name)(logits, labels, _knobs(), PRIOR)
    assert loss.shape == (G, B) and torch.isfinite(loss).all()
    loss.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def _long_tailed_labels() -> torch.Tensor:
    counts = [400, 120, 40, 12, 6]
    return torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])


def test_wrs_draws_classes_about_uniformly() -> None:
    labels = _long_tailed_labels()
    sampler = SAMPLERS.get("wrs")(labels, C)
    gen = torch.Generator().manual_seed(0)
    drawn = torch.cat([labels[sampler.draw(gen)] for _ in range(20)])
    freq = torch.bincount(drawn, minlength=C).float() / drawn.numel()
    assert torch.allclose(freq, torch.full((C,), 1 / C), atol=0.02), freq


def test_rus_gives_every_class_the_smallest_count_fresh_each_epoch() -> None:
    labels = _long_tailed_labels()
    sampler = SAMPLERS.get("rus")(labels, C)
    gen = torch.Generator().manual_seed(0)
    a, b = sampler.draw(gen), sampler.draw(gen)
    for idx in (a, b):
        assert idx.unique().numel() == idx.numel()  # without replacement
        assert torch.bincount(labels[idx], minlength=C).tolist() == [6] * C
    assert not torch.equal(a.sort().values, b.sort().values)


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_every_sampler_draws_valid_rows_deterministically(name: str) -> None:
    labels = _long_tailed_labels()
    sampler = SAMPLERS.get(name)(labels, C)
    a = sampler.draw(torch.Generator().manual_seed(3))
    b = sampler.draw(torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.numel() == sampler.epoch_length
    assert a.min() >= 0 and a.max() < labels.numel()


def _ctx(in_dim: int = D, *, protos_dim: int = D, seed: int = 0) -> HeadContext:
    gen = torch.Generator().manual_seed(seed)
    protos = F.normalize(torch.randn(G, C, protos_dim, generator=gen), dim=-1)
    means = F.normalize(torch.randn(G, C, in_dim, generator=gen), dim=-1)
    return HeadContext(in_dim, C, prototypes=protos, class_means=means)


def _head_ctx(name: str) -> HeadContext:
    if name == "ensemble-logit":
        return _ctx(2 * C)
    if name == "ensemble-feature":
        return _ctx(2 * D, protos_dim=D)
    return _ctx()


@pytest.mark.parametrize("name", HEADS.names())
def test_every_head_forwards_slices_saves_and_trains(name: str) -> None:
    ctx = _head_ctx(name)
    members = [MemberSpec(seed=0, epochs=2, batch_size=16, tau=0.1), MemberSpec(seed=1, epochs=2, batch_size=16, lr=0.05, tau=0.1)]
    head = build_head(name, ctx, members)
    x = torch.randn(G, B, ctx.in_dim, generator=torch.Generator().manual_seed(5))
    logits = head(x)
    assert logits.shape == (G, B, C) and torch.isfinite(logits).all()
    one = head.member(1)
    torch.testing.assert_close(one(x[1:]), logits[1:])
    again = load_head(head.checkpoint())
    torch.testing.assert_close(again(x), logits)
    if head.trainable:
        before = [p.detach().clone() for p in head.parameters()]
        inputs = torch.randn(64, ctx.in_dim, generator=torch.Generator().manual_seed(6))
        labels = torch.arange(64) % C
        train_members(head, inputs, labels, [torch.arange(64)] * G)
        assert any(not torch.equal(a, b) for a, b in zip(before, head.parameters(), strict=True))


def test_adapter_with_gate_fully_open_returns_its_input() -> None:
    head = build_head("adapter", _ctx(), [MemberSpec(tau=0.1)] * G)
    with torch.no_grad():
        head.gate.fill_(50.0)  # sigmoid(50) == 1.0 in float32
    x = torch.randn(G, B, D)
    assert torch.equal(head.features(x), x)
    torch.testing.assert_close(head(x), F.normalize(x, dim=-1) @ head.prototypes.transpose(1, 2) / 0.1)


def test_zeroshot_is_argmax_cosine_to_text() -> None:
    ctx = _ctx()
    head = build_head("zeroshot", ctx, [MemberSpec(tau=0.01)] * G)
    x = torch.randn(G, 100, D)
    cos = torch.einsum("gbd,gcd->gbc", F.normalize(x, dim=-1), ctx.prototypes)
    assert torch.equal(predict_logits(head, x).argmax(-1), cos.argmax(-1))


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = _long_tailed_labels()
    x = torch.randn(C, D, generator=gen)[labels] + 0.5 * torch.randn(labels.numel(), D, generator=gen)
    return x, labels


def test_joint_training_equals_training_each_member_alone() -> None:
    x, labels = _data()
    pool = torch.arange(labels.numel())
    members = [
        MemberSpec(seed=0, stream="wrs", sampler="wrs", epochs=3, batch_size=64, tau=0.1),
        MemberSpec(seed=0, stream="rus", sampler="rus", epochs=4, batch_size=64, tau=0.1,
                   lr=0.03, weight_decay=1e-3, loss="focal", gamma=1.0),
        MemberSpec(seed=7, stream="x", sampler="instance", epochs=2, batch_size=48, tau=0.05,
                   loss="la", momentum=0.5),
    ]
    ctx = HeadContext(D, C, prototypes=F.normalize(torch.randn(C, D), dim=-1))
    joint = build_head("adapter", ctx, members)
    train_members(joint, x, labels, [pool] * 3)
    for g, spec in enumerate(members):
        alone = build_head("adapter", ctx, [spec])
        train_members(alone, x, labels, [pool])
        for name, p in alone.named_parameters():
            torch.testing.assert_close(p[0], getattr(joint, name)[g], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_shared_batches_equal_one_gather_per_member(name: str) -> None:
    # members 0-2 draw the same batches (one stream, one product), 3 its own (other seed,
    # other loss), 4 the first stream again after it (not adjacent: its own run)
    x, labels = _data()
    pool = torch.arange(labels.numel())
    members = [
        MemberSpec(seed=0, epochs=3, batch_size=64, lr=lr, weight_decay=wd, sigma=5.0)
        for lr, wd in ((0.1, 5e-4), (0.03, 0.0), (0.3, 1e-3))
    ] + [MemberSpec(seed=1, epochs=2, batch_size=64, loss="focal", sampler="wrs", sigma=5.0),
         MemberSpec(seed=0, epochs=2, batch_size=64, sigma=5.0)]
    heads = [build_head(name, HeadContext(D, C), members) for _ in range(2)]
    losses = [train_members(h, x, labels, [pool] * len(members), share_batches=share).epoch_loss
              for h, share in zip(heads, (True, False), strict=True)]
    for a, b in zip(heads[0].parameters(), heads[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(*losses, strict=True):
        assert a == pytest.approx(b, rel=1e-5)


def test_same_seed_twice_gives_the_same_head() -> None:
    x, labels = _data()
    spec = MemberSpec(seed=3, sampler="wrs", epochs=2, batch_size=64)
    heads = []
    for _ in range(2):
        h = build_head("linear", HeadContext(D, C), [spec])
        train_members(h, x, labels, [torch.arange(labels.numel())])
        heads.append(h)
    assert torch.equal(heads[0].weight, heads[1].weight)
    other = build_head("linear", HeadContext(D, C), [spec.with_(seed=4)])
    assert not torch.equal(other.weight, heads[0].weight)


def test_unknown_names_suggest_the_nearest() -> None:
    with pytest.raises(FeatcacheError, match="Did you mean 'cosine'"):
        build_head("cosin", HeadContext(D, C), [MemberSpec()])
    with pytest.raises(FeatcacheError, match="Did you mean 'focal'"):
        LOSSES.get("focall")


def test_head_input_width_must_match_features() -> None:
    head = build_head("linear", HeadContext(D, C), [MemberSpec()])
    with pytest.raises(FeatcacheError, match=f"expects {D}-d features but got 7-d"):
        head(torch.randn(1, 4, 7))


def test_bad_member_knobs_are_refused() -> None:
    with pytest.raises(FeatcacheError, match="momentum"):
        MemberSpec(momentum=1.5)
    with pytest.raises(FeatcacheError, match="tau"):
        MemberSpec(tau=0.0)


def test_posthoc_adjustment_subtracts_the_scaled_log_prior() -> None:
    logits = torch.zeros(4, C)
    log_prior = PRIOR.log_prior[0]
    assert torch.equal(posthoc_adjust(logits, log_prior, 0.0), logits)
    adjusted = posthoc_adjust(logits, log_prior, 1.0)
    torch.testing.assert_close(adjusted, -log_prior.expand(4, C))
    assert adjusted.argmax(-1).eq(C - 1).all()  # the rarest class wins a tie


def _grads(head, x: torch.Tensor, labels: torch.Tensor, shared: bool = False) -> list[torch.Tensor]:  # noqa: ANN001
    logits = head.forward_shared(x) if shared else head(x)
    assert logits.dtype == torch.float32  # losses always see fp32 logits
    loss = F.cross_entropy(logits.reshape(-1, C), labels.reshape(-1))
    grads = torch.autograd.grad(loss, [p for p in head.parameters() if p.requires_grad])
    return [g.clone() for g in grads]  # weight gradients land in a buffer reused by each step


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])  # fp16 runs on the CPU here
@pytest.mark.parametrize("name", [n for n in HEADS.names() if HEADS.get(n).trainable])
def test_half_precision_products_give_fp32_gradients_close_to_fp32(name: str, dtype, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr("featcache.heads.base.HALF_MIN_WEIGHT", 0)  # these test heads are tiny
    ctx = _head_ctx(name)
    head = build_head(name, ctx, [MemberSpec(seed=0, tau=0.1), MemberSpec(seed=1, tau=0.1)])
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(G, 64, ctx.in_dim, generator=gen)
    labels = torch.randint(0, C, (G, 64), generator=gen)
    paths = [False] + ([True] if name in ("linear", "cosine") else [])
    for shared in paths:
        xs = x[0] if shared else x
        ref = _grads(head, xs, labels, shared)
        with head.matmul_precision(dtype):
            low = _grads(head, xs, labels, shared)
        assert head.matmul_dtype == torch.float32  # restored after the block
        tol = 0.02 if dtype == torch.bfloat16 else 0.004
        for a, b in zip(ref, low, strict=True):
            assert b.dtype == torch.float32 and a.shape == b.shape
            err = ((a - b).norm() / a.norm().clamp_min(1e-12)).item()
            assert err < tol, (shared, err)
        # the half path really ran: some gradient differs from fp32
        assert any(not torch.equal(a, b) for a, b in zip(ref, low, strict=True))


@pytest.mark.parametrize("name", ["adapter", "linear", "cosine"])
def test_bf16_training_reaches_fp32_accuracy(name: str, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr("featcache.heads.base.HALF_MIN_WEIGHT", 0)  # these test heads are tiny
    x, labels = _data(4)
    gen = torch.Generator().manual_seed(9)
    x = torch.cat([x, x]) + 0.8 * torch.randn(2 * x.shape[0], D, generator=gen)  # harder
    labels = torch.cat([labels, labels])
    n = labels.numel()
    perm = torch.randperm(n, generator=gen)
    train, test = perm[: n // 2], perm[n // 2 :]
    ctx = HeadContext(D, C, prototypes=F.normalize(torch.randn(C, D, generator=gen), dim=-1))
    spec = MemberSpec(seed=2, sampler="wrs", epochs=15, batch_size=64, tau=0.1, sigma=10.0, lr=0.05)
    acc, heads = {}, {}
    for precision in ("fp32", "bf16"):
        head = build_head(name, ctx, [spec])
        train_members(head, x, labels, [train], precision=precision)
        pred = predict_logits(head, x[test])[0].argmax(-1)
        acc[precision] = (pred == labels[test]).float().mean().item()
        heads[precision] = head
    assert acc["fp32"] > 0.5, acc  # the task is learnable, far above chance (0.2)
    assert abs(acc["bf16"] - acc["fp32"]) <= 0.03, acc
    w32, w16 = heads["fp32"].weight, heads["bf16"].weight
    assert w16.dtype == torch.float32  # fp32 master weights
    rel = ((w16 - w32).norm() / w32.norm()).item()
    assert 0 < rel < 0.05, rel  # bf16 really ran, and stayed close to the fp32 weights


def test_unknown_or_unsupported_precision_is_refused() -> None:
    x, labels = _data()
    head = build_head("linear", HeadContext(D, C), [MemberSpec(epochs=1)])
    with pytest.raises(FeatcacheError, match=r"Unknown precision 'bf61'\. Choose from: fp32, bf16, fp16"):
        train_members(head, x, labels, [torch.arange(labels.numel())], precision="bf61")
    with pytest.raises(FeatcacheError, match="fp16 needs a GPU; use fp32 or bf16 on the CPU"):
        train_members(head, x, labels, [torch.arange(labels.numel())], precision="fp16")


def test_small_weights_keep_fp32_products_under_bf16() -> None:
    # a 5 x 12 classifier is under HALF_MIN_WEIGHT: bf16 leaves it exactly fp32
    x, labels = _data()
    spec = MemberSpec(seed=1, epochs=2, batch_size=64)
    heads = [build_head("linear", HeadContext(D, C), [spec]) for _ in range(2)]
    for head, precision in zip(heads, ("fp32", "bf16"), strict=True):
        train_members(head, x, labels, [torch.arange(labels.numel())], precision=precision)
    assert torch.equal(heads[0].weight, heads[1].weight)


def _denormals_flushed() -> bool:
    """True while denormal float32 arithmetic is flushed to zero."""
    tiny = torch.tensor([1e-39], dtype=torch.float32)  # a denormal
    return bool((tiny * 1.0 == 0).item())


def test_cpu_training_settings_are_scoped_and_restored_on_error(monkeypatch) -> None:
    """The trainer's process-wide CPU settings (denormal flushing, glibc thresholds) hold only
    while it trains, and are restored afterwards, also when training fails."""
    from featcache.heads import training

    calls = []
    monkeypatch.setattr(training, "_mallopt", lambda trim, mmap: calls.append((trim, mmap)) or True)
    assert not _denormals_flushed()
    with training.cpu_training_mode():
        assert _denormals_flushed()
    assert not _denormals_flushed()
    with pytest.raises(RuntimeError, match="boom"), training.cpu_training_mode():
        raise RuntimeError("boom")
    assert not _denormals_flushed()
    default = training._GLIBC_DEFAULT_THRESHOLD
    assert calls[1] == (default, default) and calls[3] == (default, default)
    # and the trainer itself leaves nothing behind
    gen = torch.Generator().manual_seed(5)
    feats, labels = torch.randn(64, D, generator=gen), torch.randint(0, C, (64,), generator=gen)
    head = build_head("linear", HeadContext(in_dim=D, num_classes=C),
                      [MemberSpec(seed=0, epochs=1, batch_size=16)])
    train_members(head, feats, labels, [torch.arange(64)])
    assert not _denormals_flushed()
