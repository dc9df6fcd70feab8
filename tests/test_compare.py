"""``featcache compare`` (issue 13): every method on the same splits, one table in three
formats with timing, the accuracy-vs-shots plot, text heads skipped on a cache without text."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from fixtures_cache import make_feature_cache

from featcache.cli import main
from featcache.errors import FeatcacheError
from featcache.pipelines import compare

HEADS = ("zeroshot", "knn", "logreg", "tip-adapter", "clip-adapter", "lp++", "clap", "linear",
         "cosine", "tfa-lt")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_feature_cache(tmp_path_factory.mktemp("cmp") / "c.h5", num_classes=4,
                              counts=[60, 40, 30, 24], dim=8, test_per_class=8, seed=21)


@pytest.fixture(scope="module")
def result(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> compare.CompareResult:
    cfg = compare.CompareConfig(cache=str(cache), heads=HEADS, seeds=(0, 1), shots=(2, 4, None),
                                epochs=2, validation_free=True,
                                out=str(tmp_path_factory.mktemp("cmp") / "out"))
    return compare.run(cfg)


# The ten methods × three shot counts (30 runs, ~10 s) run with the whole suite; the CLI test
# below checks the same files, rows and shared splits fast on three methods × two shot counts.
@pytest.mark.slow
def test_compare_writes_one_row_per_method_and_shots_in_every_format(result: compare.CompareResult) -> None:
    out = result.out_dir
    for name in ("compare.md", "compare.parquet", "compare.csv", "config.json", "accuracy_vs_shots.png"):
        assert (out / name).is_file(), name
    table = pl.read_parquet(out / "compare.parquet")
    assert table.height == len(HEADS) * 3
    assert pl.read_csv(out / "compare.csv").height == table.height
    assert table.select("head", "shots").unique().height == table.height
    assert table["acc"].is_not_null().all() and table["ece"].is_not_null().all()
    assert (table["seconds"] > 0).all() and table["train_seconds"].is_not_null().all()
    assert set(table["validation"]) == {"none"}
    md = (out / "compare.md").read_text()
    assert md.count("\n") == table.height + 2 and "TFA-LT (logit)" in md and "ECE" in md
    config = json.loads((out / "config.json").read_text())
    assert config["pipeline"] == "compare" and config["shots"] == ["2", "4", "full"]


@pytest.mark.slow
def test_every_method_is_trained_and_tested_on_the_same_split(result: compare.CompareResult) -> None:
    table = pl.read_parquet(result.out_dir / "compare.parquet")
    for shots in (2, 4, None):
        runs = table.filter(pl.col("shots").is_null() if shots is None else pl.col("shots") == shots)["run"]
        frames = [pl.read_parquet(Path(r) / "splits.parquet").sort(["seed", "row"]) for r in runs]
        assert all(f.equals(frames[0]) for f in frames[1:])
        for r in runs:
            metrics = json.loads((Path(r) / "metrics.json").read_text())
            assert metrics["ece"] is not None and len(metrics["per_seed"]) == 2
            assert (Path(r) / "reliability.png").is_file()


def test_text_heads_are_skipped_with_a_note_on_a_cache_without_text(tmp_path: Path) -> None:
    path = make_feature_cache(tmp_path / "v.h5", num_classes=3, counts=[30, 20, 15], dim=6,
                              test_per_class=5, with_text=False, seed=4)
    res = compare.run(compare.CompareConfig(cache=str(path), heads=("zeroshot", "clap", "linear"),
                                            seeds=(0,), epochs=2, out=str(tmp_path / "o")))
    rows = {r["head"]: r for r in res.table.iter_rows(named=True)}
    assert rows["clap"]["acc"] is None and "no text features" in rows["clap"]["note"]
    assert rows["linear"]["acc"] is not None
    assert rows["zeroshot"]["acc"] is not None and "class-mean" in rows["zeroshot"]["note"]


def test_a_method_that_refuses_its_setting_gets_the_reason(cache: Path, tmp_path: Path) -> None:
    # 1 shot without --validation-free: logreg has no rows to carve for its C search
    res = compare.run(compare.CompareConfig(cache=str(cache), heads=("logreg", "knn"), seeds=(0,),
                                            shots=(1,), out=str(tmp_path / "o")))
    rows = {r["head"]: r for r in res.table.iter_rows(named=True)}
    assert rows["logreg"]["note"].startswith("error:") and "--validation-free" in rows["logreg"]["note"]
    assert rows["knn"]["acc"] is not None


def test_compare_refuses_unknown_methods_and_existing_output(cache: Path, tmp_path: Path) -> None:
    with pytest.raises(FeatcacheError, match="Did you mean 'clap'"):
        compare.CompareConfig(cache=str(cache), heads=("clapp",))
    cfg = compare.CompareConfig(cache=str(cache), heads=("zeroshot",), seeds=(0,), out=str(tmp_path / "o"))
    compare.run(cfg)
    with pytest.raises(FeatcacheError, match="--overwrite"):
        compare.run(cfg)
    compare.run(cfg, overwrite=True)


def test_compare_cli_prints_the_table_and_progress(cache: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["compare", "--cache", str(cache), "--heads", "zeroshot,knn,linear",
                                    "--seeds", "0,1", "--shots", "2,full", "--epochs", "2",
                                    "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "[3/6] linear, shots 2" in res.output and "compare.md" in res.output
    assert pl.read_csv(tmp_path / "o" / "compare.csv").height == 6
    for name in compare.TABLE_FILES:  # every format, the accuracy-vs-shots figure among them
        assert (tmp_path / "o" / name).is_file(), name
    table = pl.read_parquet(tmp_path / "o" / "compare.parquet")
    assert table.select("head", "shots").unique().height == table.height == 6
    for _, part in table.group_by("shots"):  # one split per shot count, shared by every method
        frames = [pl.read_parquet(Path(r) / "splits.parquet").sort(["seed", "row"]) for r in part["run"]]
        assert len(frames) == 3 and all(f.equals(frames[0]) for f in frames[1:])


def test_compare_calibrates_every_method_on_validation(cache: Path, tmp_path: Path) -> None:
    with pytest.raises(FeatcacheError, match="--val-fraction"):
        compare.run(compare.CompareConfig(cache=str(cache), heads=("linear",), calibrate="temperature",
                                          out=str(tmp_path / "no")))
    res = compare.run(compare.CompareConfig(cache=str(cache), heads=("linear", "knn"), seeds=(0,),
                                            epochs=2, val_fraction=0.25, calibrate="temperature",
                                            out=str(tmp_path / "o")))
    assert set(res.table["validation"]) == {"carved"} and res.table["ece"].is_not_null().all()
    for run in res.table["run"]:
        assert json.loads((Path(run) / "metrics.json").read_text())["temperature"] > 0


def test_compare_cli_refuses_bad_shots(cache: Path, tmp_path: Path) -> None:
    for bad, why in (("2,x", "integers or 'full'"), ("0", ">= 1"), ("2,2", "distinct")):
        res = CliRunner().invoke(main, ["compare", "--cache", str(cache), "--heads", "knn",
                                        "--shots", bad, "--out", str(tmp_path / "o")])
        assert res.exit_code == 2 and why in res.output, res.output
