"""What every registered thing is and takes, for `ddkit list` and `ddkit describe NAME`.

Everything is read from the code, so it cannot drift from it: a method's options from its config
dataclass (type, default, and the comment written beside the field as its meaning), what it needs
from `min_teachers`/`max_teachers` and the options whose comment says "required", a model's options
from its constructor's signature, a protocol's whole recipe from its record.

Building this imports every registry, and with them torch (seconds). The result is kept as JSON in
$DDKIT_CACHE/registry-index/, under a key made of ddkit's version and the size and modification time
of every ddkit source file: any edit makes a new key, so a cached index is always of the code that
runs, and `ddkit list` / `ddkit describe` after the first run start without importing torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import io
import json
import os
import sys
import textwrap
import tokenize
import typing
from pathlib import Path

import ddkit
from ddkit.errors import InvalidInput

INDEX_FORMAT = 1
KIND_WORDS = {"models": "model", "datasets": "dataset", "synthesizers": "synthesizer", "selectors": "selector",
              "protocols": "protocol"}

# The protocols each method's numbers in BENCHMARKS.md were measured under (bare names: the newest
# version; sections `random-baselines`, `nrr-dd`, `infer`, `matching`, `seed-methods-v2`, `active-learning`,
# `kd3`). A test keeps every registered method listed here and every name a registered protocol.
BENCHMARK_PROTOCOLS = {
    "synthesizers": {
        "random-real": ("hard-cpu", "teacher-cpu"), "herding": ("hard-cpu", "teacher-cpu"), "kcenter": ("hard-cpu",),
        "dm": ("hard-cpu", "teacher-cpu"), "mtt": ("hard-cpu",), "infer": ("stored-cpu", "teacher-cpu"),
        "nrr-dd": ("teacher-cpu", "dbr-cpu", "hard-cpu"),
    },
    "selectors": {"kd3": ("teacher-cpu",), "random": ("active-cpu", "hard-cpu")},
    "active-default": ("active-cpu",),  # every acquisition-rule selector (pcoreset, entropy, ...): `ddkit active-learn`
}


def cache_home() -> Path:
    return Path(os.environ.get("DDKIT_CACHE") or Path.home() / ".cache" / "ddkit")


def source_key() -> str:
    """A digest of ddkit's version and the size and mtime of each of its source files."""
    root = Path(ddkit.__file__).parent
    h = hashlib.sha256(f"{INDEX_FORMAT} {ddkit.__version__} {sys.version_info[:2]}".encode())
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(f for f in files if f.endswith(".py")):
            st = os.stat(os.path.join(folder, name))
            h.update(f"{os.path.relpath(os.path.join(folder, name), root)} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def registry_index() -> dict:
    """The index of every registry (see the module docstring), from the cache when it is current."""
    path = cache_home() / "registry-index" / f"{source_key()}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    index = build_index()
    try:
        from ddkit.fileio import atomic_output

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path, overwrite=True) as tmp:
            Path(tmp).write_text(json.dumps(index))
    except (OSError, ddkit.errors.DdkitError):
        pass  # a read-only cache: the index is rebuilt on every run, which is only slower
    return index


# -- building the index (imports every registry) ---------------------------------------------------


def field_comments(cls: type) -> dict[str, str]:
    """The comment written after each field of dataclass `cls` in its source (`x: int = 3  # why`)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    out, pending = {}, None
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 4 and tok.string in names and pending is None:
            pending = tok.string
        elif tok.type == tokenize.COMMENT and pending:
            out[pending] = tok.string.lstrip("#").strip()
        elif tok.type == tokenize.NEWLINE:
            pending = None
    return out


def _type_name(kind) -> str:
    return getattr(kind, "__name__", None) or str(kind).replace("typing.", "")


def _json_value(value):
    if isinstance(value, (set, frozenset, list, tuple)):
        return sorted(map(str, value)) if isinstance(value, (set, frozenset)) else [_json_value(v) for v in value]
    return value if isinstance(value, (bool, int, float, str, type(None))) else repr(value)


def config_options(cls: type) -> list[dict]:
    """Each field of a config dataclass: name, type, default and the comment beside it."""
    if not dataclasses.is_dataclass(cls):
        return []
    hints, comments = typing.get_type_hints(cls), field_comments(cls)
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        out.append({"name": f.name, "type": _type_name(hints.get(f.name)), "default": _json_value(default),
                    "meaning": comments.get(f.name, "")})
    return out


def _method_detail(kind: str, name: str, factory) -> dict:
    cls = factory if inspect.isclass(factory) else type(factory)
    config = getattr(cls, "Config", None)
    options = config_options(config)
    needs = []
    low, high = getattr(cls, "min_teachers", 0), getattr(cls, "max_teachers", None)
    rule = getattr(cls, "rule", None)
    if rule is not None and rule.needs_student:  # an active-learning round whose student is trained
        needs.append("a teacher (--teacher or --teacher-logits) for its student's distillation (distill=true); "
                     "with --config distill=false the student trains on --labeled samples instead")
    elif low:
        needs.append(f"at least {low} teacher(s): --teacher FILE (`ddkit teacher train`)")
    elif high == 0:
        needs.append("no teacher (it takes none)")
    else:
        needs.append("no teacher required" + (f" (at most {high})" if high else ""))
    if getattr(cls, "uses_inputs", False):
        needs.append("takes --labeled (the samples labeled so far: one active-learning round) and --teacher-logits")
    needs += [f"--config {o['name']}=…: {o['meaning']}" for o in options if "required" in o["meaning"]]
    table = BENCHMARK_PROTOCOLS[kind]
    protocols = table.get(name) or (BENCHMARK_PROTOCOLS["active-default"] if getattr(cls, "rule", None) else ())
    config_doc = inspect.cleandoc(config.__doc__ or "") if dataclasses.is_dataclass(config) else ""
    return {"doc": inspect.cleandoc(cls.__doc__ or ""), "version": str(getattr(cls, "version", "")),
            "config_doc": "" if config_doc.startswith(f"{config.__name__}(") else config_doc,  # dataclass's own repr
            "options": options, "needs": needs, "protocols": list(protocols), "options_flag": "--config"}


def _model_detail(factory) -> dict:
    fixed = ("in_channels", "image_size", "num_classes")
    options = [{"name": p.name, "type": type(p.default).__name__ if p.default is not p.empty else "",
                "default": _json_value(p.default) if p.default is not p.empty else None, "meaning": ""}
               for p in inspect.signature(factory).parameters.values() if p.name not in fixed]
    return {"doc": inspect.cleandoc(factory.__doc__ or ""), "options": options, "needs": [], "protocols": [],
            "options_flag": "--model-opt (teachers, experts) or the method option naming the net's options"}


def _protocol_detail(protocol) -> dict:
    return {"doc": "", "recipe": protocol.to_dict(), "options": [], "needs": (
        ["--teacher FILE: the teachers relabel every view"] if protocol.label_source == "teacher" else
        ["a label payload stored in the file (logits or dbr), and --teacher FILE for the random baseline's"]
        if protocol.label_source == "stored" else []), "protocols": []}


def build_index() -> dict:
    """Every registry's entries with a summary, and a detail record for each (see `describe`)."""
    from ddkit.registries import all_registries

    kinds, details = {}, {}
    for kind, registry in all_registries().items():
        kinds[kind] = [{"name": e.name, "summary": e.summary, "tags": {k: _json_value(v) for k, v in e.tags.items()}}
                       for e in registry.entries()]
        for e in registry.entries():
            if kind in ("synthesizers", "selectors"):
                detail = _method_detail(kind, e.name, e.factory)
            elif kind == "models":
                detail = _model_detail(e.factory)
            elif kind == "protocols":
                detail = _protocol_detail(e.factory())
            else:
                own_doc = inspect.isfunction(e.factory) or inspect.isclass(e.factory)  # not an object's class doc
                doc = inspect.cleandoc(e.factory.__doc__ or "") if own_doc else ""
                detail = {"doc": doc, "options": [], "needs": [], "protocols": []}
            details[f"{kind}/{e.name}"] = detail
    for key, detail in details.items():  # a protocol lists the methods benchmarked under it
        kind, _, name = key.partition("/")
        for protocol in detail["protocols"] if kind in ("synthesizers", "selectors") else ():
            for version in kinds["protocols"]:
                if version["name"].rpartition("@")[0] == protocol:
                    details[f"protocols/{version['name']}"].setdefault("methods", []).append(name)
    return {"format": INDEX_FORMAT, "version": ddkit.__version__, "kinds": kinds, "details": details}


# -- reading it ---------------------------------------------------------------------------------


def lookup(index: dict, name: str, kind: str | None = None) -> list[tuple[str, dict, dict]]:
    """(kind, entry, detail) of every entry called `name` (a protocol also by its bare name: the newest)."""
    found = []
    for k, entries in index["kinds"].items():
        if kind and k != kind:
            continue
        by_name = {e["name"]: e for e in entries}
        hit = by_name.get(name)
        if hit is None and k == "protocols" and "@" not in name:
            versions = sorted((e for e in entries if e["name"].rpartition("@")[0] == name),
                              key=lambda e: int(e["name"].rpartition("@")[2]))
            hit = versions[-1] if versions else None
        if hit is not None:
            found.append((k, hit, index["details"][f"{k}/{hit['name']}"]))
    if not found:
        import difflib

        names = sorted({e["name"] for k, es in index["kinds"].items() if not kind or k == kind for e in es})
        close = difflib.get_close_matches(name, names, n=3)
        raise InvalidInput(f"nothing registered is called {name!r}" + (f" among {kind}" if kind else ""),
                           f"did you mean {', '.join(close)}?" if close else "`ddkit list` shows every name")
    return found


def render(kind: str, entry: dict, detail: dict) -> str:
    """The text `ddkit describe` prints for one entry."""
    word = KIND_WORDS.get(kind, kind.rstrip("s"))
    version = f" version {detail['version']}" if detail.get("version") else ""
    lines = [f"{entry['name']}  ({word}{version}): {entry['summary']}"]
    doc = detail.get("doc", "").splitlines()
    if doc and doc[0].strip() == entry["summary"].strip():  # the summary line is printed already
        doc = doc[1:]
    while doc and not doc[0].strip():
        doc = doc[1:]
    if doc:
        lines += ["", *(f"  {line}" for line in doc)]
    if detail.get("recipe"):
        lines += ["", "recipe:"]
        for key, value in detail["recipe"].items():
            if key not in ("summary",):
                lines.append(f"  {key:<14} {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    if detail.get("options"):
        flag = detail.get("options_flag", "")
        lines += ["", f"options ({flag} KEY=VALUE):" if flag.startswith("--config") else f"options ({flag}):"]
        lines += [f"  {line}" for line in detail.get("config_doc", "").splitlines()]
        width = max(len(o["name"]) for o in detail["options"])
        for o in detail["options"]:
            default = json.dumps(o["default"]) if not isinstance(o["default"], str) else repr(o["default"])
            lines.append(f"  {o['name']:<{width}}  {o['type']:<5} default {default:<10} {o['meaning'] or '—'}")
    if detail.get("needs"):
        lines += ["", "needs:", *(f"  {n}" for n in detail["needs"])]
    if detail.get("protocols"):
        lines += ["", "benchmarked under (BENCHMARKS.md): " + ", ".join(detail["protocols"])
                  + "  — `ddkit describe PROTOCOL` shows a recipe"]
    if detail.get("methods"):
        lines += ["", "methods benchmarked under this protocol's name: " + ", ".join(sorted(set(detail["methods"])))]
    tags = {k: v for k, v in entry.get("tags", {}).items() if v not in ([], "", None)}
    if tags:
        lines += ["", "tags: " + ", ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}"
                                          for k, v in tags.items())]
    return "\n".join(lines)
