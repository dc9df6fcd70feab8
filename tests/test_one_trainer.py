"""The one batched trainer's optimiser choice: AdamW, step decay, ``steps`` and ``drop_last``.

``train_members`` serves every head, TFA-LT, the grid and the MedMNIST probes
(``tests/test_bench_medmnist.py`` checks the probes against torch.optim.AdamW + StepLR). Here:
AdamW on any head equals ``torch.optim.AdamW`` member by member, joint training equals training
alone also when members end at different steps, ``drop_last`` batches are torch's, and the
checkpoint hook sees the weights of a shorter run.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from featcache.errors import FeatcacheError
from featcache.heads.base import HeadContext, MemberSpec, build_head
from featcache.heads.training import batch_rows, train_members

N, D, C = 90, 10, 3


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (N,), generator=gen)
    x = torch.randn(C, D, generator=gen)[labels] + torch.randn(N, D, generator=gen)
    return x, labels


def _adamw(**over: object) -> MemberSpec:
    base = dict(optimizer="adamw", lr=0.01, weight_decay=0.05, schedule="step", lr_decay=0.5,
                decay_every=4, batch_size=16, drop_last=True, steps=11)
    return MemberSpec(**{**base, **over})


def test_adamw_on_a_linear_head_equals_torch_adamw_with_steplr() -> None:
    x, labels = _data()
    pool = torch.arange(N)
    spec = _adamw()
    head = build_head("linear", HeadContext(D, C), [spec])
    lin = torch.nn.Linear(D, C)
    with torch.no_grad():
        lin.weight.copy_(head.weight[0])
        lin.bias.copy_(head.bias[0])
    rows = list(batch_rows(spec, labels, pool, C))  # the batches train_members draws
    train_members(head, x, labels, [pool], progress=False)
    opt = torch.optim.AdamW(lin.parameters(), lr=0.01, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
    assert len(rows) == 11 and all(len(r) == 16 for r in rows)
    for r in rows:
        loss = F.cross_entropy(lin(x[r]), labels[r])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    torch.testing.assert_close(head.weight[0].detach(), lin.weight.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(head.bias[0].detach(), lin.bias.detach(), rtol=1e-5, atol=1e-6)


def test_drop_last_epochs_are_permutations_cut_by_torchs_batch_sampler() -> None:
    _, labels = _data()
    pool = torch.arange(5, 55)  # 50 rows, batch 16: 3 batches an epoch, 2 rows dropped
    spec = _adamw(steps=0, epochs=2)
    rows = list(batch_rows(spec, labels, pool, C))
    gen = spec.generator("sample")
    expect = []
    for _ in range(2):
        perm = torch.randperm(50, generator=gen).tolist()
        expect += [pool[b] for b in torch.utils.data.BatchSampler(perm, 16, drop_last=True)]
    assert len(rows) == 6
    for got, want in zip(rows, expect, strict=True):
        assert torch.equal(got, want)
    with pytest.raises(FeatcacheError, match="drop_last with batch_size=64"):
        list(batch_rows(_adamw(batch_size=64), labels, pool, C))


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_members_that_end_at_different_steps_equal_training_alone(optimizer: str) -> None:
    x, labels = _data(1)
    pools = [torch.arange(N), torch.arange(0, 40), torch.arange(N)]
    members = [_adamw(optimizer=optimizer, steps=5), _adamw(optimizer=optimizer, seed=3, steps=13, lr=0.03),
               _adamw(optimizer=optimizer, steps=0, epochs=2, drop_last=False, schedule="cosine")]
    joint = build_head("cosine", HeadContext(D, C), members)
    res = train_members(joint, x, labels, pools, progress=False)
    assert res.steps == [5, 13, 2 * 6]  # 90 rows / 16: 6 batches an epoch, the last partial
    for g, spec in enumerate(members):
        alone = build_head("cosine", HeadContext(D, C), [spec])
        train_members(alone, x, labels, [pools[g]], progress=False)
        torch.testing.assert_close(joint.weight[g], alone.weight[0], rtol=1e-5, atol=1e-6)


def test_checkpoint_hook_sees_the_weights_of_a_shorter_run() -> None:
    x, labels = _data(2)
    pool = torch.arange(N)
    seen = {}
    head = build_head("linear", HeadContext(D, C), [_adamw(steps=9)])
    train_members(head, x, labels, [pool], progress=False, checkpoint_at={4, 9},
                  on_checkpoint=lambda t, h: seen.__setitem__(t, h.weight.detach().clone()))
    assert sorted(seen) == [4, 9]
    short = build_head("linear", HeadContext(D, C), [_adamw(steps=4)])
    train_members(short, x, labels, [pool], progress=False)
    torch.testing.assert_close(seen[4], short.weight.detach(), rtol=0, atol=0)
    torch.testing.assert_close(seen[9], head.weight.detach(), rtol=0, atol=0)


def test_one_optimizer_per_batched_run_and_bad_knobs_are_refused() -> None:
    x, labels = _data()
    head = build_head("linear", HeadContext(D, C), [_adamw(), _adamw(optimizer="sgd")])
    with pytest.raises(FeatcacheError, match="share one optimizer; got adamw, sgd"):
        train_members(head, x, labels, [torch.arange(N)] * 2, progress=False)
    with pytest.raises(FeatcacheError, match="optimizer='adam' is invalid"):
        MemberSpec(optimizer="adam")
    with pytest.raises(FeatcacheError, match="lr_decay"):
        MemberSpec(lr_decay=0.0)


def test_train_head_cli_offers_the_optimizer_choice(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """``train-head --optimizer adamw --schedule step``: the run's config records it, the run's
    default name says it, and the trained weights are not SGD's."""
    import json

    from click.testing import CliRunner
    from fixtures_cache import make_feature_cache

    from featcache.cli import main

    cache = make_feature_cache(tmp_path / "lt.h5", num_classes=3, counts=[60, 30, 20], dim=8,
                               test_per_class=5, seed=1)
    monkeypatch.chdir(tmp_path)
    common = ["train-head", "--cache", str(cache), "--epochs", "3", "--seeds", "0", "--device", "cpu",
              "--lr", "0.01", "--quiet"]
    res = CliRunner().invoke(main, [*common, "--optimizer", "adamw", "--schedule", "step",
                                    "--lr-decay", "0.5", "--decay-every", "2"])
    assert res.exit_code == 0, res.output
    (run,) = [p for p in (tmp_path / "runs").iterdir() if "adamw" in p.name]
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["optimizer"], cfg["schedule"], cfg["lr_decay"], cfg["decay_every"]) == ("adamw", "step", 0.5, 2)
    sgd = CliRunner().invoke(main, [*common, "--out", "runs/sgd"])
    assert sgd.exit_code == 0, sgd.output
    a = torch.load(run / "checkpoints" / "seed-0.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "runs" / "sgd" / "checkpoints" / "seed-0.pt", weights_only=True)["model"]
    assert not torch.equal(a["head"]["state"]["weight"], b["head"]["state"]["weight"])
    bad = CliRunner().invoke(main, [*common, "--optimizer", "adam"])
    assert bad.exit_code != 0 and "adamw" in bad.output


def test_declared_choices_accept_any_case_and_run_the_declared_spelling(tmp_path) -> None:  # noqa: ANN001
    import json

    from click.testing import CliRunner
    from fixtures_cache import make_feature_cache

    from featcache.cli import main

    cache = make_feature_cache(tmp_path / "lt.h5", num_classes=3, counts=[40, 20, 15], dim=8,
                               test_per_class=5, seed=2)
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train-head", "--cache", str(cache), "--epochs", "1", "--seeds", "0",
                                    "--device", "cpu", "--optimizer", "AdamW", "--schedule", "Step",
                                    "--quiet", "--out", str(out)])
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["optimizer"], cfg["schedule"]) == ("adamw", "step")
