"""Few-shot heads (issue 13) and head-declared knobs (issue 12, "Adding a component").

Each head's defining property: Tip-Adapter with α = 0 is zero-shot; CLAP with an infinite
penalty stays at zero-shot; k-NN with k = 1 returns the nearest training label; the MLP's
``hidden`` knob changes its parameters' shape and a grid over it equals each width alone;
every few-shot head trains and evaluates through ``train-head``; text heads refuse a cache
without text features.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import polars as pl
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from fixtures_cache import make_feature_cache

from featcache.cli import main
from featcache.errors import FeatcacheError
from featcache.heads import HEADS, HeadContext, MemberSpec, build_head, load_head
from featcache.heads.training import predict_logits, train_members
from featcache.metrics import METRIC_KEYS
from featcache.pipelines import grid, train_head

FEWSHOT = ["knn", "tip-adapter", "tip-adapter-f", "clip-adapter", "lp++", "clap", "taskres", "mlp"]
C, D = 4, 8


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    path = tmp_path_factory.mktemp("fewshot") / "lt.h5"
    return make_feature_cache(path, num_classes=C, counts=[60, 40, 30, 24], dim=D,
                              test_per_class=8, noise=0.5, seed=11)


@pytest.fixture(scope="module")
def no_text_cache(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    path = tmp_path_factory.mktemp("fewshot") / "vision.h5"
    return make_feature_cache(path, num_classes=C, counts=[60, 40, 30, 24], dim=D,
                              test_per_class=8, with_text=False, seed=12)


def _data(n: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, HeadContext]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % C
    means = torch.randn(C, D, generator=gen)
    x = means[labels] + 0.7 * torch.randn(n, D, generator=gen)
    protos = F.normalize(means + 0.3 * torch.randn(C, D, generator=gen), dim=-1)
    cm = F.normalize(torch.stack([F.normalize(x[labels == c], dim=-1).mean(0) for c in range(C)]), dim=-1)
    return x, labels, HeadContext(D, C, prototypes=protos, class_means=cm)


def _spec(head: str, **options: object) -> MemberSpec:
    return MemberSpec(tau=0.05, epochs=5, batch_size=16, lr=0.5,
                      head_options=HEADS.get(head).parse_options(options))


def test_tip_adapter_with_alpha_zero_equals_zero_shot() -> None:
    x, labels, ctx = _data()
    pool = [torch.arange(labels.numel())]
    zs = build_head("zeroshot", ctx, [_spec("zeroshot")])
    q = torch.randn(1, 30, D, generator=torch.Generator().manual_seed(3))
    for name in ("tip-adapter", "tip-adapter-f"):
        off = build_head(name, ctx, [_spec(name, alpha=0.0)])
        train_members(off, x, labels, pool)  # tip-adapter-f: keys move, α = 0 ignores them
        torch.testing.assert_close(predict_logits(off, q), predict_logits(zs, q))
        on = build_head(name, ctx, [_spec(name, alpha=1.0)])
        train_members(on, x, labels, pool)
        assert not torch.allclose(predict_logits(on, q), predict_logits(zs, q))


def test_tip_adapter_is_equation_six() -> None:
    x, labels, ctx = _data()
    head = build_head("tip-adapter", ctx, [_spec("tip-adapter", alpha=2.0, beta=3.0)])
    train_members(head, x, labels, [torch.arange(labels.numel())])
    q = torch.randn(10, D)
    f, K = F.normalize(q, dim=-1), F.normalize(x, dim=-1)
    want = f @ ctx.prototypes.T / 0.05 + 2.0 * torch.exp(-3.0 * (1 - f @ K.T)) @ F.one_hot(labels, C).float()
    torch.testing.assert_close(predict_logits(head, q[None])[0], want, rtol=1e-5, atol=1e-5)


def test_clap_with_infinite_penalty_stays_at_zero_shot() -> None:
    x, labels, ctx = _data()
    pool = [torch.arange(labels.numel())]
    zs = build_head("zeroshot", ctx, [_spec("zeroshot")])
    q = torch.randn(1, 30, D, generator=torch.Generator().manual_seed(4))
    frozen = build_head("clap", ctx, [_spec("clap", penalty_scale=math.inf)])
    train_members(frozen, x, labels, pool)
    torch.testing.assert_close(predict_logits(frozen, q), predict_logits(zs, q))
    free = build_head("clap", ctx, [_spec("clap", penalty_scale=0.0)])
    train_members(free, x, labels, pool)
    assert not torch.allclose(predict_logits(free, q), predict_logits(zs, q))
    # the class-adaptive multipliers: each class's mean zero-shot probability on its rows
    p = (F.normalize(x, dim=-1) @ ctx.prototypes.T / 0.05).softmax(-1)[torch.arange(labels.numel()), labels]
    want = torch.stack([p[labels == c].mean() for c in range(C)])
    torch.testing.assert_close(free.penalty[0], want / C)  # the penalty is a mean over classes


def test_clap_penalty_pulls_weights_towards_text() -> None:
    x, labels, ctx = _data()
    pool = [torch.arange(labels.numel())]
    dist = []
    for scale in (0.0, 5.0):
        head = build_head("clap", ctx, [_spec("clap", penalty_scale=scale)])
        train_members(head, x, labels, pool)
        dist.append((head.weight[0] - ctx.prototypes).norm().item())
    assert dist[1] < dist[0]


def test_knn_with_k_one_returns_the_nearest_training_label() -> None:
    x, labels, ctx = _data(seed=1)
    pools = [torch.arange(0, 40), torch.arange(8, 48)]  # two members, different pools
    head = build_head("knn", ctx, [_spec("knn", k=1), _spec("knn", k=1)])
    train_members(head, x, labels, pools)
    q = torch.randn(25, D, generator=torch.Generator().manual_seed(9))
    pred = predict_logits(head, q).argmax(-1)  # [2, 25]
    for g, pool in enumerate(pools):
        sim = F.normalize(q, dim=-1) @ F.normalize(x[pool], dim=-1).T
        assert torch.equal(pred[g], labels[pool][sim.argmax(1)])
    # the stored rows survive a checkpoint (their shape comes from the data)
    again = load_head(head.checkpoint())
    torch.testing.assert_close(predict_logits(again, q), predict_logits(head, q))


def test_knn_votes_are_weighted_by_exp_cos_over_t() -> None:
    x, labels, ctx = _data(seed=2)
    head = build_head("knn", ctx, [_spec("knn", k=5, temperature=0.1)])
    train_members(head, x, labels, [torch.arange(labels.numel())])
    q = torch.randn(7, D)
    sim = F.normalize(q, dim=-1) @ F.normalize(x, dim=-1).T
    top, idx = sim.topk(5, dim=1)
    votes = torch.zeros(7, C).scatter_add_(1, labels[idx], torch.exp(top / 0.1))
    want = votes / votes.sum(1, keepdim=True)
    torch.testing.assert_close(predict_logits(head, q[None])[0].exp(), want, rtol=1e-5, atol=1e-6)


def test_mlp_width_knob_changes_parameter_shapes() -> None:
    _, _, ctx = _data()
    for hidden in (3, 12):
        head = build_head("mlp", ctx, [_spec("mlp", hidden=hidden)] * 2)
        assert head.weight.shape == (2, hidden, D) and head.out_weight.shape == (2, C, hidden)
    assert build_head("mlp", ctx, [_spec("mlp")]).weight.shape[1] == 256  # the default
    with pytest.raises(FeatcacheError, match="share it"):
        build_head("mlp", ctx, [_spec("mlp", hidden=3), _spec("mlp", hidden=4)])


def test_head_options_are_parsed_against_the_heads_knobs() -> None:
    mlp = HEADS.get("mlp")
    assert mlp.parse_options({"hidden": "64"}) == (("hidden", 64),)
    with pytest.raises(FeatcacheError, match="Did you mean 'hidden'"):
        mlp.parse_options({"hiden": "64"})
    with pytest.raises(FeatcacheError, match="expects an integer"):
        mlp.parse_options({"hidden": "wide"})
    with pytest.raises(FeatcacheError, match="hidden=0 is invalid"):
        mlp.parse_options({"hidden": 0})
    with pytest.raises(FeatcacheError, match="has no knob"):
        HEADS.get("linear").parse_options({"hidden": 3})
    with pytest.raises(FeatcacheError, match="k=0 is invalid"):
        HEADS.get("knn").parse_options({"k": "0"})
    with pytest.raises(FeatcacheError, match="temperature=nan is invalid"):
        HEADS.get("knn").parse_options({"temperature": "nan"})
    with pytest.raises(FeatcacheError, match="beta=inf is invalid"):
        HEADS.get("tip-adapter").parse_options({"beta": "inf"})
    assert HEADS.get("clap").parse_options({"penalty_scale": "inf"}) == (("penalty_scale", math.inf),)
    # every declared knob has help text and a source
    for name in HEADS.names():
        for f in HEADS.get(name).knob_fields():
            assert f.metadata.get("help") and f.metadata.get("source"), (name, f.name)


@pytest.mark.parametrize("name", FEWSHOT)
def test_every_fewshot_head_runs_through_train_head(cache, tmp_path, name) -> None:  # noqa: ANN001
    out = tmp_path / name
    args = ["train-head", "--cache", str(cache), "--head", name, "--seeds", "0,1", "--epochs", "2",
            "--batch-size", "32", "--device", "cpu", "--out", str(out)]
    if name == "mlp":
        args += ["--head-option", "hidden=16"]
    if name == "knn":
        args += ["--head-option", "k=3", "--head-option", "temperature=0.2"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    config = json.loads((out / "config.json").read_text())
    assert config["head"] == name
    want = {f.name: f.default for f in HEADS.get(name).knob_fields()}
    want |= {"mlp": {"hidden": 16}, "knn": {"k": 3, "temperature": 0.2}}.get(name, {})
    assert config["head_options"] == want
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["acc"] <= 1.0 and metrics["acc"] > 1.0 / C  # better than chance


def test_head_option_typo_fails_on_the_command_line(cache, tmp_path) -> None:  # noqa: ANN001
    res = CliRunner().invoke(main, ["train-head", "--cache", str(cache), "--head", "mlp",
                                    "--head-option", "hiden=8", "--out", str(tmp_path / "x")])
    assert res.exit_code != 0 and "Did you mean 'hidden'" in res.output


@pytest.mark.parametrize("name", [n for n in HEADS.names() if HEADS.get(n).needs_text])
def test_text_heads_refuse_a_cache_without_text(no_text_cache, tmp_path, name) -> None:  # noqa: ANN001
    cfg = train_head.TrainHeadConfig(cache=str(no_text_cache), head=name, seeds=(0,), epochs=1,
                                     device="cpu", out=str(tmp_path / name))
    with pytest.raises(FeatcacheError, match="text features"):
        train_head.run(cfg)
    assert not (tmp_path / name / "config.json").exists()


def test_heads_that_need_no_text_run_on_a_cache_without_text(no_text_cache, tmp_path) -> None:  # noqa: ANN001
    for name in ("knn", "mlp"):
        cfg = train_head.TrainHeadConfig(cache=str(no_text_cache), head=name, seeds=(0,),
                                         epochs=1, device="cpu", out=str(tmp_path / name))
        assert train_head.run(cfg).metrics["acc"] > 1.0 / C


def test_grid_over_mlp_width_equals_each_width_alone(cache, tmp_path) -> None:  # noqa: ANN001
    base = train_head.TrainHeadConfig(cache=str(cache), head="mlp", epochs=3, device="cpu",
                                      seeds=(0,), val_fraction=0.2, batch_size=32)
    spec = grid.make_grid(base, ["hidden=4,16", "lr=0.05,0.2"], out=str(tmp_path / "grid"))
    assert len({grid._group_key(c) for c in spec.configs}) == 2  # one head per width
    res = grid.run(spec)
    assert set(res.table["hidden"].to_list()) == {4, 16}
    for i, cfg in enumerate(spec.configs):
        alone = train_head.run(replace(cfg, out=str(tmp_path / f"alone-{i}"))).metrics
        for seed_row in alone["per_seed"]:
            row = res.table.filter((pl.col("config") == i) & (pl.col("seed") == seed_row["seed"]))
            assert row["hidden"][0] == dict(cfg.head_options)["hidden"]
            for k in METRIC_KEYS:
                got, want = row[f"test_{k}"][0], seed_row[k]
                if want is None or (isinstance(want, float) and math.isnan(want)):
                    assert got is None
                else:
                    assert got == pytest.approx(want, abs=1e-6), (i, k)


def test_grid_over_a_per_member_head_knob_trains_one_head(cache, tmp_path) -> None:  # noqa: ANN001
    base = train_head.TrainHeadConfig(cache=str(cache), head="tip-adapter", device="cpu",
                                      seeds=(0,), val_fraction=0.2)
    spec = grid.make_grid(base, ["alpha=0,1,2", "beta=1,5.5"], out=str(tmp_path / "g"))
    assert len({grid._group_key(c) for c in spec.configs}) == 1  # α, β: members of one head
    res = grid.run(spec)
    assert res.table.height == 6 and set(res.table["beta"].to_list()) == {1.0, 5.5}
    config = json.loads((tmp_path / "g" / "config.json").read_text())
    assert config["grid"] == {"alpha": [0.0, 1.0, 2.0], "beta": [1.0, 5.5]}
    assert config["head_options"] == {"alpha": 1.0, "beta": 5.5}  # the base, resolved
    sel = spec.configs[res.selected]
    assert config["selected_config"]["alpha"] == dict(sel.head_options)["alpha"]


def test_grid_refuses_unknown_head_knobs_with_a_hint(cache) -> None:  # noqa: ANN001
    base = train_head.TrainHeadConfig(cache=str(cache), head="mlp", device="cpu", seeds=(0,),
                                      val_fraction=0.2)
    with pytest.raises(FeatcacheError, match="Did you mean 'hidden'.*Knobs of head 'mlp': hidden"):
        grid.make_grid(base, ["hiden=4,8"])
    with pytest.raises(FeatcacheError, match="by its name"):
        grid.make_grid(base, ["head_options=x"])
    with pytest.raises(FeatcacheError, match="hidden=0 is invalid"):
        grid.make_grid(base, ["hidden=0,4"])


def test_lp_pp_starts_from_centroids_and_its_alpha_init() -> None:
    x, labels, ctx = _data(seed=3)
    head = build_head("lp++", ctx, [_spec("lp++")])
    head.attach_data(x, labels, [torch.arange(labels.numel())])
    f = F.normalize(x, dim=-1)
    cent = torch.stack([f[labels == c].mean(0) for c in range(C)])
    torch.testing.assert_close(head.visual[0], cent)
    torch.testing.assert_close(head.text_scale[0], torch.full((C,), 250 * (cent @ ctx.prototypes.T).mean()))
    q = torch.randn(5, D)
    want = F.normalize(q, dim=-1) @ (cent + head.text_scale[0, :, None] * ctx.prototypes).T
    torch.testing.assert_close(predict_logits(head, q[None])[0], want, rtol=1e-5, atol=1e-5)
