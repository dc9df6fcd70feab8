"""Progress bars for long work: one home for how they look and when they are shown.

Every long step (extraction, ``predict --images`` encoding, fine-tuning, the MedMNIST
benchmark, and head training: single heads, both TFA-LT stages, every grid group, every
reproduce row) reports through :func:`bar`: a tqdm bar with epochs, the mean training loss of the last
epoch and an ETA, on stderr. On a terminal it redraws in place; in a log file (stderr not
a terminal) it writes one plain line at most every :data:`LOG_INTERVAL` seconds, plus the
first and the last, instead of carriage-return redraws.

Library code never imports the CLI: whether bars show is a flag the caller passes down
(``progress=False``) or sets for a whole block with :func:`quiet` (``--quiet`` does that);
``None`` means "as the surrounding block says", shown by default.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Iterator
from typing import IO, Any

LOG_INTERVAL = 30.0  # seconds between lines when stderr is not a terminal

_SHOWN: contextvars.ContextVar[bool] = contextvars.ContextVar("featcache_progress", default=True)


def enabled(progress: bool | None = None) -> bool:
    """Whether a bar shows: ``progress`` when given, else the surrounding :func:`quiet` block's."""
    return _SHOWN.get() if progress is None else bool(progress)


@contextlib.contextmanager
def quiet(on: bool = True) -> Iterator[None]:
    """Within this block bars are off (``on=False``: leave them as they are)."""
    token = _SHOWN.set(False) if on else None
    try:
        yield
    finally:
        if token is not None:
            _SHOWN.reset(token)


class _Lines:
    """A stream for tqdm that turns its carriage-return redraws into whole lines (log files)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").replace("\x1b[A", "").rstrip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        getattr(self.stream, "flush", lambda: None)()


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def bar(total: int | None, desc: str, *, unit: str = "epoch", progress: bool | None = None,
        file: IO[str] | None = None, iterable: Any = None, leave: bool = True) -> Any:  # noqa: ANN401 - a tqdm bar
    """A tqdm bar over ``total`` ``unit``\\ s (or over ``iterable``, then ``total`` may be
    ``None``: its length), or a disabled one (same methods, prints nothing). Every bar of
    featcache comes from here: extraction, encoding for ``predict --images``, fine-tuning's
    epochs and evaluation, the MedMNIST benchmark's cells and head training."""
    from tqdm.auto import tqdm

    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    stream = file if file is not None else sys.stderr
    show = enabled(progress) and (total is None or total > 0)
    if not show or _is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not show, file=stream,
                    dynamic_ncols=True, leave=leave)
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=_Lines(stream), ncols=100,
                ascii=True, mininterval=LOG_INTERVAL, maxinterval=LOG_INTERVAL * 4, leave=leave)
