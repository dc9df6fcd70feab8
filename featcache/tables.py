"""Terminal tables that read well at any width: numbers and headers are never cut.

A rich table squeezed into a narrow console (an 80-column terminal, or a log file, where rich
assumes 80 columns) wraps "mean ± std" cells over two lines and cuts numbers and headers
to ``0.00…``. Here a command offers its table in a few layouts, widest first
(:func:`print_fitting`): the first whose natural width fits the console is printed; when
none fits, the last (most compact) is printed at its natural width, uncropped, so every line
of a log file holds one whole row.

:func:`fmt_number` writes knob values (5e-4 stays ``5e-4``); :func:`mean_std` the cells.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def fmt_number(value: object) -> str:
    """A knob value as text: floats in the shortest form that keeps them exact to 6 digits,
    with small and large ones in compact scientific notation (``5e-4``, ``1e+06``)."""
    if isinstance(value, bool) or not isinstance(value, float):
        return "–" if value is None else str(value)
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
        mantissa, exp = f"{value:.6e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        sign, digits = exp[0], exp[1:].lstrip("0") or "0"
        return f"{mantissa}e{'-' if sign == '-' else '+'}{digits}"
    return f"{value:.6g}"


def mean_std(mean: float | None, std: float | None, *, compact: bool = False,
             scale: float = 100.0, digits: int = 2) -> str:
    """``81.23 ± 0.40`` (percent by default), ``81.23±0.40`` when ``compact``, the mean alone
    when ``std`` is None, ``–`` when there is no mean."""
    if mean is None or not math.isfinite(mean):
        return "–"
    text = f"{scale * mean:.{digits}f}"
    if std is None or not math.isfinite(std):
        return text
    return text + ("±" if compact else " ± ") + f"{scale * std:.{digits}f}"


def table_width(console, table) -> int:  # noqa: ANN001
    """The width ``table`` takes when nothing limits it."""
    from rich.measure import Measurement

    wide = console.options.update(width=10_000, max_width=10_000)
    return Measurement.get(console, wide, table).maximum


def print_fitting(console, tables: Sequence, *, shrink=None) -> int:  # noqa: ANN001
    """Print the first of ``tables`` that fits ``console``'s width; if none does, ``shrink(n)``
    (when given: the last layout made ``n`` columns narrower, e.g. its names wrapped by
    :func:`wrap_name`, or ``None`` when it cannot be) if that fits, else the last one at its
    natural width, uncropped (lines longer than the console, never cut). Returns the index
    of the layout printed (the last one's for a shrunk table)."""
    for i, table in enumerate(tables):
        width = table_width(console, table)
        if width <= console.width:
            console.print(table)
            return i
    narrower = shrink(width - console.width) if shrink is not None else None
    if narrower is not None and table_width(console, narrower) <= console.width:
        console.print(narrower)
        return len(tables) - 1
    # print(width=...) cannot exceed the console's width: widen the console for this table
    narrow = console.width
    console.width = width
    try:
        console.print(tables[-1], crop=False)
    finally:
        console.width = narrow
    return len(tables) - 1


def plain_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, title: str = "",
                right: Sequence[bool] | None = None, compact: bool = False):  # noqa: ANN201
    """A rich Table whose cells never wrap or shrink (each column as wide as its widest cell
    or header; a cell with newlines, e.g. from :func:`wrap_name`, takes several lines);
    ``right[i]`` right-aligns column i; ``compact`` drops the box lines."""
    from rich import box
    from rich.table import Table

    table = Table(title=title or None, box=box.SIMPLE_HEAD if compact else box.HEAVY_HEAD,
                  pad_edge=not compact, show_edge=not compact,
                  padding=(0, 0, 0, 1) if compact else (0, 1))
    for i, head in enumerate(headers):
        width = max([len(head), *(len(line) for r in rows for line in r[i].split("\n"))])
        table.add_column(head, justify="right" if right and right[i] else "left",
                         min_width=width, no_wrap=True)
    for r in rows:
        table.add_row(*r)
    return table


def print_runs(console, frame, *, title: str = "", **kwargs: object) -> int:  # noqa: ANN001
    """Print :func:`featcache.runs.rich_table` of ``frame`` in the widest layout that fits:
    mean ± std, then the compact ``81.23±0.40``, then means only (said in the title).
    ``kwargs`` go to ``rich_table``. Returns the index of the layout printed."""
    from featcache.runs import rich_table

    means_title = ((title + " — " if title else "")
                   + "means over seeds, %; ± std: widen the terminal, or see metrics.json")
    return print_fitting(console, [
        rich_table(frame, title=title, **kwargs),
        rich_table(frame, title=title, compact=True, **kwargs),
        rich_table(frame, title=means_title, compact=True, std=False, **kwargs),
    ])


def common_prefix(names: Sequence[str], *, sep: str = "-", min_chars: int = 8) -> str:
    """The longest prefix, ending in ``sep``, that every one of two or more ``names`` shares
    and that leaves something of each (``""`` when shorter than ``min_chars``): default run
    names repeat the cache's (``isic2018-tiny-clip-random-tte-...``), which a terminal table
    can show once instead of on every row."""
    if len(names) < 2:
        return ""
    first, prefix = names[0], ""
    for i, ch in enumerate(first):
        if ch == sep and all(n.startswith(first[: i + 1]) and len(n) > i + 1 for n in names):
            prefix = first[: i + 1]
    return prefix if len(prefix) >= min_chars else ""


def wrap_name(name: str, width: int) -> str:
    """``name`` on lines of at most ``width`` characters joined by newlines, broken after
    ``-``, ``_``, ``/``, ``=``, ``.``, ``,`` or a space where it can be, inside a word only
    where a word is longer than ``width``; no character is lost (``"".join`` of the lines, less
    the spaces broken at, gives back ``name``). For run names too long for a narrow terminal."""
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    words, word = [], ""
    for ch in name:
        word += ch
        if ch in "-_/=., ":
            words.append(word)
            word = ""
    if word:
        words.append(word)
    lines, line = [], ""
    for w in words:
        while len(w) > width:  # a word longer than a line: split it
            if line:
                lines.append(line)
                line = ""
            lines.append(w[:width])
            w = w[width:]
        if len((line + w).rstrip(" ")) <= width:
            line += w
        else:
            lines.append(line)
            line = w
    if line:
        lines.append(line)
    return "\n".join(ln.rstrip(" ") for ln in lines)
