"""ddkit.index at the machine's limit: kNN and k-means GFLOP/s against the fp32 matmul throughput
measured in the same run (PyPI faiss-cpu before, ddkit.index after), why faiss-cpu is slow here,
and greedy k-center step time against the memory-bandwidth bound and a dense budget × N reference
(time and peak memory at N = 60k and 1M synthetic 64-d points, 10% budget).
Writes the `index` section of BENCHMARKS.md.

    flock /tmp/ddkit-cpu.lock python scripts/bench_index.py
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import machine, today, write_section  # noqa: E402

SCRIPT = "flock /tmp/ddkit-cpu.lock python scripts/bench_index.py"


def best_time(fn, reps: int = 3) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved_best(fns, rounds: int) -> list[float]:
    """Best wall time of each function over `rounds` rounds that run every function once, in turn,
    after one warm-up round: the host's throughput drifts by up to 2x between minutes here, and
    interleaving gives every variant the same chances instead of one variant a bad minute."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


# -- the machine's limits -------------------------------------------------------------------------
def matmul_gflops(n: int = 4096) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / best_time(lambda: a @ b, 5) / 1e9


def copy_bandwidth(mb: int = 512) -> float:
    """STREAM-style copy bandwidth in GB/s, counting the bytes read plus the bytes written."""
    src = torch.ones(mb << 18)  # mb MiB of float32
    dst = torch.empty_like(src)
    t = best_time(lambda: dst.copy_(src), 5)
    return 2 * src.numel() * 4 / t / 1e9


def bundled_openblas():
    """faiss-cpu's bundled OpenBLAS (ctypes handle, version string, the core it detected)."""
    import faiss

    libs = glob.glob(os.path.join(os.path.dirname(os.path.dirname(faiss.__file__)), "faiss_cpu.libs", "libopenblas*"))
    if not libs:
        return None, "not found", "n/a"
    lib = ctypes.CDLL(libs[0])
    lib.openblas_get_config.restype = ctypes.c_char_p
    lib.openblas_get_corename.restype = ctypes.c_char_p
    return lib, lib.openblas_get_config().decode(), lib.openblas_get_corename().decode()


def openblas_sgemm_gflops(lib, m: int, n: int, k: int) -> float:
    """C = A·Bᵀ with faiss's bundled OpenBLAS (the call faiss makes for a distance block)."""
    a = np.random.default_rng(0).standard_normal((m, k), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, k), dtype=np.float32)
    c = np.empty((m, n), np.float32)
    ptr = lambda x: x.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    one, zero = ctypes.c_float(1.0), ctypes.c_float(0.0)
    t = best_time(lambda: lib.cblas_sgemm(101, 111, 112, m, n, k, one, ptr(a), k, ptr(b), k, zero, ptr(c), n), 5)
    return 2 * m * n * k / t / 1e9


def torch_gemm_gflops(m: int, n: int, k: int) -> float:
    a, b = torch.randn(m, k), torch.randn(n, k)
    return 2 * m * n * k / best_time(lambda: a @ b.T, 5) / 1e9


def cpu_id() -> str:
    fields = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = fields.get("flags", "").split()
    return (f"{fields.get('vendor_id')} family {fields.get('cpu family')} model {fields.get('model')} "
            f"(\"{fields.get('model name')}\"), AVX-512: {'yes' if 'avx512f' in flags else 'no'}")


# -- kNN and k-means ------------------------------------------------------------------------------
COLUMNS = ("faiss-cpu (PyPI), before", "faiss:1", "torch", "torch:1", "ddkit.index (auto), after")


def knn_table(matmul: float, nq: int, nb: int, dims, ks, reps: int = 4) -> list[str]:
    import faiss

    from ddkit import index
    from ddkit.index import search

    rows = []
    rng = np.random.default_rng(0)
    for d in dims:
        q = rng.standard_normal((nq, d), dtype=np.float32)
        x = rng.standard_normal((nb, d), dtype=np.float32)
        flops = 2.0 * nq * nb * d
        for k in ks:
            timers = [lambda: faiss.knn(q, x, k)] + [lambda e=e: index.knn(q, x, k, engine=e) for e in ("faiss:1", "torch", "torch:1", "auto")]
            rates = [flops / t / 1e9 for t in interleaved_best(timers, reps)]
            chosen = search.choose_engine(d, k, nq * nb * d)
            cells = " | ".join(f"{v:.1f} ({100 * v / matmul:.0f}%)" for v in rates)
            rows.append(f"| kNN | {nq}×{nb:,}, d={d}, k={k} | {cells} | {chosen} |")
            print(rows[-1], flush=True)
    return rows


def kmeans_table(matmul: float, n: int, d: int, k: int, iterations: int, rounds: int = 4) -> list[str]:
    import faiss

    from ddkit import index
    from ddkit.index import search

    x = np.random.default_rng(1).standard_normal((n, d), dtype=np.float32)
    pass_flops = 2.0 * n * k * d
    stats = {}

    def run_faiss(threads=None):
        old = faiss.omp_get_max_threads()
        if threads:
            faiss.omp_set_num_threads(threads)
        try:
            km = faiss.Kmeans(d, k, niter=iterations, seed=1, max_points_per_centroid=n, verbose=False)
            km.train(x)
        finally:
            faiss.omp_set_num_threads(old)
        last = km.iteration_stats[-1]  # cumulative seconds
        stats.setdefault("search_share", last["time_search"] / max(last["time"], 1e-12))

    results = {}

    def run_ddkit(engine):
        results[engine] = index.kmeans(x, k, seed=1, iterations=iterations, engine=engine)

    engines = ("torch", "torch:1", "auto")
    times = interleaved_best([run_faiss, lambda: run_faiss(1)] + [lambda e=e: run_ddkit(e) for e in engines], rounds)
    rates = [iterations * pass_flops / t / 1e9 for t in times[:2]]
    for engine, t in zip(engines, times[2:]):
        passes = len(results[engine].history) + 1  # assignment passes: one per iteration plus the final one
        rates.append(passes * pass_flops / t / 1e9)
    cells = " | ".join(f"{v:.1f} ({100 * v / matmul:.0f}%)" for v in rates)
    row = (f"| k-means | N={n:,}, d={d}, k={k}, {iterations} iterations (faiss.Kmeans: {100 * stats['search_share']:.0f}% "
           f"of its time in the assignment search) | {cells} | {search.choose_engine(d, 1, n * k * d)} |")
    print(row, flush=True)
    return [row]


def faiss_threads(threads: int, nq: int, nb: int, d: int, k: int) -> float:
    import faiss

    rng = np.random.default_rng(0)
    q = rng.standard_normal((nq, d), dtype=np.float32)
    x = rng.standard_normal((nb, d), dtype=np.float32)
    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        return 2.0 * nq * nb * d / best_time(lambda: faiss.knn(q, x, k)) / 1e9
    finally:
        faiss.omp_set_num_threads(old)


def faiss_with_env(env: dict, nq: int, nb: int, d: int, k: int) -> float:
    """faiss.knn GFLOP/s in a child process with extra environment variables (diagnosis only)."""
    code = (
        "import time, numpy as np, faiss\n"
        f"rng = np.random.default_rng(0); q = rng.standard_normal(({nq}, {d}), dtype=np.float32)\n"
        f"x = rng.standard_normal(({nb}, {d}), dtype=np.float32)\n"
        f"faiss.knn(q, x, {k}); t = min((lambda s: (faiss.knn(q, x, {k}), time.perf_counter() - s)[1])(time.perf_counter()) for _ in range(3))\n"
        f"print(2 * {nq} * {nb} * {d} / t / 1e9)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def faiss_with_database_block(bs: int, nq: int, nb: int, d: int, k: int) -> float:
    import faiss

    rng = np.random.default_rng(0)
    q = rng.standard_normal((nq, d), dtype=np.float32)
    x = rng.standard_normal((nb, d), dtype=np.float32)
    old = faiss.cvar.distance_compute_blas_database_bs
    faiss.cvar.distance_compute_blas_database_bs = bs
    try:
        return 2.0 * nq * nb * d / best_time(lambda: faiss.knn(q, x, k)) / 1e9
    finally:
        faiss.cvar.distance_compute_blas_database_bs = old


# -- greedy k-center ------------------------------------------------------------------------------
def dense_kcenter(x: torch.Tensor, budget: int, first: int, steps: int) -> list[int]:
    """The reference that keeps the dense budget × N distance matrix (the DeepCore approach):
    row i holds the distances from the i-th center to every point; the running minimum is updated
    from the newest row. Written here, for comparison only."""
    n = len(x)
    dist = torch.full((budget, n), -1.0)  # the budget × N matrix, allocated up front
    mins = torch.full((n,), float("inf"))
    picks = [first]
    for i in range(steps):
        p = picks[-1]
        dist[i] = ((x - x[p]) ** 2).sum(1).sqrt()
        mins = torch.minimum(mins, dist[i])
        mins[torch.tensor(picks)] = -1.0
        if i + 1 < steps:
            picks.append(int(torch.argmax(mins)))
    return picks


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> int:
    """Reset the peak-RSS mark (VmHWM) to the current RSS and return it, in KiB.

    (ru_maxrss would not do: Linux carries it over from the parent across fork + exec.)
    """
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kb("VmRSS")


def peak_rss() -> int:
    return _status_kb("VmHWM")


def kcenter_worker(kind: str, n: int, d: int, budget: int, steps: int, h5_path: str | None) -> dict:
    """Run in a child process so ru_maxrss is this configuration's own peak."""
    from ddkit import index

    x = np.random.default_rng(2).standard_normal((n, d), dtype=np.float32)
    base = reset_peak_rss()
    out = {"kind": kind, "n": n, "d": d, "budget": budget, "steps": steps}
    first = int(index.kcenter(x[:1], 1, seed=0).indices[0])  # warm-up (imports, thread pools)
    if kind == "ddkit":  # the bandwidth in this process, just before the timed picks (the host's drifts)
        out["bandwidth"] = copy_bandwidth(512)
        base = reset_peak_rss()
    start = time.perf_counter()
    try:
        if kind == "ddkit":
            res = index.kcenter(x, steps, seed=0)
            out["picks"] = res.indices[:50].tolist()
            out["kernel"] = res.kernel
        elif kind == "ddkit-h5":
            import h5py

            with h5py.File(h5_path, "r") as f:
                res = index.kcenter(f["x"], steps, seed=0)
            out["picks"] = res.indices[:50].tolist()
        else:
            first = int(index.kcenter(x, 1, seed=0).indices[0])
            out["picks"] = dense_kcenter(torch.from_numpy(x), budget, first, steps)[:50]
        out["seconds"] = time.perf_counter() - start
    except (RuntimeError, MemoryError) as exc:
        out["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        out["seconds"] = time.perf_counter() - start
    out["peak_extra_mb"] = (peak_rss() - base) / 1024
    out["data_mb"] = x.nbytes / 2**20
    return out


def run_worker(*args) -> dict:
    cmd = [sys.executable, __file__, "--worker", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or ['killed'])[-1][:160]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def kcenter_table(bandwidth: float, sizes, d: int, fraction: float, max_steps: int, dense_max_steps: int) -> list[str]:
    import h5py

    rows = []
    for n in sizes:
        budget = int(fraction * n)
        steps = min(budget, max_steps)
        ours = run_worker("ddkit", n, d, budget, steps, "-")
        # The bound uses the copy bandwidth measured in the worker just before its timed picks (the
        # host's bandwidth drifts by up to 1.7x between runs); the ratio at the run's start value is shown too.
        near = ours.get("bandwidth", bandwidth)
        bound = n * d * 4 / (near * 1e9)
        strict = n * d * 4 / (max(near, bandwidth) * 1e9)
        per_step = ours["seconds"] / steps
        total = per_step * budget
        note = "" if steps == budget else f" (first {steps} picks timed, ×{budget // steps} extrapolated)"
        rows.append(f"| ddkit.index.kcenter (O(N) running min; {ours.get('kernel', '?')}; bound at {near:.1f} GB/s measured "
                    f"just before; at {max(near, bandwidth):.1f} GB/s: {per_step / strict:.2f}×) | {n:,} | {budget:,} | {1e3 * per_step:.2f} | "
                    f"{per_step / bound:.2f}× | {total:.1f}{note} | {ours['peak_extra_mb']:.0f} |")
        print(rows[-1], flush=True)
        if n <= 100_000:
            path = "/tmp/ddkit-bench-kcenter.h5"
            x = np.random.default_rng(2).standard_normal((n, d), dtype=np.float32)
            with h5py.File(path, "w") as f:
                f.create_dataset("x", data=x, chunks=(8192, d))
            h5_steps = min(budget, 300)
            streamed = run_worker("ddkit-h5", n, d, budget, h5_steps, path)
            os.remove(path)
            ps = streamed["seconds"] / h5_steps
            same = "same picks" if streamed.get("picks") == ours.get("picks")[: len(streamed.get("picks", []))] else "DIFFERENT picks"
            rows.append(f"| same, streamed from chunked HDF5 (page cache), {same} | {n:,} | {budget:,} | {1e3 * ps:.2f} | "
                        f"{ps / bound:.2f}× | {ps * budget:.1f} (first {h5_steps} picks timed) | {streamed['peak_extra_mb']:.0f} |")
            print(rows[-1], flush=True)
        dense_gb = budget * n * 4 / 1e9
        dense_steps = min(budget, dense_max_steps)
        ref = run_worker("dense", n, d, budget, dense_steps, "-")
        if "error" in ref and "seconds" not in ref:
            rows.append(f"| dense budget×N reference | {n:,} | {budget:,} | — | — | did not run: {ref['error']} | needs {dense_gb:,.0f} GB |")
        elif "error" in ref:
            rows.append(f"| dense budget×N reference | {n:,} | {budget:,} | — | — | failed after {ref['seconds']:.1f}s: "
                        f"{ref['error']} | needs {dense_gb:,.0f} GB (machine: {total_ram_gb():.0f} GB) |")
        else:
            rps = ref["seconds"] / dense_steps
            agree = ref["picks"] == ours["picks"][: len(ref["picks"])]
            note = "" if dense_steps == budget else f" (first {dense_steps} picks timed, extrapolated)"
            rows.append(f"| dense budget×N reference (torch, default threads){'' if agree else ' (picks differ!)'} | {n:,} | {budget:,} | "
                        f"{1e3 * rps:.2f} | {rps / bound:.2f}× | {rps * budget:.1f}{note} | {ref['peak_extra_mb']:.0f} |")
        print(rows[-1], flush=True)
    return rows


def total_ram_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def save_and_write(state_file: Path, state: dict) -> None:
    """Keep the run's body and notes (for --render-only) and write the section: body, then notes."""
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps(state, indent=1))
    write_section("index", state["body"] + "".join(f"\n\n{n}" for n in state["notes"]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", nargs=6, default=None)
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the script")
    parser.add_argument("--render-only", action="store_true", help="re-write the section from the last run (runs/bench_index.json)")
    parser.add_argument("--note", dest="notes", action="append", default=[], help="a paragraph appended to the section (kept with the run)")
    args = parser.parse_args()
    state_file = Path("runs/bench_index.json")
    if args.render_only:
        state = json.loads(state_file.read_text())
        state["notes"] = args.notes or state.get("notes", [])
        save_and_write(state_file, state)
        return
    if args.worker:
        kind, n, d, budget, steps, h5 = args.worker
        print(json.dumps(kcenter_worker(kind, int(n), int(d), int(budget), int(steps), h5)))
        return
    import faiss

    from ddkit import index

    torch.manual_seed(0)
    quick = args.quick
    matmul = matmul_gflops(2048 if quick else 4096)
    bandwidth = copy_bandwidth(128 if quick else 512)
    lib, blas_config, corename = bundled_openblas()
    print(f"matmul {matmul:.1f} GFLOP/s, copy {bandwidth:.1f} GB/s, {blas_config}, core {corename}", flush=True)
    nq, nb = (1024, 16384) if quick else (2048, 100_000)
    knn_rows = knn_table(matmul, nq, nb, (64,) if quick else (64, 128, 256), (1, 10))
    km_rows = kmeans_table(matmul, 20_000 if quick else 100_000, 64, 256 if quick else 1024, 3 if quick else 10)
    matmul_after = matmul_gflops(2048 if quick else 4096)

    # Why faiss-cpu is slow: its distance blocks (4096 queries × 1024 database rows), BLAS core type.
    diag = []
    d = 64
    if lib is not None:
        for dd in (64, 256):
            diag.append(f"| GEMM of one faiss distance block, 4096×1024×{dd} | {openblas_sgemm_gflops(lib, 4096, 1024, dd):.1f} | "
                        f"{torch_gemm_gflops(4096, 1024, dd):.1f} (torch/MKL, same shape) |")
        diag.append(f"| square GEMM 4096³ | {openblas_sgemm_gflops(lib, 4096, 4096, 4096):.1f} | {matmul:.1f} (torch/MKL) |")
    dq = 4096 if not quick else 1024
    shape = f"faiss.knn {dq}×{nb:,}, d={d}, k=10"
    for threads in (1, 2):
        diag.append(f"| {shape}, {threads} OpenMP thread{'s' if threads > 1 else ''} (in process) | "
                    f"{faiss_threads(threads, dq, nb, d, 10):.1f} | |")
    for bs in (1024, 16384):
        diag.append(f"| {shape}, distance_compute_blas_database_bs={bs} | {faiss_with_database_block(bs, dq, nb, d, 10):.1f} | |")
    env_note = os.environ.get("OPENBLAS_CORETYPE", "(unset)")
    for name, env in (("OMP_WAIT_POLICY=PASSIVE", {"OMP_WAIT_POLICY": "PASSIVE"}),
                      ("OPENBLAS_CORETYPE=Haswell", {"OPENBLAS_CORETYPE": "Haswell"}),
                      ("OPENBLAS_CORETYPE=SkylakeX", {"OPENBLAS_CORETYPE": "SkylakeX"}),
                      ("OPENBLAS_CORETYPE=Prescott", {"OPENBLAS_CORETYPE": "Prescott"})):
        try:
            rate = faiss_with_env(env, dq, nb, d, 10)
            diag.append(f"| {shape}, default threads, child process with {name} | {rate:.1f} | |")
        except subprocess.CalledProcessError as exc:
            diag.append(f"| {name} | failed: {exc.stderr.strip()[-80:]} | |")
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    matmul_1 = matmul_gflops(2048 if quick else 4096)
    torch.set_num_threads(torch_threads)
    diag.append(f"| fp32 matmul 4096³, torch/MKL, 1 thread | | {matmul_1:.1f} |")

    kc_rows = kcenter_table(bandwidth, (20_000,) if quick else (60_000, 1_000_000), 64, 0.10,
                            max_steps=200 if quick else 1000, dense_max_steps=200 if quick else 6000)

    body = "\n".join([
        "## ddkit.index at the machine's limit (issue 6)",
        "",
        f"Machine: {machine()}. CPU: {cpu_id()}. Date: {today()}. Script: `{SCRIPT}`. "
        f"torch threads: {torch.get_num_threads()}, faiss OpenMP threads: {faiss.omp_get_max_threads()}. "
        f"{index.backend().describe()}.",
        "",
        f"**Reference throughput, measured in this run:** fp32 matmul (torch/MKL, 4096³) {matmul:.1f} GFLOP/s at the start, "
        f"{matmul_after:.1f} after the kNN/k-means runs (the machine is shared: percentages use the first value); "
        f"copy bandwidth {bandwidth:.1f} GB/s (bytes read + written). faiss-cpu {faiss.__version__} bundles {blas_config}; "
        f"it detected the core as `{corename}`; OPENBLAS_CORETYPE in this environment: {env_note}.",
        "",
        "### kNN and k-means: GFLOP/s (share of the matmul throughput)",
        "",
        "GFLOP/s = 2·(queries)·(database)·d per search (k-means: per assignment pass) ÷ wall time; best of 4 rounds "
        "after a warm-up round, each round running every column once in turn (the host's throughput drifts by up to 2× "
        "between minutes; interleaving gives every column the same chances). Columns: `faiss.knn` / `faiss.Kmeans` of the PyPI wheel with its default threads (before); the same "
        "single-threaded (`faiss:1`); ddkit's torch distance blocks with torch's default threads (`torch`) and single-"
        "threaded (`torch:1`); `ddkit.index` with the engine its measured check chose (after). ddkit's k-means is its own "
        "Lloyd loop with the engine doing the assignment.",
        "",
        "| task | shape | " + " | ".join(COLUMNS) + " | engine chosen by the check |",
        "|---|---|---|---|---|---|---|---|",
        *knn_rows,
        *km_rows,
        "",
        "### Why faiss-cpu is slow here",
        "",
        "| measurement | faiss's bundled OpenBLAS, GFLOP/s | comparison |",
        "|---|---|---|",
        *diag,
        "",
        "### Greedy k-center: step time vs the memory-bandwidth bound, and a dense budget × N reference",
        "",
        f"Synthetic 64-d float32 points, 10% budget. Bound per pick = bytes of the point matrix ÷ copy bandwidth "
        f"({bandwidth:.1f} GB/s at the start of the run; re-measured in the worker just before each ddkit run, which the "
        f"'vs bound' column uses; other rows of a size use that size's value). Peak memory = the child process's peak RSS minus its RSS after creating the points "
        "(so it excludes the points themselves; ddkit keeps a centered copy of in-memory points).",
        "",
        "| method | N | budget | ms per pick | vs bound | total s | extra peak memory (MB) |",
        "|---|---|---|---|---|---|---|",
        *kc_rows,
    ])
    if quick:
        print(body)
    else:
        save_and_write(state_file, {"body": body, "notes": args.notes})


if __name__ == "__main__":
    main()
