"""Option values that must name a registered component (``--head``, ``--loss``, ``--sampler``,
``--method``) or one of a library constant's values (``--select``, ``--view``, ``--protocol``).

The registries live in modules that import torch, and ``--help`` must not (it would take
seconds). So the names are read from the source instead: the ``@register_head("name")`` /
``@LOSSES.register("name")`` decorators of the registering modules, or a constant's literal
value, found with :mod:`ast` without importing anything. Once a registry's module is
imported (while a command runs, or in a notebook or test that registers a component of its
own), its live names are used. ``tests/test_cli_help.py`` checks that the names read from
the source equal the live ones, so a newly registered head appears in ``--help`` and is
accepted with no CLI edit; a registration the reader cannot see fails that test.
"""

from __future__ import annotations

import ast
import importlib
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import click

from featcache.errors import did_you_mean

_PACKAGE = Path(__file__).resolve().parent.parent  # featcache/ (heads/, pipelines/ inside it)


@dataclass(frozen=True)
class Source:
    """Where a list of names lives: the object ``module.attribute`` (a Registry or a tuple)
    and, to read it without importing, the files (globs under featcache/) and either the
    decorators that register into it or the name of the constant assigned there."""

    module: str
    attribute: str
    files: tuple[str, ...]
    decorators: tuple[str, ...] = ()  # "register_head", "HEADS.register"
    constant: str | None = None  # a module-level NAME = ("a", "b"), a literal
    extra: tuple[str, ...] = ()  # names listed before the constant's ("standard" views)

    def live(self) -> list[str]:
        obj = getattr(importlib.import_module(self.module), self.attribute)
        names = obj.names() if hasattr(obj, "names") else list(obj)
        return [*self.extra, *[n for n in names if n not in self.extra]]


SOURCES: dict[str, Source] = {
    "head": Source("featcache.heads.base", "HEADS", ("heads/*.py",), ("register_head", "HEADS.register")),
    "loss": Source("featcache.heads.losses", "LOSSES", ("heads/losses.py",), ("LOSSES.register",)),
    "sampler": Source("featcache.heads.samplers", "SAMPLERS", ("heads/samplers.py",),
                      ("register_sampler", "SAMPLERS.register")),
    "fine-tuning method": Source("featcache.peft", "METHODS", ("peft.py",), ("METHODS.register",)),
    "selection metric": Source("featcache.metrics", "METRIC_KEYS", ("metrics.py",), constant="METRIC_KEYS"),
    "view": Source("featcache.preprocess", "TTE_VIEWS", ("preprocess.py",), constant="TTE_VIEWS",
                   extra=("standard",)),
    "protocol": Source("featcache.splits", "PROTOCOLS", ("splits.py",), constant="PROTOCOLS"),
}


def _decorator_name(node: ast.expr) -> str:
    """``register_head`` / ``HEADS.register`` for a decorator ``@...("x")``, else ""."""
    func = node.func if isinstance(node, ast.Call) else node
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return f"{func.value.id}.{func.attr}"
    return ""


@cache
def read_names(kind: str) -> tuple[str, ...] | None:
    """The names of ``kind`` read from the source files, in registry order (sorted) or the
    constant's order; ``None`` when they cannot be read or none is found there (then the
    module is imported instead)."""
    src = SOURCES[kind]
    paths = sorted(p for pattern in src.files for p in _PACKAGE.glob(pattern))
    if not paths:
        return None
    names: list[str] = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            return None
        keys = src.decorators or (src.constant,)
        if not any(key in text for key in keys):
            continue
        tree = ast.parse(text, filename=str(path))
        if src.constant:  # a module-level NAME = (...)
            try:
                names += [n for node in tree.body if isinstance(node, ast.Assign)
                          and any(isinstance(t, ast.Name) and t.id == src.constant for t in node.targets)
                          for n in ast.literal_eval(node.value)]
            except ValueError:  # no longer a literal: import it instead
                return None
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                for dec in node.decorator_list:
                    if (isinstance(dec, ast.Call) and _decorator_name(dec) in src.decorators and dec.args
                            and isinstance(dec.args[0], ast.Constant) and isinstance(dec.args[0].value, str)):
                        names.append(dec.args[0].value)
    if not names:  # moved or renamed: import the real thing rather than accept nothing
        return None
    if src.decorators:
        names = sorted(names)  # Registry.names() is sorted
    return tuple([*src.extra, *[n for n in names if n not in src.extra]])


def choice_names(kind: str) -> list[str]:
    """The valid names of ``kind``: the live ones once their module is imported, else those
    read from the source (no import)."""
    src = SOURCES[kind]
    if src.module in sys.modules:
        return src.live()
    names = read_names(kind)
    return list(names) if names is not None else src.live()


class NameChoice(click.ParamType):
    """A click type accepting one name of ``kind`` (case-insensitively; the canonical name is
    passed on), failing with a did-you-mean message that lists the valid names."""

    def __init__(self, kind: str) -> None:
        if kind not in SOURCES:
            raise ValueError(f"no name source for {kind!r}; add it to featcache.cli.choices.SOURCES")
        self.kind = kind
        self.name = kind

    @property
    def choices(self) -> list[str]:
        return choice_names(self.kind)

    def describe(self) -> str:
        """``"Choices: a, b, c."``: appended to the option's help by GroupedCommand."""
        return f"Choices: {', '.join(self.choices)}."

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:  # noqa: ARG002 - click's signature
        return self.kind.split()[-1].upper()

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        names = self.choices
        if text in names:
            return text
        folded = {n.lower(): n for n in names}
        if text.lower() in folded:
            return folded[text.lower()]
        self.fail(f"Unknown {self.kind} '{text}'.{did_you_mean(text, names)} "
                  f"Choose from: {', '.join(names)}.", param, ctx)

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
        from click.shell_completion import CompletionItem

        return [CompletionItem(n) for n in self.choices if n.startswith(incomplete)]
