"""Progress in any log (ddkit.progress): bars on a terminal, plain lines elsewhere (a start line, a
periodic done/total line with an estimate, an end line), rank 0 only; `evaluate` prints its plan;
pool dedup, DBR labelling and `validate --against` report their stages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import run_cli as run

from ddkit import progress as progress_module
from ddkit.progress import LogProgress, clock_text, mode, progress


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RANK", raising=False)


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_log_lines_start_every_interval_with_an_estimate_and_end():
    clock, lines = FakeClock(), []
    bar = LogProgress(total=1000, desc="stage 1/3: students", unit="steps", every=30, clock=clock, write=lines.append)
    assert lines == ["stage 1/3: students: started of 1000 steps"]
    for _ in range(10):
        clock.now += 2.0
        bar.update(10)  # 100 steps in 20 s: no line before 30 s
    assert len(lines) == 1
    clock.now += 10.0
    bar.update(50)  # 150 steps in 30 s: 5 steps/s, 850 left = 170 s
    bar.set_postfix(loss=0.12345)
    assert lines[1] == "stage 1/3: students: 150/1000 steps (15%), 0:30 elapsed, about 2:50 left"
    clock.now += 30.0
    bar.update(150)
    assert lines[2].endswith("[loss=0.1235]") and "300/1000 steps (30%)" in lines[2]
    bar.close()
    bar.close()  # once only
    assert lines[3] == "stage 1/3: students: done, 300/1000 steps in 1:00 [loss=0.1235]" and len(lines) == 4


def test_log_progress_iterates_and_knows_the_length():
    lines = []
    assert list(LogProgress(range(4), desc="blocks", every=0, write=lines.append)) == [0, 1, 2, 3]
    assert lines[0] == "blocks: started of 4 it" and lines[-1].startswith("blocks: done, 4/4 it")
    assert all("\r" not in line for line in lines)


def test_clock_text():
    assert [clock_text(s) for s in (0, 42, 605, 11099)] == ["0:00", "0:42", "10:05", "3:04:59"]


@pytest.mark.parametrize("setting, tty, rank, expected", [
    ("auto", False, "0", "log"), ("auto", True, "0", "bar"), (None, False, "0", "log"), ("1", False, "0", "log"),
    ("bar", False, "0", "bar"), ("log", True, "0", "log"), ("0", True, "0", "off"), ("auto", True, "1", "off"),
    ("log", False, "3", "off"),
])
def test_mode(monkeypatch, setting, tty, rank, expected):
    if setting is None:
        monkeypatch.delenv("DDKIT_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("DDKIT_PROGRESS", setting)
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setattr(progress_module.sys.stderr, "isatty", lambda: tty, raising=False)
    assert mode() == expected


def test_progress_gives_lines_outside_a_terminal_and_nothing_when_off(monkeypatch, capsys):
    monkeypatch.setenv("DDKIT_PROGRESS", "log")
    bar = progress(total=3, desc="work")
    assert isinstance(bar, LogProgress)
    bar.update(3)
    bar.close()
    assert capsys.readouterr().err.splitlines() == ["work: started of 3 it", "work: done, 3/3 it in 0:00"]
    monkeypatch.setenv("DDKIT_PROGRESS", "0")
    bar = progress(total=3, desc="work")
    bar.update(3)
    bar.close()
    assert capsys.readouterr().err == ""


def test_evaluate_prints_its_plan_and_names_its_stages(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DDKIT_PROGRESS", "log")
    out = tmp_path / "rr.ddk.h5"
    assert run(capsys, "synthesize", "--dataset", "procedural", "--ipc", "2", "--out", out)[0] == 0
    code, _, err = run(capsys, "evaluate", out, "--seeds", "2", "--steps", "3", "--protocol", "hard-cpu@1")
    assert code == 0, err
    assert f"evaluate {out} under hard-cpu[epochs=0,steps=3]@1: 2 seed(s) [0, 1]" in err
    assert "stage 1/3: students on the train set, seeds [0, 1], 3 steps × batch 64 each" in err
    assert "stage 2/3: random real subset" in err and "stage 3/3: full data" in err
    assert "stage 1/3: students on the train set (2 seeds): started of 3 it" in err
    assert "stage 3/3: full data (2 seeds): done, 3/3 it" in err and "\r" not in err
    code, _, err = run(capsys, "evaluate", out, "--seeds", "2", "--steps", "3", "--protocol", "hard-cpu@1", "--no-write")
    assert "stage 1/1: students" in err and "random real subset: seeds [0, 1] read from the reference cache" in err


def test_pool_dedup_and_validate_against_report_their_stages(tmp_path, monkeypatch, capsys):
    from ddkit.contamination import check_file
    from ddkit.data import load_dataset
    from ddkit.pools.build import build_pool, dataset_part
    from ddkit.pools.dedup import dedup_pool

    monkeypatch.setenv("DDKIT_PROGRESS", "log")
    train = load_dataset("procedural", "train")
    path = tmp_path / "p.pool.h5"
    build_pool(path, [dataset_part(train.subset(np.arange(0, 60)), "part")], train.info)
    capsys.readouterr()
    dedup_pool(path, None, tmp_path / "d.pool.h5", test_dataset="procedural", detector="pixel-align-1")
    err = capsys.readouterr().err
    for stage in ("pool dedup 1/3", "pool dedup 2/3", "pool dedup 3/3", "copy check: indexing", "copy check: verifying",
                  "pool samples: done"):
        assert stage in err, (stage, err)
    check_file(path, "procedural", "pixel-align-1", record=False)
    assert "copy check: verifying the candidates of 60 images: done" in capsys.readouterr().err
    check_file(path, "procedural", record=False)  # the default, descriptor-2: its views are indexed one by one
    assert "reference images under 16 views: done, 16/16 view" in capsys.readouterr().err


def test_dbr_labelling_reports_views(monkeypatch, capsys):
    from ddkit.data import load_dataset
    from ddkit.dbr import ViewSchedule, get_recipe, teacher_distances

    monkeypatch.setenv("DDKIT_PROGRESS", "log")
    data = load_dataset("procedural", "train").subset(np.arange(20))
    schedule = ViewSchedule(get_recipe("dbr-cpu@1"), 0, len(data))
    teacher = lambda x: torch.zeros(len(x), 10)  # noqa: E731
    teacher_distances([teacher], data.normalized(), data.labels, schedule, num_views=50, batch_size=16)
    err = capsys.readouterr().err
    assert "DBR labels: teacher distances per view: started of 50 view" in err and "done, 50/50 view" in err
