"""TFA-LT and train-head end to end on synthetic caches: behaviour, the run-directory
contract, prediction on another cache, reproduce/report, determinism and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
import torch
from click.testing import CliRunner
from fixtures_cache import TTE_VIEWS, make_feature_cache

from featcache.cli import main
from featcache.errors import CacheError, FeatcacheError
from featcache.heads import cached
from featcache.metrics import METRIC_KEYS
from featcache.pipelines import predict, tfa_lt, train_head
from featcache.pipelines.reproduce import ReproduceConfig

FAST = dict(epochs=4, device="cpu", seeds=(0,))


@pytest.fixture(scope="module")
def lt_cache(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """Long-tailed, few classes learnable: 6 classes, 20 test rows each, train 380 … 4."""
    path = tmp_path_factory.mktemp("lt") / "lt.h5"
    return make_feature_cache(path, num_classes=6, counts=[400, 150, 60, 30, 26, 24], dim=24,
                              test_per_class=20, noise=0.35, seed=1,
                              views=("standard", *TTE_VIEWS),
                              groups={"many": ["c0", "c1"], "medium": ["c2"], "few": ["c3", "c4", "c5"]})


def test_tfa_lt_and_la_raise_few_class_accuracy_above_ce(lt_cache, tmp_path) -> None:  # noqa: ANN001
    """CE is the linear probe trained with cross-entropy (the TFA-LT paper's CE baseline)."""
    common = dict(cache=str(lt_cache), epochs=10, device="cpu", seeds=(0, 1))
    few = {}
    for name, head, loss in [("linear-ce", "linear", "ce"), ("linear-la", "linear", "la")]:
        cfg = train_head.TrainHeadConfig(head=head, loss=loss, out=str(tmp_path / name),
                                         **(common | {"epochs": 30}))
        few[name] = train_head.run(cfg).metrics["few_acc"]
    cfg = tfa_lt.TfaLtConfig(ensemble="logit", ensemble_epochs=5, out=str(tmp_path / "tfa"), **common)
    few["tfa-lt"] = tfa_lt.run(cfg).metrics["few_acc"]
    assert few["linear-la"] > few["linear-ce"] + 0.15, few
    assert few["tfa-lt"] > few["linear-ce"] + 0.15, few


def test_run_directory_matches_the_contract(lt_cache, tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train-head", "--cache", str(lt_cache), "--ensemble", "feature",
                                    "--epochs", "2", "--ensemble-epochs", "2", "--seeds", "0,1",
                                    "--device", "cpu", "--tte", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert str(out) in res.output
    for name in ("config.json", "metrics.json", "metrics.parquet", "predictions.parquet",
                 "splits.parquet", "confusion.png", "per_class_acc.png",
                 "checkpoints/seed-0.pt", "checkpoints/seed-1.pt"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert 0 <= metrics[key] <= 1 and metrics[f"{key}_std"] >= 0, key
    assert [m["seed"] for m in metrics["per_seed"]] == [0, 1]
    per_seed = np.array([m["acc"] for m in metrics["per_seed"]])
    assert metrics["acc"] == pytest.approx(per_seed.mean())
    config = json.loads((out / "config.json").read_text())
    assert config["protocol"] == "tfa-lt" and config["tau"] == pytest.approx(0.01)
    assert config["epochs"] == 2 and config["ensemble"] == "feature" and config["tte"] is True
    assert pl.read_parquet(out / "metrics.parquet").height == 2
    preds = pl.read_parquet(out / "predictions.parquet")
    assert preds.height == 2 * 6 * 20 and {"seed", "row", "id", "label", "pred", "scores"} <= set(preds.columns)
    splits = pl.read_parquet(out / "splits.parquet")
    test0 = splits.filter((pl.col("seed") == 0) & (pl.col("split") == "test"))["row"].sort().to_list()
    assert test0 == preds.filter(pl.col("seed") == 0)["row"].sort().to_list()
    ckpt = torch.load(out / "checkpoints/seed-0.pt", weights_only=True)
    assert ckpt["pipeline"] == "tfa-lt" and ckpt["config"]["ensemble"] == "feature"


def test_predict_applies_heads_and_refuses_another_model(lt_cache, tmp_path) -> None:  # noqa: ANN001
    run = tmp_path / "run"
    train_head.run(train_head.TrainHeadConfig(cache=str(lt_cache), head="adapter", out=str(run), **FAST))
    same = predict.predict_run(run, str(lt_cache), out=tmp_path / "p", device="cpu")
    assert 0 <= same.metrics["acc"] <= 1
    # predictions on the same rows agree with the run's own predictions
    own = pl.read_parquet(run / "predictions.parquet").sort("row")
    new = pl.read_parquet(tmp_path / "p" / "predictions.parquet")
    new = new.filter(pl.col("row").is_in(own["row"].to_list())).sort("row")
    assert own["pred"].to_list() == new["pred_index"].to_list()  # predict: class index beside the name
    other = make_feature_cache(tmp_path / "other.h5", num_classes=6, dim=24, model_tag="another-model")
    res = CliRunner().invoke(main, ["predict", "--run", str(run), "--cache", str(other), "--device", "cpu"])
    assert res.exit_code == 2 and "different model" in res.output


def test_trained_head_refuses_features_of_another_width(lt_cache, tmp_path) -> None:  # noqa: ANN001
    run = tmp_path / "run"
    train_head.run(train_head.TrainHeadConfig(cache=str(lt_cache), head="linear", out=str(run), **FAST))
    ckpt = torch.load(run / "checkpoints/seed-0.pt", weights_only=True)
    predictor = cached.Predictor(ckpt["model"], torch.device("cpu"))
    with pytest.raises(FeatcacheError, match="expects 24-d features but the cache gives 40-d"):
        predictor(torch.randn(3, 40))


def test_same_seed_twice_gives_the_same_run(lt_cache, tmp_path) -> None:  # noqa: ANN001
    runs = []
    for i in range(2):
        cfg = tfa_lt.TfaLtConfig(cache=str(lt_cache), ensemble="logit", ensemble_epochs=2,
                                 out=str(tmp_path / f"r{i}"), **FAST)
        runs.append(tfa_lt.run(cfg).metrics["per_seed"])
    assert runs[0] == runs[1]


def test_class_mean_prototypes_without_text_and_cls_features(tmp_path) -> None:  # noqa: ANN001
    cache = make_feature_cache(tmp_path / "notext.h5", num_classes=4, counts=[80, 40, 30, 25],
                               dim=8, cls_dim=12, with_text=False, test_per_class=5)
    with pytest.raises(FeatcacheError, match="--text-source class-mean"):
        train_head.run(train_head.TrainHeadConfig(cache=str(cache), head="zeroshot", text_source="prompts",
                                                  out=str(tmp_path / "a"), **FAST))
    res = tfa_lt.run(tfa_lt.TfaLtConfig(cache=str(cache), feature="cls", ensemble_epochs=2,
                                        out=str(tmp_path / "b"), **FAST))
    assert res.config["prototypes"] == "class-mean" and res.config["in_dim"] == 12
    assert not math.isnan(res.metrics["acc"])


def test_official_protocol_and_multi_label(tmp_path) -> None:  # noqa: ANN001
    cache = make_feature_cache(tmp_path / "ml.h5", num_classes=4, dim=8, split_mode="official",
                               multi_label=True, counts=[60, 50, 40, 30])
    with pytest.raises(FeatcacheError, match="bce"):
        train_head.run(train_head.TrainHeadConfig(cache=str(cache), out=str(tmp_path / "a"), **FAST))
    res = train_head.run(train_head.TrainHeadConfig(cache=str(cache), loss="bce", out=str(tmp_path / "b"), **FAST))
    assert res.config["protocol"] == "official" and 0 <= res.metrics["auc"] <= 1


@pytest.mark.slow
def test_reproduce_and_report(lt_cache, tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "repro"
    res = CliRunner().invoke(main, ["reproduce", "tfa-lt", "--cache", str(lt_cache), "--seeds", "0",
                                    "--epochs", "1", "--ensemble-epochs", "1", "--baseline-epochs",
                                    "1", "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 0, res.output
    md = (out / "tables.md").read_text()
    for row in ("CLIP zero-shot", "CLIP linear probe", "| Focal |", "TFA-LT (feature)",
                "Adapter only", "Ensembler only (logit)", "Adapter + ensembler (feature)"):
        assert row in md, row
    results = pl.read_parquet(out / "results.parquet")
    assert results.height == 12  # Table 1: 6 rows; Table 2: 6 rows, zero-shot first
    assert results.filter(pl.col("table") == "Table 2")["method"][0] == "CLIP zero-shot"
    config = json.loads((out / "config.json").read_text())
    for name, row in config["rows"].items():
        assert row["mapping"] and row["paper"] and row["run"], name
    assert config["rows"]["CLIP linear probe"]["settings"]["head"] == "logreg"
    only = config["rows"]["Adapter only"]["settings"]
    assert (only["pipeline"], only["head"], only["sampler"], only["epochs"]) == (
        "train-head", "adapter", "instance", 1)
    assert config["rows"]["CE"]["settings"]["epochs"] == 1  # --baseline-epochs
    assert config["rows"]["TFA-LT (logit)"]["settings"]["rus"] == "fixed"
    assert "| Adapter only | ONE residual adapter" in md
    rows = sorted(p for p in (out / "rows").iterdir())
    rep = CliRunner().invoke(main, ["report", *map(str, rows[:2]), "--out", str(tmp_path / "rep")])
    assert rep.exit_code == 0, rep.output
    assert pl.read_parquet(tmp_path / "rep.parquet").height == 2


def test_bad_input_gets_clear_errors(lt_cache, tmp_path) -> None:  # noqa: ANN001
    runner = CliRunner()
    res = runner.invoke(main, ["train-head", "--cache", str(lt_cache), "--head", "cosin"])
    assert res.exit_code == 2 and "Did you mean 'cosine'?" in res.output
    res = runner.invoke(main, ["train-head", "--cache", str(tmp_path / "missing.h5")])
    assert res.exit_code == 2 and "does not exist" in res.output
    res = runner.invoke(main, ["train-head", "--cache", str(lt_cache), "--test-per-class", "24"])
    assert res.exit_code == 2 and "class 'c5' has only 24" in res.output
    res = runner.invoke(main, ["train-head", "--cache", str(lt_cache), "--seeds", "0,x"])
    assert res.exit_code == 2 and "--seeds" in res.output
    plain = make_feature_cache(tmp_path / "plain.h5", num_classes=3, dim=8)
    with pytest.raises(CacheError, match="Extract with --tte"):
        train_head.run(train_head.TrainHeadConfig(cache=str(plain), tte=True, out=str(tmp_path / "x"), **FAST))


def test_bf16_reaches_fp32_accuracy_and_is_recorded(lt_cache, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr("featcache.heads.base.HALF_MIN_WEIGHT", 0)  # 24-d adapters: bf16 products anyway
    common = dict(cache=str(lt_cache), ensemble="logit", epochs=10, ensemble_epochs=5,
                  device="cpu", seeds=(0, 1))
    res = {p: tfa_lt.run(tfa_lt.TfaLtConfig(precision=p, out=str(tmp_path / p), **common))
           for p in ("fp32", "bf16")}
    m32, m16 = res["fp32"].metrics, res["bf16"].metrics
    assert m32["acc"] > 0.4, m32["acc"]  # well above chance (1/6)
    for key in ("acc", "balanced_acc"):  # 120 test rows per seed: 0.05 is 6 rows
        assert abs(m16[key] - m32[key]) <= 0.05, (key, m16[key], m32[key])
    config = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert config["precision"] == "bf16"
    w = {p: torch.load(tmp_path / p / "checkpoints/seed-0.pt", weights_only=True)["model"]
         ["branches"]["state"]["weight"] for p in res}
    assert w["bf16"].dtype == torch.float32  # fp32 master weights are what is saved
    rel = ((w["bf16"] - w["fp32"]).norm() / w["fp32"].norm()).item()
    assert 0 < rel < 0.05, rel


def test_precision_options_are_checked(lt_cache, tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(FeatcacheError, match=r"Unknown precision 'bf61'\. Did you mean 'bf16'\? "
                                             r"Choose from: bf16, fp16, fp32\."):
        tfa_lt.TfaLtConfig(cache=str(lt_cache), precision="bf61")
    with pytest.raises(FeatcacheError, match="fp16 needs a GPU"):
        train_head.TrainHeadConfig(cache=str(lt_cache), device="cpu", precision="fp16")
    res = CliRunner().invoke(main, ["train-head", "--cache", str(lt_cache), "--precision", "fp61"])
    assert res.exit_code == 2 and "'fp61' is not one of 'fp32', 'bf16', 'fp16'" in res.output
    out = tmp_path / "cli"
    res = CliRunner().invoke(main, ["train-head", "--cache", str(lt_cache), "--head", "adapter",
                                    "--epochs", "1", "--seeds", "0", "--device", "cpu",
                                    "--precision", "bf16", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "config.json").read_text())["precision"] == "bf16"
    repro = ReproduceConfig(cache=str(lt_cache), precision="bf16")
    assert repro.tfa("logit", out).precision == repro.head("CE", "adapter", "ce", out).precision == "bf16"


def test_reproduce_rows_map_to_the_papers_baselines(lt_cache, tmp_path) -> None:  # noqa: ANN001
    """Table 1's CE/Focal are the frozen-feature linear classifier (300 epochs), the linear
    probe is CLIP's logreg, Table 2's adapter-only row is ONE unbalanced adapter, Table 2
    starts with zero-shot (issue 11)."""
    from featcache.pipelines.reproduce import NO_TEXT, ROWS, TABLE1, TABLE2, ZERO_SHOT, has_text

    cfg = ReproduceConfig(cache=str(lt_cache))
    plan = cfg.plan(tmp_path)
    assert cfg.baseline_epochs == 300 and cfg.epochs == 200
    for name, loss in (("CE", "ce"), ("Focal", "focal")):
        row = plan[name]
        assert isinstance(row, train_head.TrainHeadConfig), name
        assert (row.head, row.loss, row.sampler, row.epochs) == ("linear", loss, "instance", 300)
    assert plan["CLIP linear probe"].head == "logreg"
    only = plan["Adapter only"]
    assert isinstance(only, train_head.TrainHeadConfig)  # not TFA-LT's mean of two adapters
    assert (only.head, only.loss, only.sampler, only.epochs) == ("adapter", "ce", "instance", 200)
    assert plan[ZERO_SHOT].head == "zeroshot" and plan[ZERO_SHOT].epochs == 0
    assert TABLE2[0] == ZERO_SHOT and TABLE1[0] == ZERO_SHOT
    assert plan["TFA-LT (logit)"].rus == "fixed" and plan["Ensembler only (logit)"].adapters is False
    assert all(r.mapping and r.paper for r in ROWS)
    # without text features, the row is not called CLIP zero-shot
    notext = make_feature_cache(tmp_path / "notext.h5", num_classes=4, counts=[80, 40, 30, 25],
                                dim=8, with_text=False, test_per_class=5)
    assert has_text(cfg) and not has_text(ReproduceConfig(cache=str(notext)))
    assert not has_text(ReproduceConfig(cache=str(lt_cache), text_source="class-mean"))
    plan = ReproduceConfig(cache=str(notext)).plan(tmp_path, text=False)
    assert ZERO_SHOT not in plan and plan[NO_TEXT].head == "zeroshot"


def test_rus_fixed_or_fresh(lt_cache) -> None:  # noqa: ANN001
    """``rus=fixed`` (default: the paper's generated set) trains every epoch on one subset;
    ``fresh`` draws a new one each epoch."""
    from featcache.heads import SAMPLERS

    labels = torch.tensor([0] * 50 + [1] * 20 + [2] * 8)
    for name, same in (("rus-fixed", True), ("rus", False)):
        sampler, gen = SAMPLERS.get(name)(labels, 3), torch.Generator().manual_seed(0)
        epochs = [sampler.draw(gen) for _ in range(3)]
        for e in epochs:
            assert torch.bincount(labels[e], minlength=3).tolist() == [8, 8, 8]
        sets = [sorted(e.tolist()) for e in epochs]
        assert (sets[0] == sets[1] == sets[2]) is same, name
        assert epochs[0].tolist() != epochs[1].tolist()  # reshuffled either way
    cfg = tfa_lt.TfaLtConfig(cache=str(lt_cache))
    assert cfg.rus == "fixed" and cfg.stage1(0, "rus", tau=0.01).sampler == "rus-fixed"
    fresh = tfa_lt.TfaLtConfig(cache=str(lt_cache), rus="fresh")
    assert fresh.stage1(0, "rus", tau=0.01).sampler == "rus"
    assert fresh.stage1(0, "wrs", tau=0.01) == cfg.stage1(0, "wrs", tau=0.01)
    with pytest.raises(FeatcacheError, match="Unknown rus 'fixd'"):
        tfa_lt.TfaLtConfig(cache=str(lt_cache), rus="fixd")


@pytest.mark.slow
def test_reproduce_without_text_names_the_zero_shot_row_honestly(tmp_path) -> None:  # noqa: ANN001
    from featcache.pipelines.reproduce import NO_TEXT, run

    cache = make_feature_cache(tmp_path / "notext.h5", num_classes=4, counts=[80, 40, 30, 25],
                               dim=8, with_text=False, test_per_class=5)
    out, frame = run(ReproduceConfig(cache=str(cache), seeds=(0,), epochs=1, ensemble_epochs=1,
                                     baseline_epochs=1, device="cpu", out=str(tmp_path / "r")))
    assert "CLIP zero-shot" not in frame["method"].to_list()
    assert frame.filter(pl.col("table") == "Table 2")["method"][0] == NO_TEXT
    md = (out / "tables.md").read_text()
    assert "CLIP zero-shot" not in md and "nearest-class-mean classifier" in md
    config = json.loads((out / "config.json").read_text())
    assert config["text_features"] is False and config["notes"]
    assert config["rows"][NO_TEXT]["settings"]["prototypes"] == "class-mean"
