"""Every knob given on the command line reaches the run's config unchanged, for every command
that writes one.

For each command (``train-head``, ``train-head --ensemble`` (TFA-LT), ``grid``, ``compare``,
``reproduce tfa-lt``, ``bench medmnist``, ``finetune``, ``extract`` (the cache's metadata),
``predict``), every numeric option of the command gets a value other than its default (and
the string knobs a non-default choice where the run allows one), and the run's
``config.json`` must hold exactly that value under the knob's name. The options come from the
command itself, so a knob added later is checked with no edit here; the few options a config
does not record (how fast, not what: ``--workers``) are listed with why. (Regression:
``featcache grid --tau 0.05`` once wrote ``"tau": 0.01``.)
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from fixtures_cache import make_feature_cache

from featcache.cli import main

# values that keep the run tiny or valid where the generic rule would not
SPECIAL = {"epochs": 2, "ensemble_epochs": 2, "baseline_epochs": 2, "batch_size": 32,
           "test_per_class": 10, "val_fraction": 0.25, "momentum": 0.8, "cb_beta": 0.999}
# options that are not knobs of the run (where it goes, how it is shown)
NOT_KNOBS = {"top"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("knobs") / "lt.h5"
    return make_feature_cache(path, num_classes=4, counts=[80, 40, 30, 24], dim=8,
                              test_per_class=10, seed=7)


def _numeric_options(command: click.Command, applies, special: dict | None = None) -> dict[str, float | int]:  # noqa: ANN001
    """A non-default value for every int/float option of ``command`` that ``applies``."""
    values = {}
    special = {**SPECIAL, **(special or {})}
    for p in command.params:
        if not isinstance(p, click.Option) or p.name in NOT_KNOBS or not applies(p.name):
            continue
        if isinstance(p.type, click.types.FloatParamType):
            default = p.default
            values[p.name] = special.get(p.name, 0.05 if not default else default * 0.5)
        elif isinstance(p.type, click.types.IntParamType):
            values[p.name] = special.get(p.name, 3)
    return values


def _args(values: dict) -> list[str]:
    out = []
    for name, v in values.items():
        out += [f"--{name.replace('_', '-')}", str(v)]
    return out


def _run(args: list[str]) -> dict:
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    out = Path(args[args.index("--out") + 1])
    return json.loads((out / "config.json").read_text())


def _assert_reached(config: dict, values: dict, where: str) -> None:
    wrong = {k: (v, config.get(k, "<missing>")) for k, v in values.items() if config.get(k) != v}
    assert not wrong, f"{where}: knob given -> config.json: {wrong}"


SINGLE_ONLY = {"sigma"}  # cosine head scale: not a TFA-LT knob
TFA_ONLY = ("ensemble_", "baseline_")


def _single(name: str) -> bool:
    return not name.startswith(TFA_ONLY)


def _tfa(name: str) -> bool:
    return name not in SINGLE_ONLY and name != "baseline_epochs"


@pytest.mark.slow
def test_train_head_knobs_reach_config(cache: Path, tmp_path: Path) -> None:
    cmd = main.commands["train-head"]
    values = _numeric_options(cmd, _single)
    assert {"lr", "tau", "weight_decay", "epochs"} <= set(values)
    config = _run(["train-head", "--cache", str(cache), "--head", "cosine", "--protocol", "tfa-lt",
                   "--seeds", "0", "--device", "cpu", "--out", str(tmp_path / "th"), *_args(values)])
    _assert_reached(config, values, "train-head")


@pytest.mark.slow
def test_tfa_lt_knobs_reach_config(cache: Path, tmp_path: Path) -> None:
    cmd = main.commands["train-head"]
    values = _numeric_options(cmd, _tfa)
    assert {"ensemble_lr", "tau", "gamma"} <= set(values)
    config = _run(["train-head", "--cache", str(cache), "--ensemble", "logit", "--protocol", "tfa-lt",
                   "--seeds", "0", "--device", "cpu", "--out", str(tmp_path / "tfa"), *_args(values)])
    _assert_reached(config, values, "train-head --ensemble")


@pytest.mark.slow
def test_grid_knobs_reach_config(cache: Path, tmp_path: Path) -> None:
    cmd = main.commands["grid"]
    values = _numeric_options(cmd, lambda n: _single(n) and n != "lr")
    assert {"tau", "weight_decay"} <= set(values)
    config = _run(["grid", "--cache", str(cache), "--head", "cosine", "--protocol", "tfa-lt",
                   "--param", "lr=0.05,0.1", "--seeds", "0", "--device", "cpu",
                   "--out", str(tmp_path / "grid"), *_args(values)])
    _assert_reached(config, values, "grid")
    assert config["grid"] == {"lr": [0.05, 0.1]}
    assert config["selected_config"]["tau"] == values["tau"]


def _command(name: str) -> click.Command:
    cmd = main
    for part in name.split():
        cmd = cmd.commands[part]
    return cmd


@pytest.mark.slow
def test_compare_knobs_reach_config(cache: Path, tmp_path: Path) -> None:
    values = _numeric_options(_command("compare"), lambda n: True)
    assert {"lr", "epochs", "batch_size", "val_fraction", "test_per_class"} <= set(values)
    strings = {"calibrate": "temperature", "text_source": "class-mean", "precision": "fp32", "protocol": "tfa-lt"}
    out = tmp_path / "cmp"
    config = _run(["compare", "--cache", str(cache), "--heads", "linear", "--seeds", "0", "--device", "cpu",
                   "--shots", "2,full", "--out", str(out), *_args({**values, **strings})])
    _assert_reached(config, {**values, **strings, "heads": ["linear"], "shots": ["2", "full"]}, "compare")
    row = next((out / "runs").iterdir())  # each method's own run gets the same knobs
    inner = json.loads((row / "config.json").read_text())
    _assert_reached(inner, {k: values[k] for k in ("lr", "epochs", "batch_size", "val_fraction")}, "compare row")


@pytest.mark.slow
def test_reproduce_knobs_reach_config(cache: Path, tmp_path: Path) -> None:
    values = _numeric_options(_command("reproduce tfa-lt"), lambda n: True)
    assert {"lr", "tau", "epochs", "ensemble_epochs", "baseline_epochs"} <= set(values)
    strings = {"rus": "fresh", "protocol": "tfa-lt", "text_source": "class-mean", "feature": "cls"}
    config = _run(["reproduce", "tfa-lt", "--cache", str(cache), "--seeds", "0", "--device", "cpu", "--quiet",
                   "--out", str(tmp_path / "rep"), *_args({**values, **strings})])
    _assert_reached(config, {**values, **strings}, "reproduce tfa-lt")


@pytest.mark.slow
def test_bench_medmnist_knobs_reach_config(tmp_path: Path) -> None:
    from fixtures_data import write_medmnist

    root = tmp_path / "data"
    write_medmnist(root, "pneumoniamnist", num_classes=2, sizes=(12, 6, 8), seed=2)
    values = _numeric_options(_command("bench medmnist"), lambda n: True,
                              {"iterations": 6, "decay_every": 3, "batch_size": 8, "val_checks": 2,
                               "finetune_iterations": 4, "finetune_batch_size": 4})
    assert {"lr_decay", "weight_decay", "finetune_head_lr", "iterations", "val_checks"} <= set(values)
    strings = {"feature": "embed", "binary_head": "bce", "select_metric": "auc", "per_class_draw": "first",
               "interpolation": "bicubic", "recipe": "fast", "input_size": "model"}
    out = tmp_path / "bench"
    config = _run(["bench", "medmnist", "--root", str(root), "--datasets", "pneumoniamnist", "--seeds", "1",
                   "--lrs", "0.01", "--per-class", "3", "--device", "cpu", "--no-progress",
                   "--cache-dir", str(tmp_path / "caches"), "--out", str(out), *_args({**values, **strings})])
    _assert_reached(config, {**values, **strings, "seeds": [1], "lrs": [0.01], "per_class": [3]},
                    "bench medmnist")


@pytest.mark.slow
def test_finetune_knobs_reach_config(tmp_path: Path) -> None:
    # workers: decoding processes, how fast and not what (not in config.json: a resumed run
    # may use others); train_canvas: image files only (synthetic-lt is arrays)
    values = _numeric_options(_command("finetune"), lambda n: n not in ("workers", "train_canvas"),
                              {"epochs": 1, "batch_size": 16, "test_per_class": 3})
    assert {"lr", "momentum", "weight_decay", "la_tau", "sigma", "epochs"} <= set(values)
    strings = {"schedule": "constant", "init": "random", "loss": "ce", "protocol": "tfa-lt", "precision": "fp32",
               "method": "bitfit"}
    out = tmp_path / "ft"
    config = _run(["finetune", "--dataset", "synthetic-lt", "--option", "max_per_class=20", "--option", "imbalance=2", "--option",
                   "test_per_class=4", "--seeds", "1", "--device", "cpu", "--workers", "0", "--no-progress",
                   "--out", str(out), *_args({**values, **strings})])
    _assert_reached(config, {**values, **strings, "seeds": [1]}, "finetune")


@pytest.mark.slow
def test_extract_knobs_reach_the_cache_metadata(tmp_path: Path) -> None:
    from featcache.cache import open_cache

    out = tmp_path / "c.h5"
    res = CliRunner().invoke(main, ["extract", "--dataset", "synthetic-lt", "--option", "max_per_class=12",
                                    "--option", "test_per_class=2", "--workers", "0", "--batch-size", "7",
                                    "--chunk-size", "16", "--precision", "fp32", "--resize", "pad", "--tte",
                                    "--pretrained", "random", "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 0, res.output
    meta = open_cache(out).meta
    # batch size, workers and device decide how fast, not what: the cache does not record them
    # (a resumed extraction may use others); the chunk size fixes the shards, so it is recorded
    assert (meta["chunk_size"], meta["precision"], meta["model"]) == (16, "fp32", "tiny-clip")
    assert meta["pretrained"] == "random"
    assert meta["preprocessing"]["resize"] == "pad" and meta["preprocessing"]["tte"] is True


@pytest.mark.slow
def test_predict_knobs_reach_config(cache: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _run(["train-head", "--cache", str(cache), "--epochs", "1", "--seeds", "0", "--device", "cpu",
          "--out", str(run_dir), "--quiet"])
    out = tmp_path / "pred"
    res = CliRunner().invoke(main, ["predict", "--run", str(run_dir), "--cache", str(cache), "--split", "all",
                                    "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 0, res.output
    config = json.loads((out / "config.json").read_text())
    # --batch-size and --workers apply to --images only (how fast, not what)
    _assert_reached(config, {"split": "all", "device": "cpu"}, "predict")
