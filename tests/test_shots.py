"""The K-shot protocol and the validation-free setting (issue 13): ``--shots K`` draws K
training images per class with the seed (saved with the run), ``grid --param shots=...``
draws the accuracy-vs-shots curve, ``--validation-free`` records ``validation: none`` and
gives ``logreg`` its fixed C."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from fixtures_cache import make_feature_cache
from sklearn.linear_model import LogisticRegression

from featcache.cache import open_cache
from featcache.cli import main
from featcache.errors import FeatcacheError
from featcache.heads.logreg import VALIDATION_FREE_C
from featcache.pipelines import grid, tfa_lt, train_head
from featcache.runs import load_checkpoint
from featcache.splits import draw_shots, make_split

C = 4


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # class 3 keeps 5 training rows after the 8 test rows: short of K = 8
    return make_feature_cache(tmp_path_factory.mktemp("shots") / "c.h5", num_classes=C,
                              counts=[60, 40, 30, 13], dim=8, test_per_class=8, seed=5)


def _train_counts(run_dir: Path, labels: np.ndarray) -> dict[int, np.ndarray]:
    splits = pl.read_parquet(run_dir / "splits.parquet").filter(pl.col("split") == "train")
    return {s: np.bincount(labels[g["row"].to_numpy()], minlength=C)
            for (s,), g in splits.group_by("seed")}


def test_draw_shots_takes_exactly_k_per_class_with_the_seed(cache: Path) -> None:
    c = open_cache(str(cache))
    split = make_split(c.labels, c.splits, c.descriptor, "tfa-lt", 0)
    a, short = draw_shots(split, c.labels, 4)
    assert np.bincount(c.labels[a.train], minlength=C).tolist() == [4] * C and short == {}
    assert set(a.train) <= set(split.train) and np.array_equal(a.test, split.test)
    again, _ = draw_shots(split, c.labels, 4)
    assert np.array_equal(a.train, again.train)  # same seed, same draw
    other, _ = draw_shots(make_split(c.labels, c.splits, c.descriptor, "tfa-lt", 1), c.labels, 4)
    assert not np.array_equal(a.train, other.train)
    b, short = draw_shots(split, c.labels, 8)
    assert short == {3: 5} and np.bincount(c.labels[b.train], minlength=C).tolist() == [8, 8, 8, 5]
    assert b.groups == split.groups  # many/medium/few of the full training distribution
    with pytest.raises(FeatcacheError, match="--shots"):
        draw_shots(split, c.labels, 0)


def test_train_head_shots_is_saved_and_the_same_for_every_head(cache: Path, tmp_path: Path) -> None:
    labels = np.asarray(open_cache(str(cache)).labels)
    base = dict(cache=str(cache), seeds=(0, 1), epochs=2, shots=8)
    lin = train_head.run(train_head.TrainHeadConfig(**base, head="linear", out=str(tmp_path / "lin")))
    cos = train_head.run(train_head.TrainHeadConfig(**base, head="cosine", out=str(tmp_path / "cos")))
    counts = _train_counts(lin.out_dir, labels)
    assert {s: v.tolist() for s, v in counts.items()} == {0: [8, 8, 8, 5], 1: [8, 8, 8, 5]}
    config = json.loads((lin.out_dir / "config.json").read_text())
    assert config["shots"] == 8 and config["shots_short"] == {"0": {"c3": 5}, "1": {"c3": 5}}
    a = pl.read_parquet(lin.out_dir / "splits.parquet").sort(["seed", "row"])
    b = pl.read_parquet(cos.out_dir / "splits.parquet").sort(["seed", "row"])
    assert a.equals(b)  # the draw depends on the seed only
    ck = load_checkpoint(lin.out_dir / "checkpoints" / "seed-0.pt")
    assert ck["train_counts"] == [8, 8, 8, 5]


def test_tfa_lt_takes_shots(cache: Path, tmp_path: Path) -> None:
    labels = np.asarray(open_cache(str(cache)).labels)
    res = tfa_lt.run(tfa_lt.TfaLtConfig(cache=str(cache), ensemble="logit", seeds=(0,), epochs=2,
                                        ensemble_epochs=2, shots=2, out=str(tmp_path / "tfa")))
    assert _train_counts(res.out_dir, labels)[0].tolist() == [2] * C
    assert json.loads((res.out_dir / "config.json").read_text())["shots"] == 2


def test_grid_over_shots_writes_the_accuracy_vs_shots_curve(cache: Path, tmp_path: Path) -> None:
    base = train_head.TrainHeadConfig(cache=str(cache), head="linear", seeds=(0, 1), epochs=2,
                                      val_fraction=0.25, plot_format="png,svg")
    spec = grid.make_grid(base, ["shots=1,2,4", "lr=0.05,0.1"], out=str(tmp_path / "g"))
    res = grid.run(spec)
    assert (res.out_dir / "accuracy_vs_shots.png").stat().st_size > 1000
    assert b"<svg" in (res.out_dir / "accuracy_vs_shots.svg").read_bytes()[:500]  # --plot-format
    curve = pl.read_csv(res.out_dir / "shots.csv")
    assert curve["shots"].to_list() == [1, 2, 4] and set(curve["method"]) == {"linear"}
    assert curve["acc_std"].is_not_null().all()
    assert [r["shots"] for r in res.metrics["shots_curve"]] == [1, 2, 4]
    table = pl.read_parquet(res.out_dir / "metrics.parquet")
    assert sorted(set(table["shots"].to_list())) == [1, 2, 4]
    assert (table.filter(pl.col("shots") == 2)["n_train"] == 2 * C).all()  # K per class, val apart


def test_validation_free_logreg_uses_its_fixed_c(cache: Path, tmp_path: Path) -> None:
    c = open_cache(str(cache))
    with pytest.raises(FeatcacheError, match="--validation-free"):  # 1 shot: nothing to carve
        train_head.run(train_head.TrainHeadConfig(cache=str(cache), head="logreg", seeds=(0,),
                                                  shots=1, out=str(tmp_path / "no")))
    res = train_head.run(train_head.TrainHeadConfig(cache=str(cache), head="logreg", seeds=(0,),
                                                    shots=4, validation_free=True,
                                                    out=str(tmp_path / "vf")))
    config = json.loads((res.out_dir / "config.json").read_text())
    assert config["validation"] == "none" and config["validation_use"] == []
    assert res.metrics["per_seed"][0]["logreg_c"] == VALIDATION_FREE_C
    # the fitted head is scikit-learn's LogisticRegression(C=1) on the 4-shot rows
    rows = pl.read_parquet(res.out_dir / "splits.parquet").filter(pl.col("split") == "train")["row"].to_numpy()
    x = c.features("standard", "embed").double().numpy()
    ref = LogisticRegression(C=VALIDATION_FREE_C, max_iter=1000).fit(x[rows], c.labels[rows])
    pred = pl.read_parquet(res.out_dir / "predictions.parquet")
    test = pred["row"].to_numpy()
    assert (ref.predict(x[test]) == pred["pred"].to_numpy()).mean() >= 0.98
    tuned = train_head.run(train_head.TrainHeadConfig(cache=str(cache), head="logreg", seeds=(0,),
                                                      out=str(tmp_path / "tuned")))
    assert json.loads((tuned.out_dir / "config.json").read_text())["validation"] == "carved"


def test_validation_free_refuses_validation_rows(cache: Path) -> None:
    with pytest.raises(FeatcacheError, match="--val-fraction"):
        train_head.TrainHeadConfig(cache=str(cache), validation_free=True, val_fraction=0.2)
    with pytest.raises(FeatcacheError, match="--calibrate"):
        train_head.TrainHeadConfig(cache=str(cache), validation_free=True, calibrate="temperature")
    with pytest.raises(FeatcacheError, match="--shots"):
        train_head.TrainHeadConfig(cache=str(cache), shots=0)


def test_cli_shots_and_validation_free(cache: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["train-head", "--cache", str(cache), "--head", "knn", "--shots",
                                    "2", "--validation-free", "--seeds", "0", "--out",
                                    str(tmp_path / "k")])
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "k" / "config.json").read_text())
    assert config["shots"] == 2 and config["validation"] == "none" and config["validation_free"]


def test_report_always_shows_whether_validation_was_used(cache: Path, tmp_path: Path) -> None:
    from featcache.report import report_frame
    from featcache.runs import read_run

    base = dict(cache=str(cache), head="linear", seeds=(0,), epochs=1)
    a = train_head.run(train_head.TrainHeadConfig(**base, validation_free=True, out=str(tmp_path / "a")))
    b = train_head.run(train_head.TrainHeadConfig(**base, validation_free=True, lr=0.05,
                                                  out=str(tmp_path / "b")))
    frame, knobs = report_frame([read_run(a.out_dir), read_run(b.out_dir)])
    assert "validation" in knobs and set(frame["validation"]) == {"none"}  # shown even when equal
    c = train_head.run(train_head.TrainHeadConfig(**base, val_fraction=0.2, calibrate="temperature",
                                                  out=str(tmp_path / "c")))
    frame, _ = report_frame([read_run(a.out_dir), read_run(c.out_dir)])
    assert frame["validation"].to_list() == ["none", "carved"]
    assert "ece" in frame.columns and frame["ece"].is_not_null().all()


def test_grid_cli_takes_shots_as_an_axis_and_refuses_validation_free(cache: Path, tmp_path: Path) -> None:
    args = ["grid", "--cache", str(cache), "--head", "cosine", "--epochs", "1", "--seeds", "0",
            "--param", "shots=1,2", "--out", str(tmp_path / "g")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "g" / "accuracy_vs_shots.png").is_file()
    res = CliRunner().invoke(main, [*args[:-1], str(tmp_path / "h"), "--validation-free"])
    assert res.exit_code == 2 and "validation" in res.output
