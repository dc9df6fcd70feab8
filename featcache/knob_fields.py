"""``knob_field("lr")``: a config dataclass field whose default, help and source are the knob's
declaration in :mod:`featcache.knobs` (torch-free, so any config module may use it).

The field's metadata holds ``knob`` (the record's key), ``help`` and ``source``;
:func:`knob_of` reads the record back from a field (``tests/test_knob_defaults.py`` checks
every config field named after a knob against it).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from featcache.knobs import Knob, knob


def knob_field(key: str, **kw: Any) -> Any:  # noqa: ANN401 - a dataclass field stands for its value
    """A ``dataclasses.field`` with the default of knob ``key`` and its help and source as metadata."""
    k = knob(key)
    return dataclasses.field(default=k.default, metadata={"knob": k.key, "help": k.help, "source": k.source},
                             **kw)


def knob_of(f: dataclasses.Field) -> Knob | None:
    """The knob a dataclass field was declared from (``None`` for a plain field)."""
    key = f.metadata.get("knob")
    return None if key is None else knob(key)
