"""docs/KNOBS.md lists every option of train-head, grid, reproduce tfa-lt, finetune and compare,
the numeric defaults it states are the options' defaults, and its "Every declared knob" table
is the one generated from featcache/knobs.py."""

from __future__ import annotations

import re
from pathlib import Path

import click

from featcache.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "KNOBS.md"
SECTIONS = {"train-head": "## Heads on cached features", "grid": "## Grids", "reproduce tfa-lt": "## `reproduce tfa-lt`",
            "finetune": "## LIFT fine-tuning", "compare": "## Every method side by side"}
BEGIN, END = "<!-- generated: knobs begin -->\n", "<!-- generated: knobs end -->"


def _command(name: str) -> click.Command:
    cmd = main
    for part in name.split():
        cmd = cmd.commands[part]
    return cmd


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def _rows(section: str) -> dict[str, str]:
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\| `(--[a-z-]+)` \| ([^|]*) \|", section, re.M)}


def test_every_option_is_in_the_knob_table_with_its_default() -> None:
    text = DOC.read_text()
    train_head = _rows(_section(text, SECTIONS["train-head"]))
    for name, heading in SECTIONS.items():
        rows = _rows(_section(text, heading))
        if name == "grid":
            rows = {**train_head, **rows}  # the grid reuses train-head's options
        for p in _command(name).params:
            if not isinstance(p, click.Option) or p.name in ("help",):
                continue
            long = next(o for o in p.opts if o.startswith("--"))
            assert long in rows, f"{name} {long} is not in docs/KNOBS.md"
            try:
                stated = float(rows[long].split()[0])
            except (ValueError, IndexError):
                continue
            if isinstance(p.default, int | float) and not isinstance(p.default, bool):
                assert stated == float(p.default), f"{name} {long}: docs say {rows[long]}, the option's default is {p.default}"


def test_the_declared_knobs_table_is_generated_from_knobs_py() -> None:
    from featcache.knobs import KNOBS, markdown_table

    text = DOC.read_text()
    table = text[text.index(BEGIN) + len(BEGIN):text.index(END)]
    assert table == markdown_table(), (
        "docs/KNOBS.md's 'Every declared knob' is stale: replace the lines between its markers with "
        "the output of `python -m featcache.knobs`")
    assert all(f"| `{key}` |" in table for key in KNOBS)
