"""``featcache grid``: joint training equals training alone, selection on validation only,
the run-directory contract, heatmaps, bad input before anything runs, and the CLI."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import polars as pl
import pytest
import torch
from click.testing import CliRunner
from fixtures_cache import make_feature_cache

from featcache.cli import main
from featcache.errors import FeatcacheError
from featcache.heads import tfa_lt_stages
from featcache.metrics import METRIC_KEYS
from featcache.pipelines import grid, tfa_lt, train_head


@pytest.fixture(scope="module")
def lt_cache(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """6 long-tailed classes (tfa-lt protocol: 12 test rows per class)."""
    path = tmp_path_factory.mktemp("grid") / "lt.h5"
    return make_feature_cache(path, num_classes=6, counts=[200, 90, 50, 30, 26, 24], dim=16,
                              test_per_class=12, noise=0.5, seed=3)


@pytest.fixture(scope="module")
def official_cache(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """Official train/val/test source splits (val rows do not depend on labels)."""
    path = tmp_path_factory.mktemp("grid") / "official.h5"
    return make_feature_cache(path, num_classes=5, counts=[150, 80, 50, 40, 30], dim=16,
                              split_mode="official", noise=0.7, seed=4)


def _base(cache, **kw) -> train_head.TrainHeadConfig:  # noqa: ANN001
    return train_head.TrainHeadConfig(cache=str(cache), **({"epochs": 3, "device": "cpu",
                                      "seeds": (0, 1), "val_fraction": 0.2} | kw))


def _alone(cfg, out) -> dict:  # noqa: ANN001
    """Train one configuration by itself (the train-head / TFA-LT pipeline)."""
    runner = tfa_lt.run if isinstance(cfg, tfa_lt.TfaLtConfig) else train_head.run
    return runner(replace(cfg, out=str(out))).metrics


def _state(run_dir, seed: int, key: str = "head") -> dict:  # noqa: ANN001
    ck = torch.load(run_dir / "checkpoints" / f"seed-{seed}.pt", weights_only=True)
    return ck["model"][key]["state"]


@pytest.mark.slow
@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_joint_training_equals_each_configuration_alone(lt_cache, tmp_path, head) -> None:  # noqa: ANN001
    # lr × weight decay share batches (one gather, one product); epochs 2 vs 3 makes members
    # sit out; batch sizes 32 vs 64 make separate batch streams; losses differ per member.
    params = ["lr=0.05,0.5", "weight_decay=0,0.01", "epochs=2,3", "batch_size=32,64", "loss=ce,la"]
    spec = grid.make_grid(_base(lt_cache, head=head), params, out=str(tmp_path / "grid"))
    res = grid.run(spec)
    table = res.table
    assert table.height == 32 * 2
    picks = {res.selected, 0, 31, 13}
    for i in picks:
        metrics = _alone(spec.configs[i], tmp_path / f"alone-{i}")
        for seed_row in metrics["per_seed"]:
            row = table.filter((pl.col("config") == i) & (pl.col("seed") == seed_row["seed"]))
            for k in METRIC_KEYS:
                got, want = row[f"test_{k}"][0], seed_row[k]
                if want is None or (isinstance(want, float) and math.isnan(want)):
                    assert got is None
                else:
                    assert got == pytest.approx(want, abs=1e-9), (i, k)
    # the selected configuration's saved weights equal its weights trained alone
    for seed in (0, 1):
        joint, alone = _state(tmp_path / "grid", seed), _state(tmp_path / f"alone-{res.selected}", seed)
        for name in joint:
            torch.testing.assert_close(joint[name], alone[name], rtol=1e-5, atol=1e-6)


def test_tfa_lt_grid_equals_each_configuration_alone(lt_cache, tmp_path) -> None:  # noqa: ANN001
    base = tfa_lt.TfaLtConfig(cache=str(lt_cache), ensemble="logit", epochs=2, ensemble_epochs=2,
                              device="cpu", seeds=(0,), val_fraction=0.2)
    spec = grid.make_grid(base, ["lr=0.05,0.2", "ensemble_lr=0.01,0.1", "gamma=0,2"],
                          out=str(tmp_path / "grid"))
    res = grid.run(spec)
    assert res.table.height == 8
    for i in (res.selected, 5):
        metrics = _alone(spec.configs[i], tmp_path / f"alone-{i}")
        row = res.table.filter(pl.col("config") == i)
        for k in ("acc", "balanced_acc", "macro_f1", "auc"):
            assert row[f"test_{k}"][0] == pytest.approx(metrics[k], abs=1e-9), (i, k)
    joint = _state(tmp_path / "grid", 0, "ensembler")
    alone = _state(tmp_path / f"alone-{res.selected}", 0, "ensembler")
    for name in joint:
        torch.testing.assert_close(joint[name], alone[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", [
    pytest.param(dict(ensemble="logit"), id="logit"),
    pytest.param(dict(ensemble="feature"), id="feature", marks=pytest.mark.slow),
    pytest.param(dict(ensemble="logit", adapters=False), id="no-adapters"),
    pytest.param(dict(ensemble="mean"), id="mean", marks=pytest.mark.slow),
])
def test_one_configuration_grid_is_the_tfa_lt_run(lt_cache, tmp_path, variant) -> None:  # noqa: ANN001
    """Both train TFA-LT through heads/tfa_lt_stages.train_tfa_lt: a grid of one configuration
    saves the very weights (torch.equal), loss curves and test figures of tfa_lt.run."""
    base = tfa_lt.TfaLtConfig(cache=str(lt_cache), epochs=2, ensemble_epochs=2, device="cpu",
                              seeds=(0, 1), val_fraction=0.2, **variant)
    grid.run(grid.make_grid(base, ["lr=0.1"], out=str(tmp_path / "grid")))
    alone = tfa_lt.run(replace(base, out=str(tmp_path / "alone")))
    joint = json.loads((tmp_path / "grid" / "metrics.json").read_text())
    for got, want in zip(joint["per_seed"], alone.metrics["per_seed"], strict=True):
        assert got["seed"] == want["seed"]
        for k in ("stage1_epoch_loss_wrs", "stage1_epoch_loss_rus", "stage2_epoch_loss",
                  "acc", "balanced_acc", "macro_f1", "many_acc", "few_acc"):
            assert got.get(k) == want.get(k), (want["seed"], k)
    for seed in (0, 1):
        a, b = (torch.load(d / "checkpoints" / f"seed-{seed}.pt", weights_only=True)["model"]
                for d in (tmp_path / "grid", tmp_path / "alone"))
        assert a["combine"] == b["combine"] and (a["ensembler"] is None) == (b["ensembler"] is None)
        for part in ("branches", "ensembler"):
            if a[part] is not None:
                assert a[part]["state"].keys() == b[part]["state"].keys()
                for name, t in a[part]["state"].items():
                    assert torch.equal(t, b[part]["state"][name]), (seed, part, name)


def test_precision_is_a_fixed_setting_or_a_grid_axis(lt_cache, tmp_path) -> None:  # noqa: ANN001
    # gridded: fp32 and bf16 train as separate groups, each equal to its TFA-LT run alone
    base = tfa_lt.TfaLtConfig(cache=str(lt_cache), ensemble="logit", epochs=2, ensemble_epochs=2,
                              device="cpu", seeds=(0,), val_fraction=0.2)
    spec = grid.make_grid(base, ["precision=fp32,bf16"], out=str(tmp_path / "grid"))
    res = grid.run(spec)
    assert res.table["precision"].to_list() == ["fp32", "bf16"]
    for i in (0, 1):
        metrics = _alone(spec.configs[i], tmp_path / f"alone-{i}")
        row = res.table.filter(pl.col("config") == i)
        for k in ("acc", "balanced_acc", "auc"):
            assert row[f"test_{k}"][0] == pytest.approx(metrics[k], abs=1e-9), (i, k)
    # fixed: the CLI's --precision reaches every configuration and config.json
    out = tmp_path / "cli"
    r = CliRunner().invoke(main, ["grid", "--cache", str(lt_cache), "--head", "linear",
                                  "--precision", "bf16", "--param", "lr=0.05,0.5", "--seeds", "0",
                                  "--epochs", "2", "--device", "cpu", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "config.json").read_text())["precision"] == "bf16"
    assert pl.read_parquet(out / "metrics.parquet")["precision"].to_list() == ["bf16", "bf16"]


def test_selection_reads_validation_never_test(official_cache, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """Scrambling the test labels changes every test figure but not the selection."""
    spec = grid.make_grid(_base(official_cache, epochs=4), ["lr=0.01,0.1,1.0", "loss=ce,la"],
                          out=str(tmp_path / "clean"))
    clean = grid.run(spec)
    real_load = grid.load_data

    def scrambled_test_labels(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        data = real_load(*args, **kwargs)
        labels = data.cache.labels.copy()
        test = np.flatnonzero(np.asarray(data.cache.splits) == "test")
        labels[test] = (labels[test] + 1) % data.num_classes  # every test label wrong
        data.cache.labels = labels
        return data

    monkeypatch.setattr(grid, "load_data", scrambled_test_labels)
    spec2 = grid.make_grid(_base(official_cache, epochs=4), ["lr=0.01,0.1,1.0", "loss=ce,la"],
                           out=str(tmp_path / "scrambled"))
    scrambled = grid.run(spec2)
    assert scrambled.selected == clean.selected
    cols = [f"val_{k}" for k in METRIC_KEYS]
    assert scrambled.table.select(cols).equals(clean.table.select(cols))
    assert not scrambled.table["test_acc"].equals(clean.table["test_acc"])
    # and the choice is the best mean validation figure, whatever test says
    means = clean.table.group_by("config").agg(pl.col("val_balanced_acc").mean()).sort("config")
    assert clean.selected == int(np.argmax(means["val_balanced_acc"].to_numpy()))
    assert clean.summary["config"][0] == clean.selected


def test_output_contract_tables_and_heatmaps(lt_cache, tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "run"
    spec = grid.make_grid(_base(lt_cache), ["lr=0.05,0.5", "weight_decay=0,0.001", "gamma=1,2"],
                          out=str(out))
    res = grid.run(spec)
    for name in ("config.json", "metrics.json", "metrics.parquet", "metrics.csv", "summary.parquet",
                 "summary.csv", "predictions.parquet", "splits.parquet", "checkpoints/seed-0.pt",
                 "heatmap_lr__weight_decay.png", "heatmap_lr__gamma.png",
                 "heatmap_weight_decay__gamma.png"):
        assert (out / name).exists(), name
    assert (out / "heatmap_lr__gamma.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((out / "metrics.json").read_text())
    for k in METRIC_KEYS:
        assert 0 <= doc[k] <= 1 and f"{k}_std" in doc, k
    assert [s["seed"] for s in doc["per_seed"]] == [0, 1]
    sel = res.table.filter(pl.col("config") == res.selected)
    assert doc["acc"] == pytest.approx(sel["test_acc"].mean())
    assert doc["val"]["balanced_acc"] == pytest.approx(sel["val_balanced_acc"].mean())
    assert doc["selected_config"]["lr"] == spec.configs[res.selected].lr
    table = pl.read_parquet(out / "metrics.parquet")
    assert table.height == 8 * 2
    assert table.select("config", "seed").unique().height == 16
    for col in ("lr", "weight_decay", "gamma", "momentum", "epochs", "batch_size", "tau",
                *(f"{p}_{k}" for p in ("val", "test") for k in METRIC_KEYS)):
        assert col in table.columns, col
    assert pl.read_csv(out / "metrics.csv").height == 16
    config = json.loads((out / "config.json").read_text())
    assert config["grid"] == {"lr": [0.05, 0.5], "weight_decay": [0.0, 0.001], "gamma": [1.0, 2.0]}
    assert config["selected"] == res.selected
    # any two columns can be plotted, a missing one is named
    grid.plot_heatmap(table, "momentum", "lr", tmp_path / "any.png")
    assert (tmp_path / "any.png").exists()
    with pytest.raises(FeatcacheError, match="Did you mean 'gamma'"):
        grid.plot_heatmap(table, "gama", "lr", tmp_path / "bad.png")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (["weight_decy=0,1"], "Unknown knob 'weight_decy'. Did you mean 'weight_decay'?"),
        (["lr=0.1,fast"], "Knob 'lr' expects a number, got 'fast'"),
        (["epochs=10,2.5"], "Knob 'epochs' expects an integer, got '2.5'"),
        (["lr=0.1", "lr=0.2"], "Knob 'lr' is given twice"),
        ([], "The grid is empty"),
        (["lr="], "empty value"),
        (["lr"], "expects NAME=V1,V2"),
        (["seeds=0,1"], "cannot be gridded: seeds are set once"),
        (["loss=ce,focl"], "Unknown loss 'focl'. Did you mean 'focal'?"),
        (["lr=-1,0.1"], r"\(lr=-1.0\) is invalid"),
        (["tau=none,0.05"], None),  # tau accepts none: valid
    ],
)
def test_bad_grids_fail_before_anything_runs(lt_cache, params, message, monkeypatch) -> None:  # noqa: ANN001
    def no_training(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("training started")

    monkeypatch.setattr(grid, "load_data", no_training)
    if message is None:
        assert len(grid.make_grid(_base(lt_cache), params).configs) == 2
        return
    with pytest.raises(FeatcacheError, match=message):
        grid.run(grid.make_grid(_base(lt_cache), params))


def test_grid_needs_validation_rows(lt_cache) -> None:  # noqa: ANN001
    with pytest.raises(FeatcacheError, match="--val-fraction"):
        grid.run(grid.make_grid(_base(lt_cache, val_fraction=0.0), ["lr=0.1,1"]))


def test_cli_end_to_end(lt_cache, tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "cli"
    res = CliRunner().invoke(main, ["grid", "--cache", str(lt_cache), "--head", "linear",
                                    "--loss", "la", "--param", "lr=0.05,0.5",
                                    "--param", "weight-decay=0,0.001", "--seeds", "0,1",
                                    "--epochs", "2", "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert str(out) in res.output and "Selected configuration" in res.output
    config = json.loads((out / "config.json").read_text())
    assert config["loss"] == "la" and config["epochs"] == 2 and config["val_fraction"] == 0.2
    assert pl.read_parquet(out / "metrics.parquet").height == 8
    assert (out / "heatmap_lr__weight_decay.png").exists()
    tfa = CliRunner().invoke(main, ["grid", "--cache", str(lt_cache), "--ensemble", "logit",
                                    "--param", "ensemble_lr=0.01,0.1", "--seeds", "0",
                                    "--epochs", "1", "--ensemble-epochs", "1", "--device", "cpu",
                                    "--out", str(tmp_path / "tfa")])
    assert tfa.exit_code == 0, tfa.output
    bad = [
        (["--param", "weight_decy=0,1"], "Did you mean 'weight_decay'?"),
        (["--param", "lr=0.1", "--lr", "0.2"], "given both as --lr and as --param lr"),
        (["--ensemble", "logit", "--sampler", "wrs", "--param", "lr=0.1"],
         "--sampler is not an option of TFA-LT"),
    ]
    for args, message in bad:
        r = CliRunner().invoke(main, ["grid", "--cache", str(lt_cache), "--device", "cpu", *args])
        assert r.exit_code == 2 and message in r.output, (args, r.output)


def test_grid_over_stage_two_knobs_trains_stage_one_once(lt_cache, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """A grid over focal γ (stage II), ensemble_lr and ensemble_epochs has one distinct stage I
    per seed (WRS + RUS): two adapters per seed are trained, once, whatever the grid size."""
    calls: list[tuple[str, int]] = []
    real = tfa_lt_stages.train_members

    def counting(head, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append((head.name, head.num_members))
        return real(head, *args, **kwargs)

    monkeypatch.setattr(tfa_lt_stages, "train_members", counting)  # TFA-LT's stages' home
    base = tfa_lt.TfaLtConfig(cache=str(lt_cache), ensemble="logit", epochs=1, ensemble_epochs=1,
                              device="cpu", seeds=(0, 1), val_fraction=0.2)
    spec = grid.make_grid(base, ["gamma=0,1,2", "ensemble_lr=0.01,0.1"], out=str(tmp_path / "g"))
    grid.run(spec)
    assert calls == [("adapter", 2 * 2), ("ensemble-logit", 6 * 2)], calls


def test_an_optimizer_axis_trains_each_optimizer_as_its_own_head(lt_cache, tmp_path) -> None:  # noqa: ANN001
    """``--param optimizer=sgd,adamw``: one batched run holds one optimizer state, so the grid
    trains the two as separate heads; each equals its configuration trained alone."""
    base = _base(lt_cache, schedule="step", lr_decay=0.5, decay_every=5, lr=0.05, seeds=(0,))
    spec = grid.make_grid(base, ["optimizer=sgd,adamw", "lr=0.01,0.05"], out=str(tmp_path / "grid"))
    assert sorted({c.optimizer for c in spec.configs}) == ["adamw", "sgd"]
    assert len({grid._group_key(c) for c in spec.configs}) == 2
    res = grid.run(spec)
    adamw = next(i for i, c in enumerate(spec.configs) if c.optimizer == "adamw")
    sgd = next(i for i, c in enumerate(spec.configs) if c.optimizer == "sgd")
    for i in (sgd, adamw):  # one configuration of each head
        metrics = _alone(spec.configs[i], tmp_path / f"alone-{i}")
        row = res.table.filter((pl.col("config") == i) & (pl.col("seed") == 0))
        assert row["test_acc"][0] == pytest.approx(metrics["per_seed"][0]["acc"], abs=1e-9)
    cfg = json.loads((tmp_path / f"alone-{adamw}" / "config.json").read_text())
    assert (cfg["optimizer"], cfg["schedule"], cfg["lr_decay"], cfg["decay_every"]) == ("adamw", "step", 0.5, 5)
