"""Each knob's default is declared once (``featcache/knobs.py``) and the CLI cannot drift from it.

1. For every option of ``train-head``, ``grid``, ``reproduce tfa-lt``, ``finetune``,
   ``compare`` and ``bench medmnist`` that is a field of the config the command builds, the option's default is
   the field's default (the few options whose ``None`` means "the config's default" are
   listed, with why). Options come from the commands, so a new one is checked with no edit.
2. A source scan: no config field, heads' ``MemberSpec`` field, training-command option or
   function argument named after a shared knob (lr, weight_decay, momentum, epochs,
   batch_size, sigma, gamma, la_tau, cb_beta, ...) writes that knob's default as a literal;
   they all read :mod:`featcache.knobs`, where each constant is assigned exactly once.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import click
import pytest

from featcache import knobs
from featcache.cli import main
from featcache.cli.common import parse_list, parse_seeds

REPO = Path(__file__).resolve().parents[1]
KNOBS_FILE = REPO / "featcache" / "knobs.py"


def _command(name: str) -> click.Command:
    cmd = main
    for part in name.split():
        cmd = cmd.commands[part]
    return cmd


def _configs() -> dict[str, list[type]]:
    from featcache.pipelines import (
        bench_medmnist,
        compare,
        finetune,
        grid,
        reproduce,
        tfa_lt,
        train_head,
    )

    return {
        "train-head": [train_head.TrainHeadConfig, tfa_lt.TfaLtConfig],
        "grid": [grid.GridConfig, train_head.TrainHeadConfig, tfa_lt.TfaLtConfig],
        "reproduce tfa-lt": [reproduce.ReproduceConfig],
        "finetune": [finetune.FinetuneConfig],
        "compare": [compare.CompareConfig],
        "bench medmnist": [bench_medmnist.BenchConfig],
    }


# (command, option): why its CLI default differs from the config field's, and what the CLI
# does with it so the field's default still applies
NONE_MEANS_CONFIG_DEFAULT = {
    ("train-head", "head"): "None: no --head given (TFA-LT refuses one); left out, the config's head",
    ("grid", "head"): "as train-head's",
    ("train-head", "ensemble"): "None: train one head; TFA-LT only runs with --ensemble NAME",
    ("grid", "ensemble"): "as train-head's",
}
# (command, option): a text the command parses into the config's empty default
TEXT_FOR_CONFIG_DEFAULT = {
    ("bench medmnist", "encoder_lrs"): "auto",  # () = each family's ENCODER_LR
    ("compare", "shots"): "full",  # (None,) = every training row
}


def _cli_value(name: str, default: object, expected: object) -> object:
    """An option's default in the config's form (``--seeds "0,1,2"`` -> ``(0, 1, 2)``, a
    comma list for a tuple field)."""
    if name == "seeds":
        return parse_seeds(default)
    if isinstance(expected, tuple) and isinstance(default, str):
        return parse_list(f"--{name}", default, type(expected[0]) if expected else str)
    return default


@pytest.mark.parametrize("command", ["train-head", "grid", "reproduce tfa-lt", "finetune", "compare",
                                     "bench medmnist"])
def test_option_defaults_are_the_config_defaults(command: str) -> None:
    from featcache.pipelines import grid, train_head

    checked = 0
    ctx = click.Context(_command(command))
    for cls in _configs()[command]:
        defaults = {f.name: f.default for f in dataclasses.fields(cls)
                    if f.default is not dataclasses.MISSING and f.init}
        for p in _command(command).params:
            if not isinstance(p, click.Option) or p.name not in defaults or p.required:
                continue
            if (command, p.name) in NONE_MEANS_CONFIG_DEFAULT:
                assert p.get_default(ctx, call=False) is None, f"{command} --{p.name}: not None"
                continue
            expected = defaults[p.name]
            if command == "grid" and p.name == "val_fraction":  # the grid's own default
                assert cls in (train_head.TrainHeadConfig, grid.tfa_lt.TfaLtConfig)
                expected = knobs.GRID_VAL_FRACTION
            default = p.get_default(ctx, call=False)  # a flag's False (click keeps it unset)
            if (command, p.name) in TEXT_FOR_CONFIG_DEFAULT:
                assert default == TEXT_FOR_CONFIG_DEFAULT[command, p.name] and not any(expected)
                continue
            got = _cli_value(p.name, default, expected)
            assert got == expected and type(got) is type(expected), (
                f"{command} --{p.name.replace('_', '-')}: option default {default!r}, "
                f"{cls.__name__}.{p.name} default {expected!r}")
            checked += 1
    assert checked >= 8, f"{command}: only {checked} options matched a config field"


def test_grid_val_fraction_default_is_declared_once() -> None:
    opt = next(p for p in _command("grid").params if p.name == "val_fraction")
    assert opt.default == knobs.GRID_VAL_FRACTION == 0.2


def test_head_option_none_runs_the_config_default_head(tmp_path: Path) -> None:
    """train-head with no --head trains TrainHeadConfig's default head (the one place it is set)."""
    import json

    from click.testing import CliRunner
    from fixtures_cache import make_feature_cache

    cache = make_feature_cache(tmp_path / "c.h5", num_classes=3, counts=[20, 12, 8], dim=8,
                               test_per_class=4, seed=1)
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train-head", "--cache", str(cache), "--epochs", "1", "--seeds", "0",
                                    "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "config.json").read_text())["head"] == knobs.HEAD


# ------------------------------------------------------------------------------------------
# 2. the source scan

SHARED = {"lr", "weight_decay", "momentum", "epochs", "batch_size", "sigma", "gamma", "la_tau",
          "cb_beta", "tau", "ensemble_lr", "ensemble_epochs", "baseline_epochs", "val_fraction",
          "posthoc_tau", "bootstrap", "bootstrap_seed", "top", "seeds",
          "lr_decay", "decay_every", "finetune_head_lr"}  # the MedMNIST benchmark's
# the string knobs: the configs' fields and the training commands' options read them too
STRING_KNOBS = {"loss", "sampler", "init", "ensemble", "ensemble_loss", "rus", "schedule", "text_source",
                "template", "view", "feature", "device", "precision", "calibrate", "plot_format",
                "select", "model", "head"}
# the classes that declare the training knobs
CONFIG_CLASSES = {"TrainHeadConfig", "TfaLtConfig", "ReproduceConfig", "CompareConfig",
                  "FinetuneConfig", "GridConfig", "RunSettings", "MemberSpec"}
# the commands whose options are those knobs
COMMANDS = {"train_head_cmd", "grid_cmd", "reproduce_tfa_lt_cmd", "finetune_cmd", "compare_cmd",
            "demo_cmd"}
# the MedMNIST benchmark's config and command: its numeric knobs are scanned (its own recipe's
# strings, e.g. feature "cls", are not the heads' knobs)
NUMERIC_CLASSES = {"BenchConfig": SHARED,
                   # its iterations and batch size are each recipe's own (paper / fast)
                   "ProbeRecipe": {"weight_decay", "lr_decay", "decay_every"}}
NUMERIC_COMMANDS = {"medmnist_cmd"}


def _sources() -> list[Path]:
    out = []
    for folder in ("featcache", "heads", "pipelines"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path.parent.name in ("heads", "pipelines") and path.parent.parent.name == "featcache":
                continue  # featcache/heads, featcache/pipelines: symlinks to the folders above
            out.append(path)
    return out


def _literal(node: ast.expr | None) -> object:
    """The value of a number / string / tuple literal (``-1`` included), else ``...``."""
    if node is None:
        return ...
    try:
        value = ast.literal_eval(node)
    except ValueError:
        return ...
    if isinstance(value, bool) or value is None:
        return ...
    return value


def _knob_values() -> dict[str, set]:
    """Each shared knob's default(s) as declared in knobs.py (lr: LR, ENSEMBLE_LR, FINETUNE_LR ...)."""
    values: dict[str, set] = {}
    for name in SHARED:
        for const in dir(knobs):
            if const.isupper() and (const == name.upper() or const.endswith("_" + name.upper())):
                value = getattr(knobs, const)
                values.setdefault(name, set()).update({value, knobs.seeds_text(value)} if name == "seeds" else {value})
    return values


def _literal_defaults(path: Path) -> list[tuple[str, int, str, object]]:
    """(kind, line, knob, value) of every literal default of a shared knob in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name in CONFIG_CLASSES | set(NUMERIC_CLASSES):
            names = NUMERIC_CLASSES.get(node.name, SHARED | STRING_KNOBS)
            for item in node.body:
                if (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
                        and item.target.id in names and _literal(item.value) is not ...):
                    found.append((f"{node.name} field", item.lineno, item.target.id, _literal(item.value)))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = node.args
            positional = [*args.posonlyargs, *args.args]
            pairs = [*zip(positional[len(positional) - len(args.defaults):], args.defaults, strict=True),
                     *zip(args.kwonlyargs, args.kw_defaults, strict=True)]
            for arg, default in pairs:  # library functions: the numeric knobs only
                if arg.arg in SHARED and _literal(default) is not ...:
                    found.append((f"{node.name}() argument", node.lineno, arg.arg, _literal(default)))
            if node.name in COMMANDS | NUMERIC_COMMANDS:
                names = SHARED if node.name in NUMERIC_COMMANDS else SHARED | STRING_KNOBS
                for dec in node.decorator_list:
                    if not (isinstance(dec, ast.Call) and getattr(dec.func, "attr", "") == "option"):
                        continue
                    flags = [a.value for a in dec.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
                    long = next((f for f in flags if f.startswith("--")), "")
                    name = next((f for f in flags if not f.startswith("-")), long[2:].replace("-", "_"))
                    default = next((k.value for k in dec.keywords if k.arg == "default"), None)
                    if name in names and _literal(default) is not ...:
                        found.append((f"{node.name} option {long}", dec.lineno, name, _literal(default)))
    return found


def test_shared_knob_defaults_are_written_only_in_knobs_py() -> None:
    values = _knob_values()
    assert set(values) >= SHARED - {"tau"}, f"knobs.py lacks {sorted(SHARED - {'tau'} - set(values))}"
    values.setdefault("tau", set()).add(knobs.TAU_FALLBACK)
    dupes = []
    for path in _sources():
        if path == KNOBS_FILE:
            continue
        for kind, line, name, value in _literal_defaults(path):
            # config fields and command options: every literal is a second declaration;
            # other functions' arguments: only those repeating the knob's own default
            if "argument" not in kind or value in values[name]:
                dupes.append(f"{path.relative_to(REPO)}:{line} {kind} {name} = {value!r}")
    assert not dupes, "defaults written outside featcache/knobs.py:\n" + "\n".join(dupes)


def test_string_knob_defaults_are_written_only_in_knobs_py() -> None:
    """The configs' and the training commands' string defaults (loss "ce", sampler "instance",
    precision "fp32", ...) read knobs.py too; library functions' arguments are not scanned."""
    dupes = [f"{path.relative_to(REPO)}:{line} {kind} {name} = {value!r}"
             for path in _sources() if path != KNOBS_FILE
             for kind, line, name, value in _literal_defaults(path)
             if name in STRING_KNOBS and "argument" not in kind]
    assert not dupes, "string defaults written outside featcache/knobs.py:\n" + "\n".join(dupes)


def test_each_knob_constant_is_assigned_once() -> None:
    tree = ast.parse(KNOBS_FILE.read_text(encoding="utf-8"))
    names = [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
             if isinstance(t, ast.Name)]
    names += [node.target.id for node in tree.body
              if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert {n for n in names if n.isupper()} >= {"LR", "WEIGHT_DECAY", "MOMENTUM", "EPOCHS", "BATCH_SIZE",
                                                 "SIGMA", "GAMMA", "LA_TAU", "CB_BETA"}


def test_knobs_module_imports_nothing() -> None:
    """The CLI reads it at import time, so it must stay free of torch (and of everything)."""
    tree = ast.parse(KNOBS_FILE.read_text(encoding="utf-8"))
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    assert all(isinstance(n, ast.ImportFrom) and n.module == "__future__" for n in imports)


def test_the_scan_sees_a_literal_default(tmp_path: Path) -> None:
    """The scan itself works: a config field, an option and an argument written as literals are found."""
    src = '''
from dataclasses import dataclass
import click

@dataclass
class TrainHeadConfig:
    lr: float = 0.1
    epochs: int = knobs.EPOCHS

@click.option("--lr", type=float, default=0.1)
@click.option("--seeds", default="0,1,2")
def grid_cmd(**opts): ...

def build(sigma: float = 25.0, *, gamma=knobs.GAMMA): ...
'''
    path = tmp_path / "probe.py"
    path.write_text(src)
    found = {(name, value) for _, _, name, value in _literal_defaults(path)}
    assert found == {("lr", 0.1), ("seeds", "0,1,2"), ("sigma", 25.0)}


def test_knob_values_collect_every_variant_of_a_knob() -> None:
    """lr's declared defaults: the heads', TFA-LT stage II's, fine-tuning's and the MedMNIST
    benchmark's fine-tuning head's (the argument scan flags an argument repeating any)."""
    assert _knob_values()["lr"] == {knobs.LR, knobs.ENSEMBLE_LR, knobs.FINETUNE_LR,
                                    knobs.MEDMNIST_FINETUNE_HEAD_LR}
