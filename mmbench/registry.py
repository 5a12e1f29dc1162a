"""A small typed registry (after lm-eval's): lazy "module:attr" entries, no duplicates,
"did you mean" on a miss. Registration is explicit in one table per kind, never by import side effects."""

from __future__ import annotations

import difflib
import importlib
from typing import Generic, TypeVar

from mmbench.errors import MmbenchError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, entries: dict[str, str] | None = None):
        self.kind = kind
        self._entries: dict[str, str | T] = {}
        for name, target in (entries or {}).items():
            self.register(name, target)

    def register(self, name: str, target: str | T) -> None:
        if name in self._entries:
            raise MmbenchError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = target

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise MmbenchError(unknown_name_message(self.kind, name, self.names()))
        target = self._entries[name]
        if isinstance(target, str) and ":" in target:
            module, attr = target.split(":", 1)
            target = getattr(importlib.import_module(module), attr)
            self._entries[name] = target
        return target  # type: ignore[return-value]


def unknown_name_message(kind: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {kind} {name!r}{hint} (known: {', '.join(known) or 'none'})"


# The methods (one per paper's model + training procedure), by name. This table lives on the lowest
# floor so the engine and the recipe loader depend on it alone; `mmbench.papers` stays a leaf that
# nothing below it imports, and a method module is imported only when its name is asked for.
method_registry: Registry = Registry(
    "method",
    {
        "text_tmsc": "mmbench.papers.baselines.method:TextTMSC",
        "itm": "mmbench.papers.itm.method:ITM",
        "dtca": "mmbench.papers.dtca.method:DTCA",
        "cmcs": "mmbench.papers.cmcs.method:CMCS",
        "sppscl": "mmbench.papers.sppscl.method:SPPSCL",
        "dcpa": "mmbench.papers.dcpa.method:DCPA",
    },
)
