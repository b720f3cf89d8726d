"""`ddkit describe` and `ddkit list` from the code (ddkit.explain), and the verbs that need no tensors
starting without torch (`--help`, `list`, `describe`, `info`, `catalog ls`)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
from helpers import run_cli as run

from ddkit.evaluate.protocols import PROTOCOLS, get_protocol
from ddkit.explain import BENCHMARK_PROTOCOLS, build_index, config_options, field_comments, source_key
from ddkit.registries import all_registries
from ddkit.selectors import SELECTORS
from ddkit.synth import SYNTHESIZERS


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DDKIT_PROGRESS", "0")


@pytest.fixture(scope="module")
def index():
    return build_index()


def test_every_registry_entry_is_in_the_index(index):
    for kind, registry in all_registries().items():
        assert [e["name"] for e in index["kinds"][kind]] == registry.names()
        for name in registry.names():
            assert f"{kind}/{name}" in index["details"]


@pytest.mark.parametrize("method", SYNTHESIZERS.names())
def test_a_synthesizers_options_are_its_config_fields_with_their_defaults(index, method):
    config = SYNTHESIZERS.create(method).Config
    options = index["details"][f"synthesizers/{method}"]["options"]
    assert [o["name"] for o in options] == [f.name for f in dataclasses.fields(config)]
    instance = config()
    for o in options:
        value = getattr(instance, o["name"])
        assert o["default"] == (value if isinstance(value, (bool, int, float, str)) else repr(value))
        assert o["type"] == type(value).__name__


def test_field_comments_are_read_from_the_source():
    @dataclasses.dataclass
    class Toy:
        alpha: int = 3  # how many
        beta: str = "x#y"
        gamma: float = 0.5  # a "quoted" # hash

    assert field_comments(Toy) == {"alpha": "how many", "gamma": 'a "quoted" # hash'}
    assert [o["meaning"] for o in config_options(Toy)] == ["how many", "", 'a "quoted" # hash']


def test_benchmark_protocols_cover_every_method_and_name_registered_protocols():
    assert set(BENCHMARK_PROTOCOLS["synthesizers"]) == set(SYNTHESIZERS.names())
    protocol_names = {n.rpartition("@")[0] for n in PROTOCOLS.names()}
    for table in (BENCHMARK_PROTOCOLS["synthesizers"], BENCHMARK_PROTOCOLS["selectors"]):
        for method, names in table.items():
            assert set(names) <= protocol_names, method
    assert set(BENCHMARK_PROTOCOLS["active-default"]) <= protocol_names
    for method in SELECTORS.names():
        factory = SELECTORS.get(method)
        cls = factory if isinstance(factory, type) else type(factory)
        assert method in BENCHMARK_PROTOCOLS["selectors"] or getattr(cls, "rule", None), method


def test_describe_a_method_shows_options_needs_and_protocols(capsys):
    code, out, err = run(capsys, "describe", "mtt")
    assert code == 0, err
    assert "syn_steps" in out and "int" in out and "default 30" in out
    assert "N: student steps on the synthetic set per iteration" in out  # the comment beside the field
    assert "--config experts=" in out and "no teacher" in out and "hard-cpu" in out
    code, out, _ = run(capsys, "describe", "nrr-dd")
    assert "at least 1 teacher" in out


def test_describe_a_protocol_shows_its_whole_recipe(capsys):
    code, out, _ = run(capsys, "describe", "stored-cpu", "--json")
    assert code == 0
    [found] = json.loads(out)
    assert found["recipe"] == get_protocol("stored-cpu").to_dict() and "infer" in found["methods"]
    code, out, _ = run(capsys, "describe", "hard-cpu@1")
    assert "steps          1000" in out


def test_describe_an_unknown_name_suggests_close_ones(capsys):
    code, _, err = run(capsys, "describe", "pcorset")
    assert code == 2 and "did you mean pcoreset" in err


def test_the_index_is_cached_and_keyed_by_the_source(tmp_path, capsys):
    code, first, _ = run(capsys, "list", "synthesizers")
    assert code == 0 and "dm" in first
    cached = list((tmp_path / "cache" / "registry-index").glob("*.json"))
    assert [p.stem for p in cached] == [source_key()]
    cached[0].write_text(cached[0].read_text().replace("Distribution Matching", "Cached Matching"))
    assert "Cached Matching" in run(capsys, "list", "synthesizers")[1]  # read from the cache, not rebuilt


def test_an_edited_source_file_makes_a_new_key(tmp_path, monkeypatch):
    import ddkit

    package = tmp_path / "pkg" / "ddkit"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("x = 1\n")
    monkeypatch.setattr(ddkit, "__file__", str(package / "__init__.py"))
    before = source_key()
    (package / "__init__.py").write_text("x = 22\n")
    assert source_key() != before


VERBS_WITHOUT_TENSORS = [["--help"], ["list"], ["list", "protocols"], ["describe", "dm"], ["describe", "hard-cpu"],
                         ["info", "FILE"], ["info", "FILE", "--json"], ["info", "SEL"], ["catalog", "ls"],
                         ["catalog", "scan", "FILE"], ["synthesize", "--help"], ["evaluate", "--help"]]


def test_verbs_that_need_no_tensors_do_not_import_torch(tmp_path):
    """Each verb in a fresh interpreter (the index built once before): torch must not be imported."""
    import os

    from ddkit.data import load_dataset
    from ddkit.store import DistilledSet, Selection, pool_record, write_distilled, write_selection

    source = load_dataset("procedural")
    write_distilled(tmp_path / "a.ddk.h5", DistilledSet.from_source(
        source, method="toy", method_version="1", config={}, seed=0, images=source.images[:20],
        labels=source.labels[:20], ipc=2))
    write_selection(tmp_path / "s.sel.h5", Selection(method="toy", method_version="1", config={}, seed=0,
                                                     pool=pool_record(source), ids=source.ids[:5].numpy()))
    env = {**os.environ, "DDKIT_CACHE": str(tmp_path / "cache")}
    subprocess.run([sys.executable, "-m", "ddkit", "list"], env=env, check=True, capture_output=True)  # builds the index
    catalog = str(tmp_path / "cat.sqlite")
    for verb in VERBS_WITHOUT_TENSORS:
        argv = [str(tmp_path / "a.ddk.h5") if a == "FILE" else str(tmp_path / "s.sel.h5") if a == "SEL" else a for a in verb]
        if verb[0] == "catalog":
            argv += ["--catalog", catalog]
        code = ("import sys\nfrom ddkit.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
                "    assert not e.code, e.code\nprint('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
        result = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True)
        assert result.returncode == 0, (verb, result.stderr)
        assert result.stdout.strip().splitlines()[-1] == "NO-TORCH", verb
