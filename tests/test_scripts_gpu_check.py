"""scripts/gpu_check.py: one clear error without a GPU, and a CPU smoke run of its cheapest stages
that writes the per-stage table as JSON (the full chain is for a machine with a GPU)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from helpers import one_thread  # noqa: F401 (one_thread: autouse)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_no_cuda_is_one_clear_error(script, capsys):
    assert script.main(["--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "--device cpu" in err


def test_unknown_stage_is_refused(script, capsys):
    assert script.main(["--device", "cpu", "--stages", "teacher,warp"]) == 2
    assert "warp" in capsys.readouterr().err


def test_cpu_smoke_run_writes_the_table(script, tmp_path, capsys):
    out = tmp_path / "check.json"
    code = script.main(["--device", "cpu", "--dataset", "procedural", "--stages", "teacher,synth,evaluate",
                        "--only", "random-real", "--teacher-epochs", "1", "--steps", "3", "--json", str(out),
                        "--workdir", str(tmp_path / "work")])
    assert code == 0, capsys.readouterr()
    report = json.loads(out.read_text())
    stages = {s["stage"]: s for s in report["stages"]}
    assert list(stages) == ["setup (imports, CUDA context)", "teacher", "synth:random-real", "evaluate:hard", "evaluate:soft"]
    assert all(s["ok"] and s["wall_s"] >= 0 and s["peak_mem_mb"] is None for s in stages.values())
    assert stages["teacher"]["wall_s"] > 0 and "test accuracy" in stages["teacher"]["note"]
    assert report["device"] == "cpu" and report["failed"] == [] and report["index_backend"]["device"] == "cpu"
    assert "hard-cpu@2, 3 steps" in stages["evaluate:hard"]["note"]
    assert "evaluate:soft" in capsys.readouterr().out


def test_a_failing_stage_is_reported_and_its_dependents_skipped(script, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("Expected all tensors to be on the same device")

    monkeypatch.setattr(script, "_teacher", broken)
    out = tmp_path / "check.json"
    assert script.main(["--device", "cpu", "--dataset", "procedural", "--stages", "teacher,select", "--only", "random",
                        "--json", str(out)]) == 1
    report = json.loads(out.read_text())
    stages = {s["stage"]: s for s in report["stages"]}
    assert stages["teacher"]["ok"] is False and "same device" in stages["teacher"]["error"]
    assert stages["select:random"]["ok"] is None and report["failed"] == ["teacher"]


def test_decode_stage_alone_measures_both_backends_without_a_teacher(script, tmp_path, monkeypatch):
    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DDKIT_WORKERS", "0")
    out = tmp_path / "check.json"
    assert script.main(["--device", "cpu", "--stages", "decode", "--decode-images", "20", "--decode-size", "32",
                        "--json", str(out)]) == 0
    stages = {s["stage"]: s for s in json.loads(out.read_text())["stages"]}
    assert list(stages) == ["setup (imports, CUDA context)", "decode:folder", "decode:pil", "decode:torchvision"]
    assert "20 JPEGs 32×32" in stages["decode:folder"]["note"] and "resize 28 crop 24" in stages["decode:folder"]["note"]
    for name in ("decode:pil", "decode:torchvision"):
        assert stages[name]["ok"] and stages[name]["images_per_s"] > 0
    note = stages["decode:torchvision"]["note"]
    assert "torchvision in the workers" in note and "vs pil: max |Δ| " in note
    assert int(note.split("max |Δ| ")[1].split("/")[0]) <= 2  # the resize's rounding, nothing more


def test_presets_stage_skips_on_cpu_and_its_code_path_runs_with_tiny_nets(script, tmp_path, monkeypatch):
    monkeypatch.setenv("DDKIT_PROGRESS", "0")
    out = tmp_path / "check.json"
    assert script.main(["--device", "cpu", "--dataset", "procedural", "--stages", "presets", "--json", str(out)]) == 0
    stages = {s["stage"]: s for s in json.loads(out.read_text())["stages"]}
    assert list(stages) == ["setup (imports, CUDA context)", "preset:dm", "preset:mtt"]
    assert stages["preset:dm"]["ok"] is None and "on a GPU" in stages["preset:dm"]["note"]
    assert script.main(["--device", "cpu", "--dataset", "procedural", "--stages", "presets", "--presets-on-cpu",
                        "--preset-iterations", "1", "--json", str(out)]) == 0
    stages = {s["stage"]: s for s in json.loads(out.read_text())["stages"]}
    assert [stages[k]["ok"] for k in ("preset:dm", "experts (for preset:mtt)", "preset:mtt")] == [True] * 3
    assert "20000 iterations ≈" in stages["preset:dm"]["note"] and "5000 iterations ≈" in stages["preset:mtt"]["note"]
