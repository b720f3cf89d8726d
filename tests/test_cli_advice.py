"""Every `fix:` line the command line prints names only flags that exist, on the verb it is about;
values of `--config` and `--device` are parsed by type, with the accepted values named.

Three walks: (1) every `--flag` written in ddkit's source exists on some verb; (2) every verb is run
with missing, garbage and existing files in place of its paths, and each fix it prints is checked
against that verb's own options (or the verb a fix names in backticks, `ddkit catalog scan`);
(3) hand-picked bad values per verb (devices, config values, existing outputs)."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import click
import pytest
from helpers import run_cli as run

from ddkit.cli import cli

FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
OTHER_TOOLS = ("torchrun", "pip ", "python -m torch")  # fixes may quote other programs' flags


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DDKIT_PROGRESS", "0")


def leaf_commands(group=cli, path=()):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            yield from leaf_commands(command, path + (name,))
        else:
            yield path + (name,), command


def flags_of(command: click.Command) -> set[str]:
    flags = {"--help"}
    for param in command.params:
        flags.update(o for o in param.opts + param.secondary_opts if o.startswith("--"))
    return flags


COMMANDS = dict(leaf_commands())
TOP_FLAGS = flags_of(cli)


def command_named(words: list[str]) -> tuple[tuple[str, ...], click.Command] | None:
    """The verb a backticked `ddkit VERB [SUBVERB] ...` names, if any."""
    for n in (2, 1):
        if tuple(words[:n]) in COMMANDS:
            return tuple(words[:n]), COMMANDS[tuple(words[:n])]
    return None


def check_advice(verb: tuple[str, ...], err: str) -> None:
    """Each flag in each `fix:` line must exist on the verb run, or on the verb the fix quotes."""
    own = flags_of(COMMANDS[verb]) | TOP_FLAGS
    for line in err.splitlines():
        if not line.strip().startswith("fix:"):
            continue
        text = line.split("fix:", 1)[1]
        for quoted in re.findall(r"`([^`]*)`", text):
            words = quoted.split()
            named = command_named(words[1:]) if words[:1] == ["ddkit"] else None
            if named is not None:
                bad = set(FLAG.findall(quoted)) - flags_of(named[1]) - TOP_FLAGS
                assert not bad, f"`ddkit {' '.join(verb)}` advises {bad}, which `ddkit {' '.join(named[0])}` lacks: {line}"
            elif not any(tool in quoted for tool in OTHER_TOOLS):
                bad = set(FLAG.findall(quoted)) - own
                assert not bad, f"`ddkit {' '.join(verb)}` advises {bad}, which it lacks: {line}"
        bare = re.sub(r"`[^`]*`", "", text)
        if not any(tool in bare for tool in OTHER_TOOLS):
            bad = set(FLAG.findall(bare)) - own
            assert not bad, f"`ddkit {' '.join(verb)}` advises {bad}, which it lacks: {line}"


def run_checked(capsys, verb, *args) -> tuple[int, str]:
    code, _, err = run(capsys, *verb, *args)
    assert "Traceback" not in err, err
    check_advice(verb, err)
    return code, err


def test_the_check_catches_advice_a_verb_cannot_take():
    with pytest.raises(AssertionError, match="--overwrite"):
        check_advice(("info",), "error: x\n  fix: pass --overwrite")
    with pytest.raises(AssertionError, match="--nope"):
        check_advice(("info",), "error: x\n  fix: run `ddkit catalog scan --nope DIR`")
    check_advice(("info",), "error: x\n  fix: run `ddkit catalog scan --catalog C DIR` or pass --json")


# -- 1. the source ------------------------------------------------------------------------------


def test_every_flag_written_in_the_source_exists_on_some_verb():
    known = set(TOP_FLAGS).union(*(flags_of(c) for c in COMMANDS.values()))
    package = Path(__file__).resolve().parents[1] / "ddkit"
    missing = {}
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "torchrun" not in node.value:
                for flag in set(FLAG.findall(node.value)) - known:
                    missing.setdefault(flag, []).append(f"{path.relative_to(package.parent)}:{node.lineno}")
    missing = {f: where for f, where in missing.items() if f not in ("--nproc-per-node", "--standalone")}  # torchrun's
    assert not missing, missing


# -- 2. every verb with bad paths ----------------------------------------------------------------

# Verbs that do their whole job with every input missing (they read none): workflows and training.
NOT_RUN = {("quickstart",), ("active-learn",), ("teacher", "train"), ("experts", "train")}


def argv_for(command: click.Command, path_value: str, out_value: str) -> list[str]:
    """The verb's required arguments and options, every path given `path_value` (outputs `out_value`)."""
    args = []
    for param in command.params:
        if not param.required:
            continue
        if isinstance(param.type, click.Path) or param.name in ("path", "pool_path", "scores", "source", "train_set", "files"):
            value = out_value if param.name in ("out", "out_dir") else path_value
        elif isinstance(param.type, click.types.IntParamType) or isinstance(param.type, click.IntRange):
            value = "1"
        elif isinstance(param.type, click.Choice):
            value = param.type.choices[0]
        elif param.name == "entry_id":
            value = "1"
        elif param.name in ("roots",):
            value = path_value
        else:
            value = "procedural"
        args += [value] if isinstance(param, click.Argument) else [param.opts[0], value]
    return args


@pytest.mark.parametrize("verb", sorted(set(COMMANDS) - NOT_RUN), ids=" ".join)
@pytest.mark.parametrize("case", ["missing", "garbage"])
def test_every_verb_with_bad_paths_gives_advice_it_can_take(capsys, tmp_path, verb, case):
    source = tmp_path / "in.ddk.h5"
    if case == "garbage":
        source.write_bytes(b"not a ddkit file at all\n" * 40)
    argv = argv_for(COMMANDS[verb], str(source), str(tmp_path / "out" / "x.ddk.h5"))
    code, err = run_checked(capsys, verb, *argv)
    assert code in (0, 1, 2), (argv, err)


# -- 3. hand-picked bad values -------------------------------------------------------------------


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("advice")
    for seed in (0, 1):
        code = run_cli_plain("synthesize", "--dataset", "procedural", "--ipc", "1", "--seed", seed,
                             "--out", folder / f"rr{seed}.ddk.h5")
        assert code == 0
    return folder / "rr0.ddk.h5"


def run_cli_plain(*args) -> int:
    from ddkit.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


@pytest.mark.parametrize("device", ["gpu", "CUDA0", "cuda:x", "tpu"])
@pytest.mark.parametrize("verb", [v for v, c in COMMANDS.items() if "--device" in flags_of(c)], ids=" ".join)
def test_a_bad_device_is_refused_by_name_before_any_work(capsys, tmp_path, verb, device):
    argv = argv_for(COMMANDS[verb], str(tmp_path / "missing.ddk.h5"), str(tmp_path / "x.ddk.h5"))
    code, err = run_checked(capsys, verb, *argv, "--device", device)
    assert code == 2 and "--device" in err and "auto, cpu, cuda, cuda:N, mps" in err, err
    assert not (tmp_path / "x.ddk.h5").exists()


def test_device_names_are_case_insensitive_and_gpu_suggests_cuda(capsys, tmp_path):
    code, _, err = run(capsys, "synthesize", "--dataset", "procedural", "--ipc", "1", "--device", "CPU",
                       "--out", str(tmp_path / "a.ddk.h5"))
    assert code == 0, err
    code, _, err = run(capsys, "synthesize", "--dataset", "procedural", "--ipc", "1", "--device", "gpu",
                       "--out", str(tmp_path / "b.ddk.h5"))
    assert code == 2 and "did you mean cuda?" in err


def test_device_from_the_environment_is_checked_and_named(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DDKIT_DEVICE", "gpu")
    code, err = run_checked(capsys, ("synthesize",), "--dataset", "procedural", "--ipc", "1", "--out", str(tmp_path / "a.ddk.h5"))
    assert code == 2 and "$DDKIT_DEVICE=cuda" in err, err


@pytest.mark.parametrize("pair, accepted", [
    ("iterations=2.5", "must be an integer"), ("iterations=ten", "must be an integer"),
    ("flip=2", "must be true or false"), ("flip=maybe", "must be true or false"),
    ("lr=nan", "must be a finite number"), ("lr=fast", "must be a finite number"),
    ("iterations", "is not KEY=VALUE"),
])
def test_config_values_are_parsed_by_the_field_type(capsys, tmp_path, pair, accepted):
    code, err = run_checked(capsys, ("synthesize",), "--method", "infer", "--dataset", "procedural", "--ipc", "2",
                            "--config", pair, "--out", str(tmp_path / "x.ddk.h5"))
    assert code == 2 and accepted in err, err
    assert not (tmp_path / "x.ddk.h5").exists()


def test_config_values_of_the_right_type_are_stored_as_that_type():
    from ddkit.config import build_config
    from ddkit.synth import SYNTHESIZERS

    config = build_config(SYNTHESIZERS.create("infer").Config, {"iterations": "7", "flip": "1", "lr": "0.5"})
    assert config.iterations == 7 and config.flip is True and config.lr == 0.5
    config = build_config(SYNTHESIZERS.create("infer").Config, {"flip": "false", "iterations": 3})
    assert config.flip is False and config.iterations == 3


def test_bad_model_options_inside_config_advise_the_config_value(capsys, tmp_path):
    code, err = run_checked(capsys, ("synthesize",), "--method", "dm", "--dataset", "procedural", "--ipc", "1",
                            "--config", "net_options=width=abc", "--config", "iterations=1",
                            "--out", str(tmp_path / "x.ddk.h5"))
    assert code == 2 and "width='abc'" in err and "--model-opt" not in err, err


def test_existing_outputs_advise_a_flag_the_verb_has(capsys, tmp_path, distilled):
    taken = tmp_path / "taken.ddk.h5"
    taken.write_bytes(b"x")
    folder = tmp_path / "taken-dir"
    folder.mkdir()
    (folder / "f").write_text("x")
    catalog = tmp_path / "cat.sqlite"  # a named catalog indexes files inside its own folder
    shutil.copyfile(distilled, tmp_path / distilled.name)
    assert run_checked(capsys, ("catalog", "scan"), str(tmp_path / distilled.name), "--catalog", str(catalog))[0] == 0
    cases = [
        (("synthesize",), ["--dataset", "procedural", "--ipc", "1", "--out", str(taken)]),
        (("select",), ["--pool", "procedural", "--budget", "10", "--out", str(taken)]),
        (("merge",), [str(distilled), str(distilled.with_name("rr1.ddk.h5")), "--out", str(taken)]),
        (("show",), [str(distilled), "--out", str(taken)]),
        (("export",), [str(distilled), "--to", "pt", str(folder)]),
        (("pack",), [str(distilled), str(folder)]),
        (("catalog", "get"), [distilled_hash(distilled), "--catalog", str(catalog), "--out", str(taken)]),
    ]
    for verb, argv in cases:
        code, err = run_checked(capsys, verb, *argv)
        assert code == 2 and "--overwrite" in err, (verb, err)
    assert taken.read_bytes() == b"x"


def distilled_hash(path) -> str:
    from ddkit.store import DistilledDataset

    with DistilledDataset(path) as ds:
        return ds.content_sha256[:12]
