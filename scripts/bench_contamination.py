"""Contamination detection under real perturbations: recall per perturbation type and the share of
clean images flagged, for the teacher-free detector (`ddkit.contamination`, the default of `ddkit
validate --against` and `ddkit pool dedup`) and the older teacher-embedding detector (`pool dedup
--detector teacher`, map and pooled embeddings at its default threshold 0.1), plus time per 100k images.

Copies: `--per-kind` Fashion-MNIST TEST images under each perturbation of the suite
(ddkit.contamination.perturb, seed `--seed`), mixed into clean pools of 1k and of every train
image (60k: Fashion-MNIST has no more; the issue asked for 100k). Each image is judged against the
test set on its own, so one run over the large pool gives the small pool's numbers too (the 1k
pool is a seeded subset of it). Writes the `contamination` section of BENCHMARKS.md.

    OMP_NUM_THREADS=1 flock /tmp/ddkit-cpu.lock python scripts/bench_contamination.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import machine, today, write_section  # noqa: E402

from ddkit import index  # noqa: E402
from ddkit.contamination.detector import Detector, read_calibration  # noqa: E402
from ddkit.contamination.perturb import perturb, suite_kinds  # noqa: E402
from ddkit.data import load_dataset  # noqa: E402
from ddkit.seeding import numpy_rng  # noqa: E402

COMMAND = "OMP_NUM_THREADS=1 flock /tmp/ddkit-cpu.lock python scripts/bench_contamination.py"


def command() -> str:
    return " ".join([COMMAND, *sys.argv[1:]])
TEACHER = "runs/teachers/fashion-mnist-convnet-bn.safetensors"


def teacher_scores(teacher_path: str, pool: np.ndarray, test: np.ndarray, info, embedding: str) -> np.ndarray:
    """Distance of each pool image's unit teacher embedding to its nearest test image's (the old detector)."""
    from ddkit.models.teacher import load_teacher
    from ddkit.pools.embed import teacher_embeddings

    teacher = load_teacher(teacher_path, "cpu")
    emb = teacher_embeddings(teacher, torch.from_numpy(pool), info.normalization, embedding)
    ref = teacher_embeddings(teacher, torch.from_numpy(test), info.normalization, embedding)
    d2, _ = index.knn(emb, ref, 1)
    return np.sqrt(np.maximum(d2[:, 0], 0.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-kind", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--teacher", default=TEACHER)
    parser.add_argument("--clean", type=int, default=0, help="clean pool size (0: every train image)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    clean = train.images.numpy()
    order = numpy_rng(args.seed, "bench", "clean").permutation(len(clean))
    clean = clean[order[: args.clean or len(clean)]]
    small = np.arange(min(1000, len(clean)))  # the 1k pool: the first 1000 of the seeded order
    test_images = test.images.numpy()
    kinds = suite_kinds()
    sources = numpy_rng(args.seed, "bench", "sources").choice(len(test_images), args.per_kind, replace=False)
    copies = np.concatenate([perturb(test_images[sources], kind, args.seed) for kind in kinds])
    kind_of = np.repeat(np.arange(len(kinds)), args.per_kind)
    pool = np.concatenate([clean, copies])

    start = time.perf_counter()
    detector = Detector(test_images)
    m = detector.match(pool)
    seconds = time.perf_counter() - start
    per_100k = seconds * 100_000 / len(pool)
    flagged = {"pixels": m.flagged}
    names = {"pixels": f"teacher-free `{detector.version}`"}

    teacher_seconds = {}
    if Path(args.teacher).exists():
        for embedding in ("map", "pooled"):
            start = time.perf_counter()
            dist = teacher_scores(args.teacher, pool, test_images, train.info, embedding)
            teacher_seconds[embedding] = (time.perf_counter() - start) * 100_000 / len(pool)
            flagged[f"teacher-{embedding}"] = dist <= 0.1
            names[f"teacher-{embedding}"] = f"teacher embeddings ({embedding}, threshold 0.1)"

    n_clean = len(clean)
    header = "| detector | " + " | ".join(kinds) + " | clean flagged, 1k pool | clean flagged, 60k pool |"
    rows = [header, "|" + "---|" * (len(kinds) + 3)]
    for key, f in flagged.items():
        recall = [f[n_clean:][kind_of == k].mean() for k in range(len(kinds))]
        cells = " | ".join(f"{100 * r:.1f}" for r in recall)
        rows.append(f"| {names[key]} | {cells} | {100 * f[small].mean():.2f} ({int(f[small].sum())}) "
                    f"| {100 * f[:n_clean].mean():.2f} ({int(f[:n_clean].sum())}) |")
    clean_scores = m.score[:n_clean]
    exact_clean = int(m.exact[:n_clean].sum())
    cal = read_calibration()
    met = all(flagged["pixels"][n_clean:][kind_of == k].mean() >= 0.95 for k in range(len(kinds)))
    met = met and flagged["pixels"][:n_clean].mean() <= 0.01
    quant = ", ".join(f"{q:.1%} {np.quantile(clean_scores, q):.4f}" for q in (0.001, 0.005, 0.01, 0.05))
    times = [f"teacher-free {per_100k:.0f} s"] + [f"teacher {e} {s:.0f} s (embedding pool and test set, CPU)"
                                                  for e, s in teacher_seconds.items()]
    body = f"""## contamination

Command: `{command()}` ({today()}). Machine: {machine()}; one thread.

{args.per_kind} Fashion-MNIST **test** images under each perturbation of `ddkit.contamination.perturb` (seed {args.seed}:
exact; Gaussian noise σ 4–10 grey levels; a 1–2 px shift; a horizontal flip; a 90% crop resized back; JPEG q75;
brightness ×(1 ± 0.1); a 3–8° rotation; two of these combined), mixed into clean pools of 1k and of all 60k
Fashion-MNIST **train** images (the issue asked for 100k; the train split has 60k). Recall: share of the copies of
each type flagged (%). Clean flagged: share (count) of the train images flagged as copies of a test image.
Threshold of the teacher-free detector: {cal['threshold']:.4g}, calibrated by `scripts/calibrate_contamination.py`
on train images only (suite seed {cal['seed']}, at most {cal['target_clean_rate']:.2%} of distinct train images flagged).

{chr(10).join(rows)}

Time per 100k images checked against the 10k test set: {'; '.join(times)}.

**Goal (≥ 95% recall on every type with ≤ 1% of clean images flagged): {'met' if met else 'not met'}.**

How the teacher-free detector decides (`ddkit/contamination/detector.py`): exact pixel hashes; FAISS candidates
(k = {detector.config.k}) in a canonical frame (centroid and size normalized, so shifts and crops barely move an
image), the test set indexed with its mirror images; a residual after the best of a few undo-edits and ±{detector.config.max_shift}
px shifts; then the best {detector.config.refine_top} candidates registered onto the query (affine map, gain and offset, Gauss-Newton)
and scored by what is left, relative to the image.

Clean train images against the test set, teacher-free score (lower = closer) at the quantiles {quant};
{exact_clean} train images are byte-identical to a test image. The clean images flagged are not all false alarms:
looking at the closest train/test pairs (`ddkit.contamination.Detector(...).match`, then the pairs side by side),
the very closest are the same photograph or the same bag or cardigan photographed the same way, and most others are plain items (shirts, pullovers, trousers) whose 28×28 images differ only in a faint
texture. A rotated or cropped copy is resampled, and what resampling blurs away is of the same size as the
difference between such twins, so at ≤ 1% clean flagged the threshold has to give up part of the rotated, cropped
and combined copies: that is where the goal is missed. The 1k pool's share is 1k images' worth of the same
rate (a handful of images either way). Timing: the machine's 2 cores were shared with other jobs
during the run, so the seconds are an upper bound.
"""
    print(body)
    if not args.no_write:
        write_section("contamination", body)


if __name__ == "__main__":
    main()
