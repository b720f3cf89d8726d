"""`ddkit active-learn` judged by a protocol: a result card in every selection file, a summary with
the curves, the curve plot (one series per rule × distillation, mean with a ±std band), and a clear
refusal naming the `plot` extra when matplotlib is missing."""

import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import one_thread, run_cli  # noqa: F401 (one_thread: autouse)

from ddkit.data import load_dataset
from ddkit.errors import DdkitError
from ddkit.evaluate import get_protocol
from ddkit.selectors.activekd import ActiveKDConfig
from ddkit.store import read_results, read_selection
from ddkit.workflows.active_learning import active_learn
from ddkit.workflows.curves import curve_figure, curves

TINY = dict(width=4, depth=2, steps_per_label=0.5, min_steps=3, batch_size=16)


def test_active_learn_writes_cards_summary_and_curves(tmp_path):
    pool, test = load_dataset("procedural", "train"), load_dataset("procedural", "test").subset(np.arange(50))
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1, (len(pool), pool.num_classes)).astype(np.float32)
    logits[np.arange(len(pool)), pool.labels.numpy()] += 2.0
    proto = get_protocol("active-cpu@1").with_overrides(epochs=3, student_kwargs={"depth": 2, "width": 8, "norm": "instance"})
    res = active_learn(pool, test, ["pcoreset", "random"], torch.from_numpy(logits), [{"arch": "x", "sha256": "0"}],
                       ActiveKDConfig(**TINY), rounds=1, queries=3, seeds=(0, 1), distill=(True, False),
                       out_dir=tmp_path / "al", protocol=proto)
    assert len(res.runs) == 8 and len(res.files["selections"]) == 8
    by = {(r.rule, r.distill, r.seed): r for r in res.runs}
    # Round 0 is the same seed set for every rule: the protocol trains it once, so the numbers agree.
    assert len({r.accuracies[0] for r in res.runs if r.seed == 0}) == 1
    for run in res.runs:
        path = tmp_path / "al" / "selections" / f"{run.rule}-{'kd' if run.distill else 'nokd'}-seed{run.seed}.sel.h5"
        sel, card = read_selection(path), read_results(path)[proto.id]
        assert len(sel) == 13 and sel.config["queries"] == 3
        assert card["protocol"]["id"] == proto.id and card["content_sha256"] == sel.content_sha256
        assert card["seeds"] == [run.seed] and card["result"]["accuracies"] == [run.accuracies[-1]]
        assert card["random_baseline"]["accuracies"] == [by[("random", run.distill, run.seed)].accuracies[-1]]
    summary = json.loads((tmp_path / "al" / "results.json").read_text())
    assert summary["protocol"]["id"] == proto.id
    series = {(c["rule"], c["distill"]): c for c in summary["curves"]}
    assert set(series) == {("pcoreset", True), ("pcoreset", False), ("random", True), ("random", False)}
    one = series[("pcoreset", True)]
    accs = np.array([by[("pcoreset", True, s)].accuracies for s in (0, 1)])
    assert one["sizes"] == [10, 13] and one["seeds"] == 2
    np.testing.assert_allclose(one["mean"], accs.mean(0))
    np.testing.assert_allclose(one["std"], accs.std(0, ddof=1))
    assert (tmp_path / "al" / "results.md").read_text().count("\n| pcoreset |") == 2
    from PIL import Image

    assert Image.open(tmp_path / "al" / "accuracy.png").format == "PNG"


def test_curve_figure_draws_one_line_and_band_per_series():
    runs = [SimpleNamespace(rule=rule, distill=kd, seed=s, sizes=[10, 20], accuracies=[0.5 + 0.1 * s, 0.6 + 0.05 * s])
            for rule in ("entropy", "pcoreset") for kd in (True, False) for s in (0, 1, 2)]
    fig = curve_figure(curves(runs))
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {f"{r} ({k}), 3 seeds" for r in ("entropy", "pcoreset") for k in ("KD", "no KD")}
    np.testing.assert_allclose(lines["pcoreset (KD), 3 seeds"].get_ydata(), [60.0, 65.0])
    assert lines["pcoreset (no KD), 3 seeds"].get_linestyle() == "--"
    assert len(ax.collections) == 4  # the ±std bands
    top = ax.collections[0].get_paths()[0].vertices[:, 1].max()
    assert top == pytest.approx(65.0 + 100 * np.std([0.6, 0.65, 0.7], ddof=1))


def test_missing_matplotlib_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    with pytest.raises(DdkitError, match="matplotlib") as err:
        curve_figure([])
    assert ".[plot]" in err.value.fix
    code, _, err = run_cli(capsys, "active-learn", "--pool", "procedural", "--distill", "off", "--methods", "random",
                           "--out", tmp_path / "al")
    assert code == 2 and ".[plot]" in err and not (tmp_path / "al").exists()  # refused before any work


def test_stored_label_protocols_are_refused(tmp_path, capsys):
    code, _, err = run_cli(capsys, "active-learn", "--pool", "procedural", "--distill", "off", "--methods", "random",
                           "--protocol", "stored-cpu@2", "--out", tmp_path / "al")
    assert code == 2 and "stored labels" in err and not (tmp_path / "al").exists()
