"""The small kernels behind this session's ddkit.index choices, timed side by side on this machine.

- k-center's per-pick pass over 1M × 64 float32 points: numpy's BLAS GEMV vs torch's `addmv` (1 and
  2 threads), a read-only `sum` as the streaming reference, and ddkit's own pass (`RunningMin.add_center`);
- the farthest point of 1M running minima: numpy's argmax vs torch's;
- k-means' cluster sums for 100k × 64 points into 1024 clusters: the former numpy sort + reduceat,
  torch's float32 `index_add_` on 1 and on 2 threads;
- the same pass over 2M points streamed from chunked HDF5: reading and centering alone vs the whole pass.
Variants are timed in interleaved rounds (best of 7); numpy and torch variants of the pass in separate groups. Writes the `index-kernels` section.

    flock /tmp/ddkit-cpu.lock python scripts/bench_index_kernels.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index import interleaved_best  # noqa: E402
from benchlib import machine, today, write_section  # noqa: E402

from ddkit.index.kcenter import RunningMin  # noqa: E402
from ddkit.index.source import as_points  # noqa: E402

ROUNDS = 7
NOTE = ("Numpy and torch variants of the pass are timed in separate groups: a numpy pass run right after a multi-threaded torch op shares the cores with torch's still-spinning OpenMP threads (an earlier version of this script that mixed them timed ddkit's pass at 17.35 ms), which is not how k-center runs. Two-thread `index_add_` is faster on this idle machine; ddkit keeps one thread for the reasons in `ddkit/index/kmeans.py`. Times drift between runs here (section `index`).")


def with_threads(threads: int, fn):
    def run():
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            fn()
        finally:
            torch.set_num_threads(old)
    return run


def kcenter_pass_rows() -> list[str]:
    n, d = 1_000_000, 64
    x = np.random.default_rng(0).standard_normal((n, d), dtype=np.float32)
    xt, c = torch.from_numpy(x), torch.from_numpy(x[3].copy())
    norms, values, scratch = (x * x).sum(1), torch.full((n,), float("inf")), torch.empty(n)
    state = RunningMin(as_points(x, "points"), torch.device("cpu"))
    center = state.rows(np.array([3]))[0]
    # Two groups: a numpy pass run right after a multi-threaded torch op shares the cores with torch's
    # still-spinning OpenMP threads, which is not how k-center runs (numpy only between picks).
    numpy_side = {
        "numpy GEMV (`np.dot`, numpy's BLAS threads)": lambda: np.dot(x, c.numpy(), out=scratch.numpy()),
        "ddkit k-center pass (`RunningMin.add_center`: GEMV + norms + min, 32k-row blocks)": lambda: state.add_center(center),
    }
    torch_side = {
        "torch `addmv`, 1 thread": with_threads(1, lambda: torch.addmv(torch.from_numpy(norms), xt, c, alpha=-2.0, out=scratch)),
        "torch `addmv`, 2 threads": with_threads(2, lambda: torch.addmv(torch.from_numpy(norms), xt, c, alpha=-2.0, out=scratch)),
        "read-only reference: `x.sum()` (torch, 2 threads)": with_threads(2, lambda: xt.sum()),
    }
    variants = {**numpy_side, **torch_side}
    times = interleaved_best(list(numpy_side.values()), ROUNDS) + interleaved_best(list(torch_side.values()), ROUNDS)
    gb = x.nbytes / 1e9
    rows = [f"| {name} | {1e3 * t:.2f} | {gb / t:.1f} |" for name, t in zip(variants, times)]
    argmax = interleaved_best([lambda: np.argmax(values.numpy()), with_threads(1, lambda: torch.argmax(values))], ROUNDS)
    rows += [f"| farthest point of 1M running minima: numpy `argmax` | {1e3 * argmax[0]:.3f} | |",
             f"| farthest point of 1M running minima: torch `argmax`, 1 thread | {1e3 * argmax[1]:.3f} | |"]
    return rows


def cluster_sum_rows() -> list[str]:
    n, d, k, block = 100_000, 64, 1024, 32768
    x = np.random.default_rng(1).standard_normal((n, d), dtype=np.float32)
    assign = np.random.default_rng(2).integers(0, k, n)
    xt, at = torch.from_numpy(x), torch.from_numpy(assign)

    def sort_reduce():
        sums = np.zeros((k, d))
        for s in range(0, n, block):
            a = assign[s : s + block]
            order = np.argsort(a, kind="stable")
            sa = a[order]
            starts = np.flatnonzero(np.r_[True, sa[1:] != sa[:-1]])
            sums[sa[starts]] += np.add.reduceat(x[s : s + block][order].astype(np.float64), starts, axis=0)

    def index_add(rows=8192):
        sums, part = torch.zeros(k, d, dtype=torch.float64), torch.empty(k, d)
        for s in range(0, n, rows):
            part.zero_()
            part.index_add_(0, at[s : s + rows], xt[s : s + rows])
            sums += part

    variants = {"numpy argsort + `add.reduceat` in float64 (before)": sort_reduce,
                "torch float32 `index_add_` per 8k rows into float64, 1 thread (now)": with_threads(1, index_add),
                "the same on 2 threads": with_threads(2, index_add)}
    times = interleaved_best(list(variants.values()), ROUNDS)
    return [f"| k-means cluster sums, 100k × 64 into 1024 clusters: {name} | {1e3 * t:.2f} | |" for name, t in zip(variants, times)]


def streamed_rows() -> list[str]:
    n, d = 2_000_000, 64
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("x", data=np.random.default_rng(3).standard_normal((n, d), dtype=np.float32), chunks=(16384, d))
        with h5py.File(path, "r") as f:
            state = RunningMin(as_points(f["x"], "points"), torch.device("cpu"))
            center = state.rows(np.array([5]))[0]

            def read_and_center():
                for _ in state._blocks():
                    pass

            times = interleaved_best([read_and_center, lambda: state.add_center(center)], ROUNDS)
    return [f"| 2M × 64 from chunked HDF5 (page cache): reading + centering the blocks only | {1e3 * times[0]:.1f} | |",
            f"| 2M × 64 from chunked HDF5 (page cache): the whole k-center pass | {1e3 * times[1]:.1f} | |"]


def main() -> None:
    rows = kcenter_pass_rows() + cluster_sum_rows() + streamed_rows()
    body = "\n".join([
        "### ddkit.index kernels, side by side (issue 6)",
        "",
        f"Machine: {machine()}. Date: {today()}. Script: `flock /tmp/ddkit-cpu.lock python scripts/bench_index_kernels.py` "
        f"(best of {ROUNDS} interleaved rounds after a warm-up round; torch threads as stated, numpy's BLAS with its default threads).",
        "",
        "| kernel | ms | GB/s read |",
        "|---|---|---|",
        *rows,
        "",
        NOTE,
    ])
    print(body)
    write_section("index-kernels", body)


if __name__ == "__main__":
    main()
