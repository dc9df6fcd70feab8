"""Small parsers and helpers shared by the CLI modules (one home for each)."""

from __future__ import annotations

from collections.abc import Callable

import click

from featcache import knobs
from featcache.errors import INT64_MAX, FeatcacheError, number_problem


def console():  # noqa: ANN201 - rich is imported lazily to keep `--help` fast
    """A rich Console for tables and status lines, with markup off.

    Class names, paths, ids and templates come from users' files; with markup on, a name
    like ``[/]`` would crash the print and ``[red]x`` would restyle it. So nothing printed
    through this console is parsed as markup (table cells and titles included); style
    whole lines with ``print(..., style="bold")`` instead.
    """
    from rich.console import Console

    return Console(markup=False)


def parse_list(option: str, text: str, cast: Callable = str) -> tuple:
    """``"a,b"`` -> ``("a", "b")`` with ``cast`` applied; empty items are dropped."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return tuple(cast(t) for t in items)
    except ValueError:
        raise FeatcacheError(
            f"{option} expects a comma-separated list of {cast.__name__} values, got '{text}'."
        ) from None


def parse_seeds(text: str) -> tuple[int, ...]:
    """``--seeds 0,1,2`` -> ``(0, 1, 2)``."""
    seeds = parse_list("--seeds", text, int)
    if not seeds:
        raise FeatcacheError(f"--seeds expects comma-separated integers like 0,1,2, got '{text}'.")
    bad = [s for s in seeds if not 0 <= s <= INT64_MAX]
    if bad:
        raise FeatcacheError(f"--seeds must be integers from 0 to {INT64_MAX}, got {bad[0]}.")
    return seeds


def parse_pairs(pairs: tuple[str, ...], flag: str) -> dict:
    """``KEY=VALUE`` pairs -> dict (ints, floats and true/false parsed; dashes in keys become underscores).

    Integers beyond int64 and non-finite numbers (``nan``, ``inf``, ``1e400``) are refused
    here, naming the pair: they would end in an OverflowError or a silent nan deep inside.
    """
    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise FeatcacheError(f"{flag} expects KEY=VALUE, got '{pair}'.")
        key, text = pair.split("=", 1)
        value: object = text
        if text.lower() in ("true", "false"):
            value = text.lower() == "true"
        else:
            for cast in (int, float):
                try:
                    value = cast(text)
                    break
                except ValueError:
                    continue
        problem = number_problem(value)
        if problem:
            raise FeatcacheError(f"{flag} {pair}: {key.strip()} {problem}.")
        out[key.strip().replace("-", "_")] = value
    return out


class GroupedCommand(click.Command):
    """A click command whose ``--help`` lists its options under headings and ends with examples.

    ``groups`` maps a heading to option flags (``{"Data": ["--cache", "--view"], ...}``),
    declared next to the command; each section lists its options in that order, and options
    in no group (new ones, say) fall into "Other options" with ``--help``, so none is ever
    hidden. ``examples`` are whole command lines, printed under "Examples" (a long one is
    broken into shell continuation lines, so it still pastes as one command; the tests parse
    each one). An option whose type is a :class:`featcache.cli.choices.NameChoice`
    gets its valid names (from the registry) appended to its help.
    """

    def __init__(self, *args, groups: dict[str, list[str]] | None = None,  # noqa: ANN002
                 examples: tuple[str, ...] | list[str] = (), **kwargs) -> None:  # noqa: ANN003
        super().__init__(*args, **kwargs)
        self.groups = dict(groups or {})
        self.examples = tuple(examples)

    def option_record(self, ctx: click.Context, param: click.Parameter) -> tuple[str, str] | None:
        """click's (flags, help) for ``param``, with the choices of a registry-backed type."""
        record = param.get_help_record(ctx)
        describe = getattr(param.type, "describe", None)
        if record is None or describe is None:
            return record
        flags, text = record
        own = getattr(param, "help", None) or ""
        return flags, f"{own} {describe()}".strip() + text[len(own):]

    def grouped_options(self, ctx: click.Context) -> list[tuple[str, list[click.Parameter]]]:
        """``[(heading, [options...]), ...]``: the groups in order, then "Other options"."""
        options = [p for p in self.get_params(ctx) if isinstance(p, click.Option)]
        by_flag = {flag: p for p in options for flag in (*p.opts, *p.secondary_opts)}
        sections, placed = [], set()
        for heading, flags in self.groups.items():
            members = [by_flag[f] for f in flags if f in by_flag and id(by_flag[f]) not in placed]
            placed.update(id(p) for p in members)
            if members:
                sections.append((heading, members))
        rest = [p for p in options if id(p) not in placed]
        if rest:
            sections.append(("Other options" if sections else "Options", rest))
        return sections

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections = [(heading, [r for r in (self.option_record(ctx, p) for p in members) if r is not None])
                    for heading, members in self.grouped_options(ctx)]
        # One column width for all sections (as click's single "Options" list has): the widest
        # flags, up to click's 30 columns (longer ones put their help on the next line).
        width = min(max((len(flags) for _, records in sections for flags, _ in records), default=0), 30)
        for heading, records in sections:
            if records:
                with formatter.section(heading):
                    _write_dl(formatter, records, width)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        if self.examples:
            with formatter.section("Examples"):
                for line in self.examples:
                    formatter.write(_shell_lines(line, formatter.current_indent, formatter.width or 80))


def _write_dl(formatter: click.HelpFormatter, rows: list[tuple[str, str]], width: int) -> None:
    """click's ``write_dl`` with a given first-column width, wrapping the help text only at
    spaces: names like ``clip-adapter`` or ``rus-fixed`` are never split at their hyphen."""
    import textwrap

    indent = " " * formatter.current_indent
    text_width = max((formatter.width or 80) - formatter.current_indent - width - 2, 20)
    for flags, text in rows:
        lines = textwrap.wrap(text, text_width, break_on_hyphens=False, break_long_words=False)
        if not lines:
            formatter.write(f"{indent}{flags}\n")
            continue
        if len(flags) > width:  # too wide: the help starts on the next line
            formatter.write(f"{indent}{flags}\n")
            flags = ""
        formatter.write(f"{indent}{flags:<{width}}  {lines[0]}\n")
        for line in lines[1:]:
            formatter.write(f"{indent}{'':<{width}}  {line}\n")


def _shell_lines(command: str, indent: int, width: int) -> str:
    """``command`` as shell lines of at most ``width`` columns where it can be, broken before
    an option (an option and its values stay together) with a trailing backslash and the
    continuations indented by four, so that it still pastes as one command."""
    units: list[str] = []
    for word in command.split():
        if units and not word.startswith("-"):
            units[-1] += f" {word}"
        else:
            units.append(word)
    lines, line = [], ""
    for unit in units:
        if line.strip() and indent + len(line) + 1 + len(unit) + 2 > width:
            lines.append(line + " \\")
            line = "   "  # + the joining space: four columns
        line = f"{line} {unit}" if line else unit
    lines.append(line)
    return "".join(f"{' ' * indent}{x}\n" for x in lines)


class KnobOption(click.Option):
    """A click option built from a knob's declaration (:mod:`featcache.knobs`) by
    :func:`knob_option`. ``knob`` is the record; ``help_from`` says where the help text came
    from: ``"knob"`` (the declared text), ``"note"`` (the declared text, then the command's
    note) or ``"own"`` (the command's own text, where the option means something else there)."""

    def __init__(self, *args, knob: knobs.Knob, help_from: str, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.knob = knob
        self.help_from = help_from


def knob_type(k: knobs.Knob) -> click.ParamType | type:
    """The click type of knob ``k``'s option: its choices, its registry's names, a path, or its
    type (a comma list is the text the command parses; a flag is a bool)."""
    if k.choices is not None:  # any case is accepted; the declared spelling is what the run gets
        return click.Choice(list(k.choices), case_sensitive=False)
    if k.names is not None:
        from featcache.cli.choices import NameChoice

        return NameChoice(k.names)
    if k.type == "path":
        return click.Path()
    return str if k.type is tuple else k.type


def knob_option(key: str, *, note: str | None = None, help: str | None = None,  # noqa: A002
                unset: bool = False) -> Callable:
    """The click option of knob ``key``, from its declaration: ``--name`` (the knob's name with
    dashes), its type or choices, its default (as the command line spells it) shown in
    ``--help``, and its declared help. ``note`` appends a command's own sentence to that help
    (``"TFA-LT: stage I."``); ``help`` replaces it where the option means something else in
    that command. ``unset``: the option's default is ``None`` ("not given"), so the command
    leaves the config's default (the declared one) in place."""
    if note is not None and help is not None:
        raise ValueError(f"knob_option({key!r}): give note or help, not both")
    k = knobs.knob(key)
    text = help if help is not None else k.help if note is None else f"{k.help} {note}"
    help_from = "own" if help is not None else "note" if note is not None else "knob"
    flag = "--" + k.name.replace("_", "-")
    common = dict(cls=KnobOption, knob=k, help_from=help_from, help=text)
    if k.type is bool:
        if k.default is not False:
            raise ValueError(f"knob {key}: a flag's default must be False (declare the negative flag)")
        return click.option(flag, is_flag=True, **common)
    default = None if unset else k.cli_default
    return click.option(flag, type=knob_type(k), default=default, metavar=k.metavar,
                        show_default=default not in (None, ""), **common)


def plot_format_option(f: Callable) -> Callable:
    """``--plot-format``: the figure formats knob (commands that write figures reuse it; the
    value goes to :func:`featcache.plots.parse_formats`)."""
    return knob_option("plot_format")(f)
