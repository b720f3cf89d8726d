"""The active-learning result table (markdown) and the accuracy-vs-|L| plot (PNG, drawn with Pillow).

One row per (rule, distillation on/off), one column per round; each cell is the final-step test
accuracy, mean ± sample std over seeds. The plot draws one line per row: solid with distillation,
dashed without, one color per rule.
"""

from __future__ import annotations

import os
from collections import defaultdict

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ddkit.fileio import atomic_output

_COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def curves(runs) -> dict:
    """(rule, distill) -> (sizes, mean accuracies, std accuracies, number of seeds)."""
    groups = defaultdict(list)
    for run in runs:
        groups[(run.rule, run.distill)].append(run)
    out = {}
    for key, group in groups.items():
        acc = np.array([r.accuracies for r in group], dtype=np.float64)
        std = acc.std(0, ddof=1) if len(group) > 1 else np.zeros(acc.shape[1])
        out[key] = (list(group[0].sizes), acc.mean(0), std, len(group))
    return out


def results_table(runs) -> str:
    data = curves(runs)
    if not data:
        return "(no runs)"
    sizes = next(iter(data.values()))[0]
    head = "| selector | distillation | " + " | ".join(f"\\|L\\|={s}" for s in sizes) + " | mean over rounds |"
    rule = "|---|---|" + "---|" * (len(sizes) + 1)
    lines = [head, rule]
    for (name, kd), (_, mean, std, n) in sorted(data.items(), key=lambda kv: (not kv[0][1], kv[0][0])):
        cells = " | ".join(f"{100 * m:.1f} ± {100 * s:.1f}" for m, s in zip(mean, std))
        lines.append(f"| {name} | {'on' if kd else 'off'} | {cells} | {100 * mean.mean():.2f} |")
    return "\n".join(lines)


def plot_curves(runs, path: str | os.PathLike, title: str = "", overwrite: bool = False, size=(960, 600)) -> None:
    """Accuracy (%) vs labeled-set size, one line per (rule, distillation), written atomically."""
    data = curves(runs)
    w, h = size
    left, right, top, bottom = 70, 230, 40, 60
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    xs = sorted({s for sizes, *_ in data.values() for s in sizes}) or [0, 1]
    ys = [100 * v for _, mean, *_ in data.values() for v in mean] or [0.0, 100.0]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = np.floor(min(ys) / 5) * 5, np.ceil(max(ys) / 5) * 5
    y1 = y1 if y1 > y0 else y0 + 5

    def px(x, y):
        return (left + (x - x0) / (x1 - x0) * (w - left - right), h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom))

    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    for y in np.arange(y0, y1 + 1e-9, 5 if y1 - y0 <= 40 else 10):
        _, py = px(x0, y)
        draw.line([left, py, w - right, py], fill=(225, 225, 225))
        draw.text((left - 30, py - 6), f"{y:.0f}", fill="black", font=font)
    for x in xs:
        qx, _ = px(x, y0)
        draw.text((qx - 8, h - bottom + 6), str(x), fill="black", font=font)
    draw.text((left + (w - left - right) // 2 - 60, h - bottom + 24), "labeled-set size |L|", fill="black", font=font)
    draw.text((8, top - 16), "test accuracy (%)", fill="black", font=font)
    if title:
        draw.text((left, 2), title, fill="black", font=font)
    names = sorted({name for name, _ in data})
    for i, ((name, kd), (sizes, mean, _, n)) in enumerate(sorted(data.items(), key=lambda kv: (not kv[0][1], kv[0][0]))):
        color = _COLORS[names.index(name) % len(_COLORS)]
        points = [px(s, 100 * m) for s, m in zip(sizes, mean)]
        for a, b in zip(points, points[1:]):
            _line(draw, a, b, color, dashed=not kd)
        for p in points:
            draw.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=color)
        ly = top + 14 * i
        _line(draw, (w - right + 12, ly + 6), (w - right + 40, ly + 6), color, dashed=not kd)
        draw.text((w - right + 46, ly), f"{name} ({'KD' if kd else 'no KD'})", fill="black", font=font)
    with atomic_output(path, overwrite) as tmp:
        img.save(tmp, format="PNG")


def _line(draw, a, b, color, dashed: bool) -> None:
    if not dashed:
        draw.line([a, b], fill=color, width=2)
        return
    length = float(np.hypot(b[0] - a[0], b[1] - a[1]))
    steps = max(1, int(length // 6))
    for k in range(0, steps, 2):
        t0, t1 = k / steps, min(1.0, (k + 1) / steps)
        draw.line([(a[0] + (b[0] - a[0]) * t0, a[1] + (b[1] - a[1]) * t0), (a[0] + (b[0] - a[0]) * t1, a[1] + (b[1] - a[1]) * t1)],
                  fill=color, width=2)
