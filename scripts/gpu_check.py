#!/usr/bin/env python
"""Run ddkit's tiny end-to-end chain on a device and report what each stage measured.

    python scripts/gpu_check.py                       # --device cuda: fails at once without a GPU
    python scripts/gpu_check.py --json gpu_check.json # also the table as JSON
    python scripts/gpu_check.py --device cpu --dataset procedural --stages teacher,evaluate   # a smoke run
    python scripts/gpu_check.py --stages decode       # only the image-decode rates (no teacher)
    python scripts/gpu_check.py --stages presets      # only the paper presets' iteration times

The chain: a teacher trained for a few epochs on the dataset (fashion-mnist-mini by default), every
registered synthesizer at IPC 1 with small configs (MTT from a one-expert buffer), every selector
with a small budget, a pool pass (build, pixel dedup, teacher scores, k-center over the scores), and
an evaluation of the random-real set under a hard-label and a soft-label protocol with few steps.
The `decode` stage writes a JPEG folder (scripts/make_image_folder.py, with a resize + crop fit) and
times one streamed pass over it per decode backend (`ddkit.data.batch_decode`): PIL in the DataLoader
workers, then nvjpeg batch decode on the GPU (torchvision in the workers with --device cpu), in
images/s, with the largest pixel difference from the PIL pass.
The `presets` stage times a few iterations of dm and mtt under `preset=paper` (the published recipes:
DM's 20 000 iterations of a width-128 ConvNet with 256 real images per class; MTT's IPC row with
its syn_steps unrolled student steps, from a one-expert buffer long enough for the row) at IPC
10, as the difference between a run of 1 and a run of 1 + N iterations (so set-up is not counted),
and extrapolates the full recipe's time. It runs on a GPU only: on a CPU it is reported as skipped.
Per stage it prints wall seconds, peak GPU memory (torch.cuda.max_memory_allocated, reset before
each stage) and, where the stage runs distance work, which `ddkit.index` backend did it (faiss-gpu,
torch on the GPU, or a CPU engine). A failing stage is reported with its error and the chain goes
on (stages that needed its output are skipped); the exit code is 1 when any stage failed.

Why a script and not a test: the test suite runs on CPU-only machines. This is what to run on the
first GPU ddkit gets (about a minute on a recent GPU is the aim; five is the limit), so that
device bugs (tensors on two devices, `.numpy()` of CUDA tensors, generators on the wrong device)
show up in one run. Its results are not benchmarks: the configs are far too small to mean anything
about quality.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

STAGES = ("teacher", "synth", "select", "pool", "evaluate", "decode", "presets")
PRESET_IPC = 10  # the presets stage distils at this IPC (MTT's IPC-10 row)
# The smallest settings that still run each method end to end (as in tests/test_contracts.py);
# a method not named here runs with its defaults.
SYNTH_CONFIGS = {
    "infer": {"iterations": 5},
    "nrr-dd": {"mipc": 12, "num_crop": 3, "iterations": 5},
    "dm": {"iterations": 5, "batch_real": 16, "net_options": "depth=2,width=16,norm=instance"},
    "mtt": {"iterations": 3, "syn_steps": 2, "max_start_epoch": 1, "expert_epochs": 1},
}
SELECT_CONFIGS = {
    "kd3": {"epochs": 2, "batch_size": 64, "student": "convnet-bn", "student_width": 8, "augmentation": "none",
            "tau": 0.1},
}
ACTIVE_CONFIG = {"width": 8, "depth": 2, "steps_per_label": 0.5, "min_steps": 10, "batch_size": 32}
INDEX_METHODS = {"herding", "kcenter", "pcoreset", "pcoreset-teacher", "coreset-features", "pool"}
IPC = 2  # INFER keeps one real image per class and needs two
BUDGET = 20  # selectors: a multiple of 10 classes


@dataclass
class StageResult:
    stage: str
    ok: bool | None  # None: skipped
    wall_s: float = 0.0
    peak_mem_mb: float | None = None
    index: str = "-"
    note: str = ""
    error: str = ""
    images_per_s: float | None = None  # decode stages


@dataclass
class Report:
    device: str
    gpu: str
    torch: str
    dataset: str
    stages: list[StageResult] = field(default_factory=list)
    index_backend: dict | None = None
    total_wall_s: float = 0.0

    @property
    def failed(self) -> list[str]:
        return [s.stage for s in self.stages if s.ok is False]


class Runner:
    """Runs stages, timing each and catching its error, so one bug does not hide the next."""

    def __init__(self, device: str, report: Report, verbose: bool):
        import torch

        self.torch, self.device, self.report, self.verbose = torch, device, report, verbose
        self.cuda = device.startswith("cuda")

    def run(self, stage: str, fn, needs: tuple = ()):
        missing = [n for n in needs if n is None]
        if missing:
            self.report.stages.append(StageResult(stage, None, note="skipped: an earlier stage failed"))
            return None
        torch = self.torch
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        result, error, note = None, "", ""
        rate = None
        try:
            out = fn()
            result, note = out if isinstance(out, tuple) else (out, "")
            if isinstance(result, Rate):
                result, rate = result.result, result.images_per_s
            if self.cuda:
                torch.cuda.synchronize()
        except Exception as exc:  # noqa: BLE001 - a check reports every failure and goes on
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if self.verbose:
                traceback.print_exc()
        wall = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2**20 if self.cuda else None
        name = stage.split(":", 1)[-1]
        index = _index_library(self.device) if name in INDEX_METHODS else "-"
        res = StageResult(stage, not error, round(wall, 3), None if peak is None else round(peak, 1), index, note, error,
                          None if rate is None else round(rate, 1))
        self.report.stages.append(res)
        print(_row(res), flush=True)
        return None if error else (result if result is not None else True)


@dataclass
class Rate:
    """What a stage returns when it measured a rate (kept in the report's `images_per_s`)."""

    result: object
    images_per_s: float


def _index_library(device: str) -> str:
    from ddkit.index.device import backend

    b = backend(device)
    chosen = sorted({c["chosen"] for c in b.checks.values()})
    return b.library + (f" ({', '.join(chosen)})" if chosen else "")


def _row(s: StageResult) -> str:
    status = {True: "ok", False: "FAIL", None: "skip"}[s.ok]
    mem = "-" if s.peak_mem_mb is None else f"{s.peak_mem_mb:.0f}"
    text = f"{s.stage:<28} {status:<5} {s.wall_s:>8.2f} {mem:>9} {s.index:<24} {s.note}"
    return text + (f"  {s.error}" if s.error else "")


HEADER = f"{'stage':<28} {'':<5} {'wall s':>8} {'peak MiB':>9} {'index':<24} note"


def check_device(device: str) -> None:
    """One clear error when the device cannot be used, before anything runs."""
    import torch

    from ddkit.errors import InvalidInput

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidInput(f"--device {device}: no CUDA device is present (torch {torch.__version__}, "
                           f"built for CUDA {torch.version.cuda or 'none'})",
                           "run this on a machine with a GPU, or pass --device cpu for a CPU smoke run")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise InvalidInput(f"--device {device} is not cpu or cuda[:N]", "use --device cuda or --device cpu")


def run_chain(args, work: Path, report: Report) -> None:
    from ddkit.selectors import SELECTORS, run_selector
    from ddkit.synth import SYNTHESIZERS, run_synthesizer

    r = Runner(args.device, report, args.verbose)
    stages = set(args.stages)
    only = set(args.only) if args.only else None
    dataset, dev = args.dataset, args.device

    def wanted(name: str) -> bool:
        return only is None or name in only

    r.run("setup (imports, CUDA context)", lambda: _warm_up(dev))
    teacher = r.run("teacher", lambda: _teacher(work, dataset, dev, args.teacher_epochs)) \
        if stages - {"decode", "presets"} else None
    random_real = None
    if "synth" in stages:
        experts = None
        for name in SYNTHESIZERS.names():
            if not wanted(name):
                continue
            config = dict(SYNTH_CONFIGS.get(name, {}))
            method = SYNTHESIZERS.get(name)
            takes_teacher = method.max_teachers is None or method.max_teachers >= 1
            if "experts" in {f.name for f in _fields(method.Config)}:
                if experts is None:
                    experts = r.run("experts (for mtt)", lambda: _experts(work, dataset, dev))
                if experts is None:
                    r.run(f"synth:{name}", None, needs=(None,))
                    continue
                config["experts"] = experts
            out = work / f"{name}.ddk.h5"

            def synth(name=name, config=config, out=out, takes_teacher=takes_teacher):
                run_synthesizer(name, dataset, [teacher] if takes_teacher else [], IPC, config, seed=0, out=out,
                                device=dev)
                return str(out), f"IPC {IPC}"

            done = r.run(f"synth:{name}", synth, needs=(teacher,) if takes_teacher else ())
            if name == "random-real":
                random_real = done
    if "select" in stages:
        for name in SELECTORS.names():
            if not wanted(name):
                continue
            config = SELECT_CONFIGS.get(name) or _active_config(SELECTORS.get(name).Config)
            out = work / f"{name}.sel.h5"

            def select(name=name, config=config, out=out):
                run_selector(name, dataset, [teacher], BUDGET, config, seed=0, out=out, device=dev)
                return str(out), f"budget {BUDGET}"

            r.run(f"select:{name}", select, needs=(teacher,))
    if "pool" in stages:
        r.run("pool", lambda: _pool(work, dataset, teacher, dev), needs=(teacher,))
    if "evaluate" in stages:
        if random_real is None:  # the set to judge, when the synth stages did not make it
            random_real = r.run("synth:random-real (for evaluate)",
                                lambda: _random_real(work, dataset, dev))
        for label, protocol in (("hard", args.hard_protocol), ("soft", args.soft_protocol)):
            needs = (random_real, teacher) if label == "soft" else (random_real,)
            r.run(f"evaluate:{label}", lambda p=protocol, label=label: _evaluate(random_real, p, teacher, dev, args.steps,
                                                                                    label),
                  needs=needs)
    if "presets" in stages:
        if not r.cuda and not args.presets_on_cpu:
            for method in ("dm", "mtt"):
                report.stages.append(StageResult(f"preset:{method}", None, note="skipped: presets are timed on a GPU"))
                print(_row(report.stages[-1]), flush=True)
        else:
            shrink = PRESET_SHRINK_CPU if not r.cuda else {}
            r.run("preset:dm", lambda: _preset(work, "dm", dataset, dev, args.preset_iterations, shrink.get("dm")))
            experts = r.run("experts (for preset:mtt)", lambda: _preset_experts(work, dataset, dev, shrink.get("experts")))
            r.run("preset:mtt", lambda: _preset(work, "mtt", dataset, dev, args.preset_iterations, shrink.get("mtt"),
                                                experts), needs=(experts,))
    if "decode" in stages:
        folder = r.run("decode:folder", lambda: _decode_folder(work, args.decode_images, args.decode_size))
        reference: dict = {}
        for backend in ("pil", "nvjpeg" if r.cuda else "torchvision"):
            r.run(f"decode:{backend}", lambda b=backend: _decode_pass(folder, b, dev, reference), needs=(folder,))


def _warm_up(device: str):
    """One-time costs out of the stage timings: the first optimizer imports torch._dynamo (seconds),
    kornia and faiss load, and the first CUDA call creates the context."""
    import faiss  # noqa: F401
    import kornia  # noqa: F401
    import torch
    import torchvision.io  # noqa: F401 (the decode stage's library: seconds to import)

    x = torch.zeros(4, requires_grad=True, device=device)
    torch.optim.SGD([x], lr=0.1).step()
    return None, "one-time costs, kept out of the stages below"


def _fields(config_cls):
    import dataclasses

    return dataclasses.fields(config_cls) if dataclasses.is_dataclass(config_cls) else ()


def _active_config(config_cls) -> dict:
    names = {f.name for f in _fields(config_cls)}
    return {k: v for k, v in ACTIVE_CONFIG.items() if k in names}


def _teacher(work: Path, dataset: str, device: str, epochs: int):
    from ddkit.teachers import train_teacher

    out = work / "teacher.safetensors"
    result = train_teacher(out, dataset, "convnet-bn", {"width": 16}, epochs=epochs, batch_size=128, device=device)
    return str(out), f"convnet-bn w16, {epochs} epochs, test accuracy {result.header.test_accuracy:.3f}"


def _experts(work: Path, dataset: str, device: str):
    from ddkit.experts import ExpertTraining, train_experts

    out = work / "experts.h5"
    train_experts(out, dataset, "convnet", {"width": 8, "depth": 2}, 1, ExpertTraining(epochs=2, batch_size=256),
                  device=device)
    return str(out), "1 expert × 2 epochs"


def _random_real(work: Path, dataset: str, device: str):
    from ddkit.synth import run_synthesizer

    out = work / "random-real-eval.ddk.h5"
    run_synthesizer("random-real", dataset, [], IPC, {}, seed=0, out=out, device=device)
    return str(out)


def _pool(work: Path, dataset: str, teacher: str, device: str):
    """The pool passes: build from the dataset's train split, dedup (teacher features, kNN), score with the
    teacher, k-center over the scores."""
    from ddkit.data import load_dataset
    from ddkit.pools.build import build_pool, dataset_part
    from ddkit.pools.dedup import dedup_pool
    from ddkit.pools.kcenter import kcenter_from_scores
    from ddkit.pools.scores import score_pool

    train = load_dataset(dataset, "train")
    pool = work / "check.pool.h5"
    build_pool(pool, [dataset_part(train)], train.info)
    deduped = work / "check-dedup.pool.h5"
    report = dedup_pool(pool, teacher, deduped, device=device, detector="teacher")  # teacher features + kNN
    scores = work / "check.scores.h5"
    score_pool(deduped, teacher, scores, device=device)
    kcenter_from_scores(scores, "probs", BUDGET, work / "check-kcenter.sel.h5")
    kept = report.get("size_after", "?")
    return str(scores), f"{len(train)} images, {kept} after dedup"


def _evaluate(train_set: str, protocol: str, teacher: str | None, device: str, steps: int, label: str):
    from ddkit.evaluate import evaluate

    card = evaluate(train_set, protocol, seeds=[0], teachers=[teacher] if label == "soft" else [], device=device,
                    baseline=False, full_reference=False, steps=steps, write_card=False, ranking=False)
    return train_set, f"{protocol}, {steps} steps, accuracy {card.result.mean:.3f}"


# --presets-on-cpu (the test suite's smoke run): the presets' code path with tiny networks
PRESET_SHRINK_CPU = {
    "dm": {"net_options": "depth=2,width=8,norm=instance", "batch_real": 8},
    "mtt": {"syn_steps": 2, "max_start_epoch": 1, "expert_epochs": 1, "model": ""},
    "experts": {"model_options": {"width": 8, "depth": 2}, "epochs": 2},
}


def _preset_experts(work: Path, dataset: str, device: str, shrink: dict | None = None):
    """One expert of the paper's architecture (ConvNet-3, width 128, instance norm), trained for as many
    epochs as MTT's IPC row needs (max_start_epoch + expert_epochs)."""
    from ddkit.experts import ExpertTraining, train_experts
    from ddkit.synth.mtt import mtt_paper_preset

    row = mtt_paper_preset(PRESET_IPC)
    shrink = shrink or {}
    epochs = shrink.get("epochs", row["max_start_epoch"] + row["expert_epochs"])
    out = work / "preset.experts.h5"
    train_experts(out, dataset, "convnet", shrink.get("model_options", {}), 1, ExpertTraining(epochs=epochs), device=device)
    return str(out), f"1 expert × {epochs} epochs (the paper's buffer: 100 × 50)"


def _preset(work: Path, method: str, dataset: str, device: str, iterations: int, shrink: dict | None = None,
            experts: str | None = None):
    """Seconds per iteration of `method` under preset=paper at PRESET_IPC: a run of 1 iteration and one
    of 1 + `iterations`, the difference divided by `iterations`; and the full recipe's extrapolated time."""
    from ddkit.config import build_config
    from ddkit.synth import SYNTHESIZERS, run_synthesizer

    config = {"preset": "paper", **(shrink or {}), **({"experts": experts} if experts else {})}
    walls = []
    for n in (1, 1 + iterations):
        start = time.perf_counter()
        run_synthesizer(method, dataset, [], PRESET_IPC, {**config, "iterations": n}, seed=0,
                        out=work / f"preset-{method}-{n}.ddk.h5", device=device)
        walls.append(time.perf_counter() - start)
    per_iteration = max(0.0, walls[1] - walls[0]) / iterations
    full = build_config(SYNTHESIZERS.get(method).Config, {k: v for k, v in config.items() if k != "experts"} | (
        {"experts": "x"} if method == "mtt" else {}), context={"ipc": PRESET_IPC})
    hours = per_iteration * full.iterations / 3600
    return (str(work / f"preset-{method}-{1 + iterations}.ddk.h5"),
            f"preset=paper IPC {PRESET_IPC}: {per_iteration:.3f} s/iteration over {iterations}; "
            f"{full.iterations} iterations ≈ {hours:.2f} h")


def _script(name: str):
    """A sibling script as a module (scripts/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


def _decode_folder(work: Path, images: int, size: int):
    """A JPEG folder of `images` train images of size×size (10 classes, quality 90) declaring the
    ImageNet-style fit (shorter side to 7/8 of size, then the central 3/4 square), indexed once here so
    that the passes below time decoding only."""
    from ddkit.data import load_dataset

    make = _script("make_image_folder")
    per_class = max(1, images // 10)
    root = work / "decode-folder"
    make.generate(root, make.Args(classes=10, train_per_class=per_class, test_per_class=1, size=size, seed=0,
                                  quality=90, corrupt=0, pool_only=False), workers=max(1, min(8, os.cpu_count() or 1)))
    fit = {"image_size": size * 3 // 4, "resize": size * 7 // 8}
    (root / "ddkit-folder.json").write_text(json.dumps(fit))
    with _env(DDKIT_DATA_MODE="stream", DDKIT_DECODE="pil"):
        n = len(load_dataset(f"imagefolder:{root}", "train"))
    return str(root), f"{n} JPEGs {size}×{size} q90, fit resize {fit['resize']} crop {fit['image_size']}"


@contextmanager
def _env(**values):
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _decode_pass(root: str, backend: str, device: str, reference: dict):
    """One streamed pass (batches of 256, uint8 on `device`) over the folder with one decode backend;
    the first backend's pixels are the reference the next is compared with."""
    import torch

    from ddkit.data import load_dataset
    from ddkit.data.batch_decode import decode_plan
    from ddkit.data.manifest import stream_workers
    from ddkit.data.stream import iter_batches

    with _env(DDKIT_DATA_MODE="stream", DDKIT_DECODE=backend):
        ds = load_dataset(f"imagefolder:{root}", "train")
        plan = decode_plan(device)  # probes GPU decode once, outside the timing
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        pixels = [b.x for b in iter_batches(ds, 256, raw=True, device=device)]
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    pixels = torch.cat([p.cpu() for p in pixels])
    rate = len(ds) / wall
    note = f"{rate:.0f} images/s, {plan.describe()}, {stream_workers()} workers"
    if reference:
        d = (pixels.int() - reference["pixels"].int()).abs()
        note += f"; vs {reference['backend']}: max |Δ| {int(d.max())}/255, mean {float(d.float().mean()):.3f}"
    else:
        reference.update(backend=backend, pixels=pixels)
    return Rate(root, rate), note


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a smoke run")
    parser.add_argument("--dataset", default="fashion-mnist-mini", help="registered dataset (default: the embedded mini set)")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"comma-separated subset of {','.join(STAGES)} (the teacher trains unless only decode is asked)")
    parser.add_argument("--only", default="", help="comma-separated method names: run only these synthesizers/selectors")
    parser.add_argument("--teacher-epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=50, help="student steps of each evaluation")
    parser.add_argument("--hard-protocol", default="hard-cpu@2")
    parser.add_argument("--soft-protocol", default="teacher-cpu@2")
    parser.add_argument("--decode-images", type=int, default=4000, help="decode stage: JPEGs in its folder (train)")
    parser.add_argument("--decode-size", type=int, default=160, help="decode stage: their side in pixels")
    parser.add_argument("--preset-iterations", type=int, default=5, help="presets stage: iterations timed per method")
    parser.add_argument("--presets-on-cpu", action="store_true",
                        help="run the presets stage on a CPU too, with tiny networks (a smoke run of its code path)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the files made here (default: a temp folder)")
    parser.add_argument("--verbose", action="store_true", help="print the traceback of a failing stage")
    args = parser.parse_args(argv)
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]

    from ddkit.errors import DdkitError

    unknown = sorted(set(args.stages) - set(STAGES))
    try:
        if unknown:
            from ddkit.errors import InvalidInput

            raise InvalidInput(f"--stages: unknown stage(s) {unknown}", f"choose from {','.join(STAGES)}")
        check_device(args.device)
    except DdkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import torch

    from ddkit.index.device import backend

    gpu = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "none"
    report = Report(args.device, gpu, torch.__version__, args.dataset)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ddkit-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"ddkit gpu_check: device {args.device} ({gpu}), torch {torch.__version__}, dataset {args.dataset}")
    print(HEADER)
    start = time.perf_counter()
    try:
        run_chain(args, work, report)
    finally:
        report.total_wall_s = round(time.perf_counter() - start, 2)
        report.index_backend = backend(args.device).to_dict()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"total {report.total_wall_s:.1f} s; index backend: {backend(args.device).describe()}")
    if args.json:
        payload = {**asdict(report), "failed": report.failed}
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
    if report.failed:
        print(f"FAILED stages: {', '.join(report.failed)} (rerun with --verbose for tracebacks)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
