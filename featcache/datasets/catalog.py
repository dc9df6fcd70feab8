"""What ``featcache datasets`` lists: every registered adapter, its layout and its options."""

from __future__ import annotations

import inspect

from featcache.datasets.base import DATASETS


def describe_datasets() -> list[dict]:
    """One dict per registered data set, sorted by name.

    Keys: ``name``; ``layout``, the first line of the adapter's docstring (what to put
    under ``--root``); ``options``, the options on one line (``subset (required), size=None``);
    ``option_specs``, a list of ``{"name", "type", "default", "required"}`` for each keyword
    option of the adapter (``type`` is the annotation as written, ``default`` is ``None``
    for required options).
    """
    rows = []
    for name in DATASETS.names():
        adapter = DATASETS.get(name)
        doc = (inspect.getdoc(adapter) or "").strip()
        options = [
            {
                "name": p.name,
                "type": p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", str(p.annotation)),
                "default": None if p.default is inspect.Parameter.empty else p.default,
                "required": p.default is inspect.Parameter.empty,
            }
            for p in inspect.signature(adapter).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        ]
        text = ", ".join(
            f"{o['name']} (required)" if o["required"] else f"{o['name']}={o['default']!r}" for o in options
        )
        rows.append(
            {"name": name, "layout": doc.splitlines()[0] if doc else "", "options": text, "option_specs": options}
        )
    return rows
