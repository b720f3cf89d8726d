"""One small name -> factory registry, shared by models, datasets, synthesizers, selectors and protocols.

Every pluggable thing in ddkit is registered by name with a decorator, listed by `ddkit list`, and
iterated over by the tests, so a newly registered entry is tested without anyone writing a test for it.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from ddkit.errors import DdkitError


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]
    summary: str
    tags: dict = field(default_factory=dict)


class Registry:
    """Maps names to factories for one kind of thing (e.g. "model").

    A duplicate name is a programming error; an unknown name is a user error that suggests the
    closest registered names.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, summary: str | None = None, **tags) -> Callable:
        def decorator(factory: Callable) -> Callable:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            doc = summary or (factory.__doc__ or "").strip().splitlines()[0:1]
            text = doc if isinstance(doc, str) else (doc[0] if doc else "")
            self._entries[name] = Entry(name, factory, text, dict(tags))
            return factory

        return decorator

    def entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._entries), n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(self.names())}"
            raise DdkitError(f"unknown {self.kind} {name!r}", f"{hint} (`ddkit list` shows all)") from None

    def get(self, name: str) -> Callable:
        return self.entry(name).factory

    def create(self, name: str, *args, **kwargs):
        return self.get(name)(*args, **kwargs)

    def names(self, pattern: str = "*", **tags) -> list[str]:
        return sorted(
            n
            for n, e in self._entries.items()
            if fnmatch.fnmatch(n, pattern) and all(e.tags.get(k) == v for k, v in tags.items())
        )

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
