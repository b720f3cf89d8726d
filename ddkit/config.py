"""Method configurations are typed dataclasses with the spec's defaults; CLI `KEY=VALUE` options
override fields by name, and the resolved config is dumped whole into the output file.

A config class may define `check()` (no arguments) to refuse bad values: `build_config` calls it,
so a bad option fails before any dataset or teacher is loaded.

Presets: a config class with a `preset` field may define a classmethod
`preset_values(name, **context) -> dict` (context: what the run knows, e.g. `ipc`, `dataset`).
`preset=NAME` then fills every field the preset names, and the options given explicitly beside it
override the preset's values; the file records the preset's name and every resolved value."""

from __future__ import annotations

import dataclasses
import inspect
import typing

from ddkit.errors import InvalidInput


def build_config(cls: type, overrides: dict | None = None, owner: str = "method", context: dict | None = None):
    """An instance of dataclass `cls` with `overrides` applied (after the values of a `preset`
    among them, resolved with `context`); unknown names are a clear error."""
    overrides = dict(overrides or {})
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise InvalidInput(f"{owner} has no option {', '.join(unknown)}", f"its options are: {', '.join(names) or '(none)'}")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in overrides.items():
        kind = hints.get(key)
        try:
            if kind is bool and isinstance(value, str):
                value = {"true": True, "false": False, "1": True, "0": False}[value.lower()]
            elif kind in (int, float, str) and not isinstance(value, kind):
                value = kind(value)
        except (KeyError, ValueError):
            raise InvalidInput(f"{owner} option {key}={value!r} is not a valid {getattr(kind, '__name__', kind)}") from None
        values[key] = value
    if values.get("preset"):
        resolve = getattr(cls, "preset_values", None)
        if resolve is None:
            raise InvalidInput(f"{owner} has no presets")
        values = {**resolve(values["preset"], **(context or {})), **values}
    config = cls(**values)
    check = getattr(config, "check", None)
    if callable(check) and all(p.default is not p.empty for p in inspect.signature(check).parameters.values()):
        check()
    return config
