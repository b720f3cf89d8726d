"""Learning curves of active learning: test accuracy vs labeled budget |L|, one series per
(rule, distillation on/off), mean ± sample std over seeds — as a markdown table and a PNG plot.

The plot is drawn with matplotlib, an optional extra (`pip install -e ".[plot]"`): the figure is
built on its own canvas (no pyplot state), each series a line at the mean with a shaded ±std band;
solid with distillation, dashed without, one color per rule.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from ddkit.errors import DdkitError
from ddkit.fileio import atomic_output

PLOT_EXTRA = 'pip install -e ".[plot]" (or pip install "ddkit[plot]"), or pass --no-plot'


@dataclass
class Series:
    """One curve: the mean and sample std (ddof=1; 0 for one seed) over `seeds` runs at each |L|."""

    rule: str
    distill: bool
    sizes: list[int]
    mean: np.ndarray
    std: np.ndarray
    seeds: int

    @property
    def label(self) -> str:
        return f"{self.rule} ({'KD' if self.distill else 'no KD'})"

    def to_dict(self) -> dict:
        return {"rule": self.rule, "distill": self.distill, "sizes": list(self.sizes), "mean": self.mean.tolist(),
                "std": self.std.tolist(), "seeds": self.seeds}


def curves(runs) -> list[Series]:
    """Group runs (anything with rule, distill, sizes, accuracies) into series: distillation on
    first, then by rule name."""
    groups = defaultdict(list)
    for run in runs:
        groups[(run.rule, run.distill)].append(run)
    out = []
    for (rule, distill), group in sorted(groups.items(), key=lambda kv: (not kv[0][1], kv[0][0])):
        acc = np.array([r.accuracies for r in group], dtype=np.float64)
        std = acc.std(0, ddof=1) if len(group) > 1 else np.zeros(acc.shape[1])
        out.append(Series(rule, distill, list(group[0].sizes), acc.mean(0), std, len(group)))
    return out


def results_table(runs) -> str:
    """Markdown: one row per series, one column per |L|, cells `mean ± std` in percent."""
    data = curves(runs)
    if not data:
        return "(no runs)"
    sizes = data[0].sizes
    head = "| selector | distillation | " + " | ".join(f"\\|L\\|={s}" for s in sizes) + " | mean over rounds |"
    lines = [head, "|---|---|" + "---|" * (len(sizes) + 1)]
    for s in data:
        cells = " | ".join(f"{100 * m:.1f} ± {100 * d:.1f}" for m, d in zip(s.mean, s.std))
        lines.append(f"| {s.rule} | {'on' if s.distill else 'off'} | {cells} | {100 * s.mean.mean():.2f} |")
    return "\n".join(lines)


def require_matplotlib() -> None:
    """Fail early, naming the extra, when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise DdkitError("drawing the learning curves needs matplotlib, which is not installed", PLOT_EXTRA) from None


def curve_figure(series: list[Series], title: str = "", ylabel: str = "test accuracy (%)"):
    """A matplotlib Figure of `series` (accuracy in percent vs |L|), not yet saved."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.6, 6.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    rules = sorted({s.rule for s in series})
    colors = {rule: f"C{i % 10}" for i, rule in enumerate(rules)}
    for s in series:
        x, mean, std = np.asarray(s.sizes), 100 * s.mean, 100 * s.std
        ax.plot(x, mean, color=colors[s.rule], linestyle="-" if s.distill else "--", marker="o", markersize=3,
                label=f"{s.label}, {s.seeds} seed{'s' if s.seeds != 1 else ''}")
        ax.fill_between(x, mean - std, mean + std, color=colors[s.rule], alpha=0.12, linewidth=0)
    ax.set_xlabel("labeled budget |L|")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    if series:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def plot_curves(runs, path: str | os.PathLike, title: str = "", overwrite: bool = False) -> list[Series]:
    """Write the learning-curve PNG of `runs` atomically to `path`; returns the series drawn."""
    series = curves(runs)
    fig = curve_figure(series, title)
    with atomic_output(path, overwrite) as tmp:
        fig.savefig(tmp, format="png")
    return series
