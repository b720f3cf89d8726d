"""The result card: what an evaluation measured, with everything needed to compare and trust it.

Written as JSON into the evaluated file's `/results/<protocol>` and printed as a table.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import ddkit
from ddkit.provenance import utc_now


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


@dataclass
class Arm:
    """Accuracies of one training set under the protocol, one per seed."""

    label: str
    accuracies: list[float]
    ipc: float | None = None
    cached_seeds: list[int] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return mean_std(self.accuracies)[0]

    @property
    def std(self) -> float:
        return mean_std(self.accuracies)[1]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = self.mean, self.std
        return d


@dataclass
class ResultCard:
    protocol: dict  # the full protocol recipe, with name, version and id
    train_set: str
    content_sha256: str | None
    budget_bytes: int | None
    ipc: float | None
    instances: int
    seeds: list[int]
    result: Arm
    random_baseline: Arm | None = None
    full_data: Arm | None = None
    ranking: dict | None = None  # DD-Ranking's HLR / IOR / LRS (ddkit.evaluate.ranking), when measured
    teachers: list[dict] = field(default_factory=list)
    device: str = "cpu"
    world_size: int = 1
    batched: bool = False
    compiled: bool = False  # students' forward passes through torch.compile (same recipe, other float rounding)
    wall_seconds: float = 0.0
    ddkit_version: str = ddkit.__version__
    created: str = field(default_factory=utc_now)
    reported: str = "final-step test accuracy, mean ± sample std over seeds"

    @property
    def gain(self) -> float | None:
        return None if self.random_baseline is None else self.result.mean - self.random_baseline.mean

    def to_dict(self) -> dict:
        d = asdict(self)
        d["result"] = self.result.to_dict()
        d["random_baseline"] = self.random_baseline.to_dict() if self.random_baseline else None
        d["full_data"] = self.full_data.to_dict() if self.full_data else None
        d["gain_over_random"] = self.gain
        return d

    def table(self) -> str:
        """A plain-text table: one row per arm, accuracies in percent."""
        rows = [("train set", "IPC", "accuracy (%)", "per seed")]
        for arm in (self.result, self.random_baseline, self.full_data):
            if arm is None:
                continue
            ipc = "-" if arm.ipc is None else f"{arm.ipc:g}"
            rows.append((arm.label, ipc, f"{100 * arm.mean:.2f} ± {100 * arm.std:.2f}",
                         " ".join(f"{100 * a:.2f}" for a in arm.accuracies)))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [f"protocol {self.protocol['id']}  seeds {self.seeds}  device {self.device}  "
                 f"wall {self.wall_seconds:.1f}s"]
        for i, r in enumerate(rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)))
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        if self.gain is not None:
            lines.append(f"gain over random real at the same budget: {100 * self.gain:+.2f} points")
        if self.ranking:
            lines.append(ranking_line(self.ranking))
        return "\n".join(lines)


def ranking_line(ranking: dict) -> str:
    """One line with DD-Ranking's three scores of a card's `ranking` entry (percent)."""
    def cell(name: str, sign: str = "") -> str:
        return f"{100 * ranking[name]['mean']:{sign}.2f} ± {100 * ranking[name]['std']:.2f}"

    return (f"DD-Ranking: HLR {cell('hlr')} (under {ranking['hard_protocol']}; lower is better), "
            f"IOR {cell('ior', '+')}, LRS {cell('lrs')} (w = {ranking['weight']:g})")
