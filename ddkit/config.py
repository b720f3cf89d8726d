"""Method configurations are typed dataclasses with the spec's defaults; CLI `KEY=VALUE` options
override fields by name, and the resolved config is dumped whole into the output file.

Every value is parsed by the type its field declares (int, float, bool, str): `iterations=2.5` and
`flip=2` are refused with the accepted values named, never truncated or stored as another type.
A config class may define `check()` (no arguments) to refuse bad values: `build_config` calls it,
so a bad option fails before any dataset or teacher is loaded.

Presets: a config class with a `preset` field may define a classmethod
`preset_values(name, **context) -> dict` (context: what the run knows, e.g. `ipc`, `dataset`).
`preset=NAME` then fills every field the preset names, and the options given explicitly beside it
override the preset's values; the file records the preset's name and every resolved value."""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import typing

from ddkit.errors import InvalidInput

_INTEGER = re.compile(r"^[+-]?\d+$")
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
ACCEPTED = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}


def parse_pairs(pairs, flag: str = "--config") -> dict[str, str]:
    """`KEY=VALUE` strings (a list, or one comma-separated string) as a dict of raw strings: each
    value is parsed later by the type of the field it sets. `flag` names the option in errors."""
    if isinstance(pairs, str):
        pairs = [p for p in pairs.split(",") if p.strip()]
    out = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"{flag} {pair!r} is not KEY=VALUE", f"e.g. {flag} iterations=100")
        out[key.strip()] = value
    return out


def parse_value(value, kind: type):
    """`value` (a string from the command line, or an already typed value) as `kind`; ValueError
    when it is not one (a float for an int, 2 for a bool, a NaN for a float)."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and _INTEGER.match(value.strip()):
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
            else:
                if math.isfinite(number):
                    return number
    elif kind is str:
        if isinstance(value, str):
            return value
    else:
        return value  # a type the parser does not know: the dataclass takes it as given
    raise ValueError(f"{value!r} is not {ACCEPTED[kind]}")


def show_value(value) -> str:
    """A default as the user would type it after `KEY=`."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def build_config(cls: type, overrides: dict | None = None, owner: str = "method", context: dict | None = None):
    """An instance of dataclass `cls` with `overrides` applied (after the values of a `preset`
    among them, resolved with `context`); unknown names and values of the wrong type are a clear
    error naming the accepted values."""
    overrides = dict(overrides or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise InvalidInput(f"{owner} has no option {', '.join(unknown)}", f"its options are: {', '.join(fields) or '(none)'}")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in overrides.items():
        kind = hints.get(key)
        try:
            values[key] = parse_value(value, kind)
        except ValueError:
            default = fields[key].default
            example = f", e.g. --config {key}={show_value(default)}" if default is not dataclasses.MISSING else ""
            raise InvalidInput(f"{owner} option {key}={value!r} must be {ACCEPTED[kind]}",
                               f"give {key} {ACCEPTED[kind]}{example}") from None
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
