"""User-facing errors.

Every error a user can cause (a missing file, a malformed CSV row, an unknown name, a
mismatched cache) is raised as :class:`FeatcacheError` with a message that names what was
wrong and how to fix it. The CLI prints these messages to stderr without a traceback and
exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable

INT64_MAX = 2**63 - 1  # the largest integer torch and numpy take


class FeatcacheError(Exception):
    """An error caused by the user's input; its message is shown as is."""


class CacheError(FeatcacheError):
    """A cache file is missing, incomplete, or does not match what was asked for."""


class DataError(FeatcacheError):
    """A data set on disk is missing, malformed, or inconsistent."""


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The choice ``name`` most likely meant, or ``None``: one that differs only in case
    first (``ISIC2018`` -> ``isic2018``, ``vit-b-16`` -> ``ViT-B-16``), then the closest
    spelling ignoring case (``vit-b-61`` -> ``ViT-B-16``)."""
    choices = list(choices)
    folded = {}
    for c in choices:
        folded.setdefault(c.casefold(), c)
    if name.casefold() in folded:
        return folded[name.casefold()]
    close = difflib.get_close_matches(name.casefold(), list(folded), n=1, cutoff=0.6)
    return folded[close[0]] if close else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for :func:`closest`'s choice, or ``""`` when none is close."""
    close = closest(name, choices)
    return f" Did you mean '{close}'?" if close else ""


def unknown(kind: str, name: str, choices: Iterable[str]) -> FeatcacheError:
    """Build the standard "Unknown head 'cosin'. Did you mean 'cosine'?" error."""
    choices = sorted(choices)
    return FeatcacheError(
        f"Unknown {kind} '{name}'.{did_you_mean(name, choices)} Choose from: {', '.join(choices)}."
    )


def number_problem(value: object) -> str | None:
    """Why ``value`` cannot be a setting (``"must be a finite number"``, ``"is out of range
    ..."``), or ``None`` when it can. One home for the check every option parser and config
    uses: nan/inf train to chance with exit 0, an integer beyond int64 ends in an
    OverflowError deep in torch or numpy."""
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64_MAX:
        return f"is out of range (at most {INT64_MAX})"
    return None
