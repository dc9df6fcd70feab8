"""Every knob given on the command line reaches the run's ``config.json`` unchanged.

For each command that trains on a cache (``train-head``, ``train-head --ensemble`` (TFA-LT),
``grid``), every numeric option of the command gets a value other than its default, and the
run's ``config.json`` must hold exactly that value under the knob's name. The options come
from the command itself, so a knob added later is checked with no edit here. (Regression:
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


def _numeric_options(command: click.Command, applies) -> dict[str, float | int]:  # noqa: ANN001
    """A non-default value for every int/float option of ``command`` that ``applies``."""
    values = {}
    for p in command.params:
        if not isinstance(p, click.Option) or p.name in NOT_KNOBS or not applies(p.name):
            continue
        if isinstance(p.type, click.types.FloatParamType):
            default = p.default
            values[p.name] = SPECIAL.get(p.name, 0.05 if not default else default * 0.5)
        elif isinstance(p.type, click.types.IntParamType):
            values[p.name] = SPECIAL.get(p.name, 3)
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
