"""Small parsers and helpers shared by the CLI modules (one home for each)."""

from __future__ import annotations

from collections.abc import Callable

from featcache.errors import INT64_MAX, FeatcacheError, number_problem

# The registered heads' names, for option help without importing torch (``featcache --help``
# stays fast); tests/test_fast_cli.py checks that it equals ``featcache.HEADS.names()``.
HEAD_NAMES = ("adapter", "clap", "clip-adapter", "cosine", "ensemble-feature", "ensemble-logit", "knn",
              "linear", "logreg", "lp++", "mlp", "taskres", "tip-adapter", "tip-adapter-f", "zeroshot")


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


def plot_format_option(f: Callable) -> Callable:
    """``--plot-format``: the one declaration of the figure formats option (commands that
    write figures reuse it; the value goes to :func:`featcache.plots.parse_formats`)."""
    import click

    return click.option(
        "--plot-format", "plot_format", default="png", show_default=True, metavar="FMT[,FMT]",
        help="Figure formats: png (always written), plus pdf and/or svg for a paper, e.g. "
             "png,pdf. Figures are 150 dpi, never clipped.")(f)
