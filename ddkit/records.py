"""Typed records from untrusted JSON: every header field checked against its annotation.

A file header (distilled, selection, teacher, pool) is JSON someone else wrote. `record_fields`
reads a JSON object into the fields of a dataclass, checking each value against the field's type
annotation (str, int, float, bool, None, list[...], tuple[...], dict[str, ...], unions and nested
records with `from_dict`), so a string where an integer belongs is refused at once with a message
naming the field ("dataset.image_shape[1] must be an integer, got str 'x'"), instead of surfacing
later as a traceback far from the file.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import types
import typing
from typing import Any

from ddkit.errors import FileFormatError, InvalidInput

_NAMES = {dict: "a JSON object", list: "a list", str: "a string", int: "an integer", float: "a number",
          bool: "true or false", type(None): "null"}


def parse_json(data: bytes | str, where: str, fix: str = "re-create the file with ddkit") -> Any:
    """JSON text from an untrusted file, or one FileFormatError naming `where`: not UTF-8, not JSON,
    or nested so deeply that the parser would exhaust the stack (a list nested 10^5 deep is a few
    hundred kilobytes)."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text)
    except UnicodeDecodeError as exc:
        raise FileFormatError(f"{where} is not UTF-8 text ({exc.reason} at byte {exc.start})", fix) from None
    except json.JSONDecodeError as exc:
        raise FileFormatError(f"{where} is not valid JSON ({exc})", fix) from None
    except RecursionError:
        raise FileFormatError(f"{where} nests JSON values too deeply to be a ddkit record", fix) from None


def printable(value: Any) -> str:
    """`value` as text safe to print to a terminal: control characters (escape sequences, newlines,
    carriage returns) and other unprintable ones (bidirectional overrides) shown as backslash escapes,
    so a name from someone else's file can neither rewrite the screen nor fake another line."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _got(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:39] + '…'}"


def check_value(value: Any, hint: Any, where: str) -> Any:
    """`value` checked against the annotation `hint` (tuples come back as tuples); InvalidInput names `where`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return check_value(value, option, where)
            except InvalidInput as exc:
                errors.append(exc)
        if len(options) == 1:
            raise errors[0]
        raise InvalidInput(f"{where} must be one of {', '.join(map(_describe, args))}, got {_got(value)}")
    if hasattr(hint, "from_dict"):
        if not isinstance(value, dict):
            raise InvalidInput(f"{where} must be a JSON object, got {_got(value)}")
        takes_where = "where" in inspect.signature(hint.from_dict).parameters
        return hint.from_dict(value, where=where) if takes_where else hint.from_dict(value)
    if hint is type(None):
        if value is not None:
            raise InvalidInput(f"{where} must be null, got {_got(value)}")
        return None
    if hint is bool:
        if not isinstance(value, bool):
            raise InvalidInput(f"{where} must be true or false, got {_got(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f"{where} must be an integer, got {_got(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidInput(f"{where} must be a finite number, got {_got(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise InvalidInput(f"{where} must be a string, got {_got(value)}")
        return value
    if (origin or hint) in (list, tuple):
        if not isinstance(value, list | tuple):
            raise InvalidInput(f"{where} must be a list, got {_got(value)}")
        if args and args[-1] is not Ellipsis and (origin or hint) is tuple:
            if len(value) != len(args):
                raise InvalidInput(f"{where} must have {len(args)} entries, got {len(value)}")
            items = [check_value(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item = args[0] if args else Any
            items = [check_value(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin or hint) is tuple else items
    if (origin or hint) is dict:
        if not isinstance(value, dict):
            raise InvalidInput(f"{where} must be a JSON object, got {_got(value)}")
        item = args[1] if len(args) == 2 else Any
        return {k: check_value(v, item, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"check_value cannot check annotation {hint!r}")  # a ddkit bug, not bad input


def _describe(hint: Any) -> str:
    return _NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def record_fields(cls: type, data: Any, where: str, names: typing.Iterable[str] | None = None,
                  allow_extra: bool = False) -> dict[str, Any]:
    """The fields of dataclass `cls` (all, or `names`) read from the JSON object `data`, each typed.

    A field with a default may be missing; one without is an error, as is a key `cls` does not
    have unless `allow_extra` (a typo or a field of a newer schema is not silently dropped).
    `where` prefixes messages.
    """
    if not isinstance(data, dict):
        raise InvalidInput(f"{where} must be a JSON object, got {_got(data)}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    wanted = list(names) if names is not None else list(known)
    unknown = sorted(set(data) - set(known)) if names is None and not allow_extra else []
    if unknown:
        raise InvalidInput(f"{where} has unknown field(s) {', '.join(map(repr, unknown))}")
    out: dict[str, Any] = {}
    for name in wanted:
        f = known[name]
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise InvalidInput(f"{where}.{name} is missing")
            continue
        out[name] = check_value(data[name], hints[name], f"{where}.{name}")
    return out


def check_positive(value: int, where: str, limit: int | None = None) -> int:
    """Refuse an integer below 1 (or above `limit`) with a message naming `where`."""
    if value < 1 or (limit is not None and value > limit):
        bound = f" and at most {limit}" if limit is not None else ""
        raise InvalidInput(f"{where} must be at least 1{bound}, got {value}")
    return value
