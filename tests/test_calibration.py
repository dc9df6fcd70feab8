"""Calibration (issue 13): ECE / Brier / NLL against independent references, temperature
scaling's invariants, and ``--calibrate temperature`` in a run (fitted on validation only)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from click.testing import CliRunner
from fixtures_cache import make_feature_cache
from sklearn.metrics import brier_score_loss, log_loss

from featcache.cache import open_cache
from featcache.calibration import brier, ece, fit_temperature, nll, probabilities, reliability_bins
from featcache.cli import main
from featcache.errors import FeatcacheError
from featcache.heads.cached import Predictor
from featcache.metrics import compute_metrics, summarize
from featcache.pipelines import train_head
from featcache.runs import load_checkpoint


def _logits(n: int = 4000, C: int = 5, seed: int = 0, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``[n, C]`` and labels drawn from softmax(logits): a calibrated predictor,
    whose logits times ``scale`` are over- (scale > 1) or under-confident."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.0, (n, C))
    p = probabilities(z)
    y = np.array([rng.choice(C, p=row) for row in p])
    return z * scale, y


def test_ece_of_a_perfectly_calibrated_predictor_is_about_zero() -> None:
    rng = np.random.default_rng(1)
    n = 200_000
    conf = rng.uniform(0.5, 1.0, n)  # top-label probability of a binary predictor
    y = np.where(rng.uniform(size=n) < conf, 0, 1)  # right with probability = confidence
    logits = np.log(np.stack([conf, 1 - conf], 1))
    assert ece(y, logits) < 0.005
    always_wrong = np.log(np.stack([np.full(n, 0.9), np.full(n, 0.1)], 1))
    assert ece(np.ones(n, dtype=int), always_wrong) == pytest.approx(0.9)


def test_ece_matches_the_hand_formula_with_15_bins() -> None:
    z, y = _logits(n=997, seed=2, scale=2.5)
    p = probabilities(z)
    conf, correct = p.max(1), p.argmax(1) == y
    total = 0.0
    for m in range(15):  # bin m: confidence in (m/15, (m+1)/15]
        lo, hi = m / 15, (m + 1) / 15
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            total += in_bin.sum() / len(y) * abs(correct[in_bin].mean() - conf[in_bin].mean())
    assert ece(y, z) == pytest.approx(total, abs=1e-12)
    assert reliability_bins(y, p)["count"].sum() == len(y)


def test_brier_and_nll_match_scikit_learn() -> None:
    z, y = _logits(n=500, C=2, seed=3, scale=3.0)
    p = probabilities(z)
    # multi-class Brier over two classes = 2 × sklearn's binary Brier of the positive class
    assert brier(y, z) == pytest.approx(2 * brier_score_loss(y, p[:, 1]), rel=1e-10)
    z5, y5 = _logits(n=500, C=5, seed=4, scale=1.7)
    assert nll(y5, z5) == pytest.approx(log_loss(y5, probabilities(z5), labels=range(5)), rel=1e-8)
    onehot = np.eye(5)[y5]
    assert brier(y5, z5) == pytest.approx(((probabilities(z5) - onehot) ** 2).sum(1).mean(), rel=1e-12)


def test_temperature_scaling_keeps_argmax_and_lowers_validation_nll() -> None:
    z, y = _logits(n=3000, seed=5, scale=3.0)  # over-confident by a factor 3
    t = fit_temperature(y, z)
    assert t == pytest.approx(3.0, rel=0.1)  # recovers the factor
    assert nll(y, z, t) < nll(y, z) and ece(y, z, temperature=t) < ece(y, z)
    assert np.array_equal(probabilities(z, t).argmax(1), z.argmax(1))
    calibrated, yc = _logits(n=3000, seed=6)
    tc = fit_temperature(yc, calibrated)
    assert nll(yc, calibrated, tc) <= nll(yc, calibrated)  # never worse than T = 1
    assert tc == pytest.approx(1.0, rel=0.1)


def test_compute_metrics_and_summary_carry_calibration() -> None:
    z, y = _logits(n=200, seed=7)
    m = compute_metrics(y, z, num_classes=5)
    assert m["ece"] == pytest.approx(ece(y, z)) and m["nll"] == pytest.approx(nll(y, z))
    assert m["brier"] == pytest.approx(brier(y, z))
    s = summarize([{**m, "seed": 0}, {**compute_metrics(y, 2 * z, num_classes=5), "seed": 1}])
    for key in ("ece", "brier", "nll"):
        assert math.isfinite(s[key]) and s[f"{key}_std"] > 0


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_feature_cache(tmp_path_factory.mktemp("calib") / "c.h5", num_classes=4,
                              counts=[80, 60, 40, 30], dim=8, test_per_class=10, seed=3)


def test_calibrate_temperature_is_fitted_on_validation_rows_only(cache: Path, tmp_path: Path) -> None:
    base = dict(cache=str(cache), head="linear", seeds=(0, 1), epochs=8, val_fraction=0.25)
    plain = train_head.run(train_head.TrainHeadConfig(**base, out=str(tmp_path / "plain")))
    res = train_head.run(train_head.TrainHeadConfig(**base, calibrate="temperature",
                                                    out=str(tmp_path / "cal")))
    m, config = res.metrics, json.loads((res.out_dir / "config.json").read_text())
    assert m["acc"] == plain.metrics["acc"]  # argmax unchanged
    assert m["ece_before"] == pytest.approx(plain.metrics["ece"])
    assert config["validation"] == "carved" and config["validation_use"] == ["temperature"]
    assert (res.out_dir / "reliability.png").is_file()
    splits = pl.read_parquet(res.out_dir / "splits.parquet")
    opened = open_cache(str(cache))
    labels, feats = np.asarray(opened.labels), opened.features("standard", "embed")
    for seed_metrics in m["per_seed"]:
        seed = seed_metrics["seed"]
        t = seed_metrics["temperature"]
        assert config["temperature"][str(seed)] == t
        ckpt = load_checkpoint(res.out_dir / "checkpoints" / f"seed-{seed}.pt")
        assert ckpt["temperature"] == t
        # refit from the saved head on this seed's validation rows: the same T
        val = splits.filter((pl.col("seed") == seed) & (pl.col("split") == "val"))["row"].to_numpy().copy()
        logits = Predictor(ckpt["model"], torch.device("cpu"))(feats[val]).numpy()
        assert fit_temperature(labels[val], logits) == pytest.approx(t, rel=1e-6)
        assert seed_metrics["nll_before"] >= 0 and seed_metrics["ece_before"] >= 0


def test_calibrate_without_validation_split_is_refused(cache: Path, tmp_path: Path) -> None:
    with pytest.raises(FeatcacheError, match="--val-fraction"):
        train_head.run(train_head.TrainHeadConfig(cache=str(cache), head="linear", epochs=1,
                                                  calibrate="temperature", out=str(tmp_path / "x")))
    res = CliRunner().invoke(main, ["train-head", "--cache", str(cache), "--epochs", "1",
                                    "--calibrate", "temperature", "--out", str(tmp_path / "y")])
    assert res.exit_code == 2 and "never on" in res.output and "--val-fraction" in res.output
    assert not (tmp_path / "y" / "metrics.json").exists()


def test_every_run_reports_calibration_and_a_reliability_diagram(cache: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["train-head", "--cache", str(cache), "--head", "cosine",
                                    "--epochs", "2", "--seeds", "0,1", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    for key in ("ece", "brier", "nll"):
        assert m[key] is not None and m[f"{key}_std"] is not None
        assert all(key in s for s in m["per_seed"])
    assert (tmp_path / "r" / "reliability.png").stat().st_size > 1000
    table = pl.read_parquet(tmp_path / "r" / "metrics.parquet")
    assert {"ece", "brier", "nll"} <= set(table.columns)
