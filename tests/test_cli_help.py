"""Every command's ``--help``: it renders, every option says what it does, options sit under
headings, registry-backed choices are the registries' names, and every example parses.

Nothing here runs a command: examples are parsed with click's ``make_context`` only.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from featcache.cli import main
from featcache.cli.choices import SOURCES, NameChoice, read_names
from featcache.cli.common import GroupedCommand


def _commands(cmd: click.Command = main, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    """Every command and group under ``main`` (``main`` itself included), with its path."""
    out = [(path, cmd)]
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            out += _commands(sub, (*path, name))
    return out


COMMANDS = _commands()
LEAVES = [(p, c) for p, c in COMMANDS if not isinstance(c, click.Group)]


def _ids(items: list) -> list[str]:
    return [" ".join(p) or "featcache" for p, _ in items]


def _help(path: tuple[str, ...], width: int = 100) -> str:
    res = CliRunner().invoke(main, [*path, "--help"], terminal_width=width)
    assert res.exit_code == 0, res.output
    return res.output


def _flat(text: str) -> str:
    """Help text with its line wrapping undone (for substring checks)."""
    return re.sub(r"\s+", " ", text)


@pytest.mark.parametrize(("path", "cmd"), COMMANDS, ids=_ids(COMMANDS))
def test_every_help_renders(path: tuple[str, ...], cmd: click.Command) -> None:
    out = _help(path)
    assert out.startswith("Usage:") and "--help" in out


@pytest.mark.parametrize(("path", "cmd"), COMMANDS, ids=_ids(COMMANDS))
def test_every_option_and_argument_is_described(path: tuple[str, ...], cmd: click.Command) -> None:
    for param in cmd.params:
        if isinstance(param, click.Option):
            assert (param.help or "").strip(), f"featcache {' '.join(path)} {param.opts[0]} has no help text"
            assert not param.help.strip().startswith("["), f"{param.opts[0]}: help is only a default note"
        else:  # arguments are described in the command's docstring, as NAME: ...
            name = param.human_readable_name
            assert f"{name}:" in (cmd.help or ""), f"featcache {' '.join(path)}: say what {name} is"


@pytest.mark.parametrize(("path", "cmd"), LEAVES, ids=_ids(LEAVES))
def test_every_command_has_examples_at_the_end(path: tuple[str, ...], cmd: click.Command) -> None:
    assert isinstance(cmd, GroupedCommand), f"featcache {' '.join(path)}: use cls=GroupedCommand (common.py)"
    assert cmd.examples, f"featcache {' '.join(path)}: add examples=(...)"
    out = _help(path, width=80)
    tail = out[out.rindex("Examples:"):]
    assert max(map(len, tail.splitlines())) <= 80, "long examples are broken into continuation lines"
    pasted = _flat(tail.replace("\\\n", " "))  # as the shell reads the continuation lines
    for line in cmd.examples:
        assert _flat(line) in pasted
    assert pasted.rstrip().endswith(_flat(cmd.examples[-1]))


@pytest.mark.parametrize(("path", "cmd"), LEAVES, ids=_ids(LEAVES))
def test_every_option_is_listed_once_and_groups_name_real_options(path: tuple[str, ...],
                                                                  cmd: click.Command) -> None:
    ctx = cmd.make_context(path[-1], [], resilient_parsing=True)
    sections = cmd.grouped_options(ctx)
    listed = [p for _, members in sections for p in members]
    options = [p for p in cmd.get_params(ctx) if isinstance(p, click.Option)]
    assert sorted(id(p) for p in listed) == sorted(id(p) for p in options)
    flags = {f for p in options for f in p.opts}
    for heading, names in cmd.groups.items():
        stale = [n for n in names if n not in flags]
        assert not stale, f"featcache {' '.join(path)}: group {heading!r} names no such option {stale}"


@pytest.mark.parametrize("name", ["train-head", "grid"])
def test_train_head_and_grid_help_has_headings_and_examples(name: str) -> None:
    out = _help((name,))
    headings = ["Data and splits:", "Head:", "Long tail: loss and sampling:", "TFA-LT (--ensemble):",
                "Optimisation:", "Evaluation:", "Output and device:", "Other options:", "Examples:"]
    if name == "grid":
        headings.insert(0, "Grid:")
    where = [out.index(h) for h in headings]
    assert where == sorted(where), "headings in the declared order"
    options = out[:out.index("Data and splits:")]
    assert "Options:" not in options  # no flat list before the sections
    for flag, heading in (("--loss", "Long tail: loss and sampling:"), ("--sampler", "Long tail: loss and sampling:"),
                          ("--ensemble", "TFA-LT (--ensemble):"), ("--lr", "Optimisation:"),
                          ("--cache", "Data and splits:"), ("--device", "Output and device:")):
        section = out[out.index(f"\n{heading}\n"):]
        section = section[:section.index("\n\n", 1)]
        assert f"  {flag} " in section, (flag, heading)
    assert re.search(r"Other options:\n(.*\n)*?\s+-h, --help", out)
    if name == "grid":
        assert "--method" not in out  # train-head's own, not the grid's


def test_an_unmapped_option_falls_into_other_options() -> None:
    @click.command(cls=GroupedCommand, groups={"First": ["--a"]}, examples=("tool --a 1",))
    @click.option("--a", help="In a group.")
    @click.option("--b", help="Added later by someone else.")
    def tool(a: str, b: str) -> None:
        """A tool."""

    out = CliRunner().invoke(tool, ["--help"]).output
    assert out.index("First:") < out.index("--a") < out.index("Other options:") < out.index("--b")
    assert out.rstrip().endswith("tool --a 1")


def _live(kind: str) -> list[str]:
    return SOURCES[kind].live()


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_names_read_from_source_equal_the_live_ones(kind: str) -> None:
    """The source reader (used by --help, without importing torch) sees every registration."""
    read_names.cache_clear()
    assert read_names(kind) == tuple(_live(kind)), (
        f"{kind}: a registration featcache.cli.choices cannot read from the source; register with "
        f"the decorator {SOURCES[kind].decorators or SOURCES[kind].constant} in {SOURCES[kind].files}")


def test_registry_constants_are_the_ones_the_pipelines_check() -> None:
    from featcache.pipelines.grid import SELECT_METRICS
    from featcache.preprocess import TTE_VIEWS

    assert _live("selection metric") == list(SELECT_METRICS)
    assert _live("view") == ["standard", *TTE_VIEWS]


def _option(path: tuple[str, ...], flag: str) -> click.Option:
    cmd = main
    for name in path:
        cmd = cmd.commands[name]
    return next(p for p in cmd.params if flag in p.opts)


@pytest.mark.parametrize(("path", "flag", "registry"), [
    (("train-head",), "--head", "HEADS"), (("train-head",), "--loss", "LOSSES"),
    (("train-head",), "--ensemble-loss", "LOSSES"), (("train-head",), "--sampler", "SAMPLERS"),
    (("grid",), "--head", "HEADS"), (("grid",), "--loss", "LOSSES"), (("grid",), "--sampler", "SAMPLERS"),
    (("finetune",), "--method", "PEFT_METHODS"), (("finetune",), "--loss", "LOSSES"),
])
def test_listed_choices_are_the_registry_names(path: tuple[str, ...], flag: str, registry: str) -> None:
    import featcache

    names = getattr(featcache, registry).names()
    option = _option(path, flag)
    assert isinstance(option.type, NameChoice) and option.type.choices == names
    assert f"Choices: {', '.join(names)}." in _flat(_help(path))


def test_a_newly_registered_head_is_listed_and_accepted_with_no_cli_edit(monkeypatch: pytest.MonkeyPatch) -> None:
    from featcache.heads import HEADS

    monkeypatch.setitem(HEADS._items, "my-probe", type("MyProbe", (), {}))
    assert "my-probe" in _flat(_help(("train-head",))).split("Choices: ", 1)[1]
    cmd = main.commands["train-head"]
    ctx = cmd.make_context("train-head", ["--cache", "c.h5", "--head", "my-probe"])
    assert ctx.params["head"] == "my-probe"


_NO_TORCH = """
import sys
import click
from featcache.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
except click.UsageError as e:
    print("ERROR", e.format_message())
print("TORCH", "torch" in sys.modules)
"""


def _run_without_import(*args: str) -> str:
    out = subprocess.run([sys.executable, "-c", _NO_TORCH, *args], capture_output=True, text=True,
                         check=True)
    return out.stdout


def test_help_and_a_wrong_name_import_no_torch_and_list_the_registry_names() -> None:
    """In a fresh process the names come from the source (no torch): they are the registry's."""
    from featcache.heads import HEADS, LOSSES, SAMPLERS

    out = _run_without_import("train-head", "--help")
    assert out.rstrip().endswith("TORCH False")
    flat = _flat(out)
    for names in (HEADS.names(), LOSSES.names(), SAMPLERS.names()):
        assert f"Choices: {', '.join(names)}." in flat
    out = _run_without_import("train-head", "--cache", "c.h5", "--loss", "focl")
    assert "Did you mean 'focal'?" in out and "TORCH False" in out


def test_a_wrong_loss_name_is_a_did_you_mean_error_listing_the_choices() -> None:
    from featcache.heads import LOSSES

    res = CliRunner().invoke(main, ["train-head", "--cache", "c.h5", "--loss", "focl"])
    assert res.exit_code == 2
    assert "Invalid value for '--loss': Unknown loss 'focl'. Did you mean 'focal'?" in res.output
    assert f"Choose from: {', '.join(LOSSES.names())}." in res.output
    res = CliRunner().invoke(main, ["grid", "--cache", "c.h5", "--select", "balanced_accuracy"])
    assert res.exit_code == 2 and "Did you mean 'balanced_acc'?" in res.output
    res = CliRunner().invoke(main, ["train-head", "--cache", "c.h5", "--view", "tte-c"])
    assert res.exit_code == 2 and "Did you mean 'tte_c'?" in res.output


def test_names_are_matched_case_insensitively_and_passed_on_as_registered() -> None:
    cmd = main.commands["train-head"]
    ctx = cmd.make_context("train-head", ["--cache", "c.h5", "--loss", "LA", "--head", "Cosine"])
    assert (ctx.params["loss"], ctx.params["head"]) == ("la", "cosine")


def _examples() -> list[tuple[str, str]]:
    """(command path, example line) for every example in every command's help and epilog."""
    found = []
    for path, cmd in COMMANDS:
        lines = [*getattr(cmd, "examples", ()),
                 *[line.strip() for line in (cmd.epilog or "").splitlines() if "featcache " in line]]
        found += [(" ".join(path) or "featcache", line) for line in lines]
    return found


EXAMPLES = _examples()


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 2 * len(LEAVES)
    names = {p for p, _ in EXAMPLES}
    assert {"train-head", "grid", "featcache"} <= names


@pytest.mark.parametrize(("where", "line"), EXAMPLES, ids=[f"{w}: {line[:60]}" for w, line in EXAMPLES])
def test_every_example_parses(where: str, line: str) -> None:
    """Each example names real options with valid values (choices, types, required ones)."""
    words = shlex.split(line, comments=True)
    args = words[words.index("featcache") + 1:]
    cmd, path = main, []
    while isinstance(cmd, click.Group):
        name = args.pop(0)
        cmd = cmd.get_command(click.Context(main), name)
        assert cmd is not None, f"{line}: no command {name}"
        path.append(name)
    if where != "featcache":
        assert " ".join(path) == where, f"an example under `{where} --help` runs `{' '.join(path)}`"
    with cmd.make_context(path[-1], args) as ctx:  # parses and validates; runs nothing
        assert ctx.command is cmd


def test_a_source_the_reader_cannot_follow_falls_back_to_importing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A renamed constant or moved registry never leaves an option accepting nothing."""
    from featcache.cli import choices

    moved = choices.Source("featcache.metrics", "METRIC_KEYS", ("metrics.py",), constant="NO_SUCH_NAME")
    monkeypatch.setitem(choices.SOURCES, "selection metric", moved)
    choices.read_names.cache_clear()
    try:
        assert choices.read_names("selection metric") is None
        monkeypatch.setattr(choices, "sys", type("NoModules", (), {"modules": {}}))  # as if not imported
        assert choices.choice_names("selection metric") == list(_live("selection metric"))
    finally:
        choices.read_names.cache_clear()


def test_a_wrong_protocol_is_a_did_you_mean_error() -> None:
    from featcache.splits import PROTOCOLS

    res = CliRunner().invoke(main, ["train-head", "--cache", "c.h5", "--protocol", "tfalt"])
    assert res.exit_code == 2 and "Did you mean 'tfa-lt'?" in res.output
    assert f"Choose from: {', '.join(PROTOCOLS)}." in res.output
