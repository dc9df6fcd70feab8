"""One small registry used for heads, losses, samplers, data sets and fine-tuning methods.

A new component is one class (or function) plus one decorator::

    HEADS = Registry("head")

    @HEADS.register("cosine")
    class CosineHead(nn.Module): ...

Tests iterate registries, so a newly registered component is tested automatically.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from featcache.errors import unknown

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object mapping with helpful errors for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` (lowercase, hyphenated, as users type it).

        A registered class that declares a ``name`` attribute gets it set to ``name``, so an
        instance knows the key it was registered under.
        """
        if name != name.lower() or "_" in name or " " in name:
            raise ValueError(f"{self.kind} names are lowercase and hyphenated, got {name!r}")

        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            if isinstance(obj, type) and hasattr(obj, "name"):
                obj.name = name
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Return the object registered as ``name``; unknown names raise a did-you-mean error."""
        try:
            return self._items[name]
        except KeyError:
            raise unknown(self.kind, name, self._items) from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
