"""Each knob is declared once (``featcache/knobs.py``) and neither the CLI nor a config can drift from it.

0. Every command's knob options are built from their declarations (:func:`featcache.cli.common.knob_option`):
   type or choices, default and help are the record's (a command may append a note); every
   option named after a knob is one, unless listed with why. Every config field named after
   a knob takes its default and metadata from the record (``knob_field``), and each option
   and the config field it fills read the same record. Predict's options are its functions'
   defaults; the declared choices are the library's.
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
        extract,
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
        "extract": [extract.ExtractConfig],
        "demo": [reproduce.ReproduceConfig],
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
                                     "bench medmnist", "extract"])
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


# ------------------------------------------------------------------------------------------
# 0. options and config fields from the declarations

def _leaves(cmd: click.Command = main, path: tuple[str, ...] = ()) -> list[tuple[str, click.Command]]:
    if isinstance(cmd, click.Group):
        return [leaf for name, sub in sorted(cmd.commands.items()) for leaf in _leaves(sub, (*path, name))]
    return [(" ".join(path), cmd)]


LEAVES = _leaves()
# (command, option) whose default is None ("not given": the config's declared default applies)
UNSET = {("train-head", "head"), ("train-head", "ensemble"), ("grid", "head"), ("grid", "ensemble")}
# options named like a knob but written by hand, and why
HAND_WRITTEN = {
    "out": "where the output goes: each command's own path (bench medmnist's default is the knob medmnist_out)",
    "pretrained": "predict and export: the weights file a run recorded (its SHA-256 is checked), not a choice",
}
# config fields named like a knob that are not one, and why
PLAIN_FIELDS = {
    ("FinetuneConfig", "template"): "LIFT's fixed prompt (featcache.prompts), not an option",
    ("ExtractConfig", "input_size"): "None = the model's own; set by bench medmnist, not an extract option",
    ("ExtractConfig", "interpolation"): "None = the model's own; set by bench medmnist, not an extract option",
}
# (command, option): an option filling a config field from another record than the field's, and why
OTHER_RECORD = {("grid", "val_fraction"): "grid_val_fraction: a grid needs validation rows to select on"}


def _knob_names() -> set[str]:
    return {k.name for k in knobs.KNOBS.values()}


def _same_type(got: click.ParamType, k: knobs.Knob) -> bool:
    from featcache.cli.choices import NameChoice
    from featcache.cli.common import knob_type

    if k.choices is not None:
        return isinstance(got, click.Choice) and tuple(got.choices) == k.choices
    if k.names is not None:
        return isinstance(got, NameChoice) and got.kind == k.names
    return type(got) is type(click.types.convert_type(knob_type(k)))


@pytest.mark.parametrize(("command", "cmd"), LEAVES, ids=[c for c, _ in LEAVES])
def test_knob_options_are_their_declarations(command: str, cmd: click.Command) -> None:
    from featcache.cli.common import KnobOption

    names = _knob_names()
    for p in cmd.params:
        if not isinstance(p, click.Option) or p.name == "help":
            continue
        if not isinstance(p, KnobOption):
            assert p.name not in names or p.name in HAND_WRITTEN, (
                f"{command} --{p.name.replace('_', '-')} is named after a knob: build it with knob_option")
            continue
        k, flag = p.knob, f"{command} --{p.name.replace('_', '-')}"
        assert p.name == k.name and p.opts == [f"--{k.name.replace('_', '-')}"], flag
        if k.type is bool:
            assert p.is_flag and p.get_default(click.Context(cmd), call=False) in (False, None), flag
        else:
            assert _same_type(p.type, k), f"{flag}: type {p.type!r}, declared {k.type} {k.choices or k.names or ''}"
            want = None if (command, p.name) in UNSET else k.cli_default
            assert p.default == want and type(p.default) is type(want), f"{flag}: default {p.default!r}, declared {want!r}"
        assert p.help_from in ("knob", "note"), f"{flag}: its own help; declare the meaning it has here"
        assert p.help.startswith(k.help), f"{flag}: help is not the declared one"


def test_config_fields_named_after_a_knob_are_declared_from_it() -> None:
    from featcache.knob_fields import knob_of

    names = _knob_names()
    classes = {cls for group in _configs().values() for cls in group}
    checked = 0
    for cls in classes:
        for f in dataclasses.fields(cls):
            if f.name not in names or (cls.__name__, f.name) in PLAIN_FIELDS or not f.init:
                continue
            if f.name == "out" and f.default is None:
                continue  # where the run goes (HAND_WRITTEN)
            k = knob_of(f)
            assert k is not None, f"{cls.__name__}.{f.name}: declare it with knob_field(...)"
            assert k.name == f.name and f.default == k.default, f"{cls.__name__}.{f.name}"
            assert f.metadata["help"] == k.help and f.metadata["source"] == k.source
            checked += 1
    assert checked >= 100


@pytest.mark.parametrize("command", sorted(_configs()))
def test_each_option_and_its_config_field_read_the_same_record(command: str) -> None:
    from featcache.cli.common import KnobOption
    from featcache.knob_fields import knob_of

    for cls in _configs()[command]:
        by_name = {f.name: knob_of(f) for f in dataclasses.fields(cls)}
        for p in _command(command).params:
            if isinstance(p, KnobOption) and by_name.get(p.name) is not None:
                if (command, p.name) in OTHER_RECORD:
                    assert p.knob.key != by_name[p.name].key
                    continue
                assert p.knob.key == by_name[p.name].key, (
                    f"{command} --{p.name}: option reads {p.knob.key}, {cls.__name__}.{p.name} reads "
                    f"{by_name[p.name].key}")


def test_predict_options_are_its_functions_defaults() -> None:
    import inspect

    from featcache.pipelines.predict import predict_images, predict_run

    options = {p.name: p.default for p in _command("predict").params if isinstance(p, click.Option)}
    for fn in (predict_run, predict_images):
        for name, param in inspect.signature(fn).parameters.items():
            if name in ("split", "device", "batch_size", "workers"):
                assert param.default == options[name], f"{fn.__name__}({name}=...)"


def test_declared_choices_are_the_librarys() -> None:
    from featcache.device import DEVICES, PRECISIONS
    from featcache.heads.base import INITS, OPTIMIZERS
    from featcache.heads.cached import CALIBRATIONS, TEXT_SOURCES
    from featcache.pipelines import bench_medmnist, extract, finetune, tfa_lt
    from featcache.schedules import EPOCH_SCHEDULES, SCHEDULES

    k = knobs.KNOBS
    assert k["device_choice"].choices == DEVICES and k["precision"].choices == PRECISIONS
    assert k["encoder_precision"].choices == ("auto", *PRECISIONS)
    assert k["init"].choices == INITS and k["finetune_init"].choices == finetune.INITS
    assert k["text_source"].choices == TEXT_SOURCES and k["calibrate"].choices == CALIBRATIONS
    assert k["ensemble"].choices == tfa_lt.ENSEMBLES and k["rus"].choices == tfa_lt.RUS_MODES
    assert set(k["schedule"].choices) == set(SCHEDULES)  # the heads' trainer
    assert set(k["finetune_schedule"].choices) == set(EPOCH_SCHEDULES)  # LIFT's per-epoch loop
    assert set(k["optimizer"].choices) == set(OPTIMIZERS)
    assert k["decoder"].choices == extract.DECODERS
    assert k["medmnist_recipe"].choices == tuple(bench_medmnist.RECIPES)
    assert all(c.default in c.choices for c in k.values() if c.choices)


def test_a_knob_is_declared_once_and_its_record_is_complete() -> None:
    with pytest.raises(ValueError, match="declared twice"):
        knobs._declare("lr", 1.0, "x", "y")
    for k in knobs.KNOBS.values():
        assert k.help.strip() and k.source.strip(), k.key
        assert getattr(knobs, k.key.upper()) == k.default, f"knobs.{k.key.upper()}"


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


def _config_class_names() -> set[str]:
    return {cls.__name__ for group in _configs().values() for cls in group} | {"RunSettings"}


def _literal_knob_defaults(path: Path, classes: set[str], names: set[str]) -> list[str]:
    """Config fields and hand-written click options named after a knob whose default is a
    literal (``None`` and flags aside): each would be a second declaration."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name in classes:
            for item in node.body:
                if (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
                        and item.target.id in names and (node.name, item.target.id) not in PLAIN_FIELDS
                        and _literal(item.value) is not ...):
                    found.append(f"{path.name}:{item.lineno} {node.name}.{item.target.id}")
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "option":
            flags = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            long = next((f for f in flags if f.startswith("--")), "")
            name = next((f for f in flags if not f.startswith("-")), long[2:].replace("-", "_"))
            default = next((k.value for k in node.keywords if k.arg == "default"), None)
            if name in names and name not in HAND_WRITTEN and _literal(default) is not ...:
                found.append(f"{path.name}:{node.lineno} option {long}")
    return found


def test_no_config_field_or_option_named_after_a_knob_writes_its_default(tmp_path: Path) -> None:
    """Every config class the commands build (ExtractConfig and BenchConfig included) and every
    hand-written option in featcache/cli: a field or option named after any declared knob
    takes its default from the declaration (knob_field / knob_option), never a literal."""
    names, classes = _knob_names(), _config_class_names()
    dupes = [d for path in _sources() if path != KNOBS_FILE
             for d in _literal_knob_defaults(path, classes, names)]
    assert not dupes, "knob defaults written outside featcache/knobs.py:\n" + "\n".join(dupes)
    probe = tmp_path / "probe.py"  # the scan itself sees a literal field and a literal option
    probe.write_text('@dataclass\nclass ExtractConfig:\n    chunk_size: int = 4096\n\n'
                     '@click.option("--decoder", default="pil")\ndef f(): ...\n')
    assert len(_literal_knob_defaults(probe, classes, names)) == 2
