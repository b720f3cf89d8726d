"""The main job end to end on the embedded dataset, with no download: train a small teacher, distill
with distribution matching (`dm`, the method that beats random real on this set, see BENCHMARKS.md
section `matching`), describe and render the file, and evaluate it under the CPU hard-label protocol
beside a random real subset of the same budget."""

from __future__ import annotations

from pathlib import Path

from ddkit.evaluate import evaluate
from ddkit.store import describe, render_grid
from ddkit.synth import run_synthesizer
from ddkit.teachers import train_teacher

METHOD = "dm"


def run_quickstart(workdir: str, dataset: str, ipc: int, epochs: int, steps: int | None, seed: int,
                   iterations: int = 300, echo=print) -> dict:
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    teacher_path = work / "teacher.safetensors"
    distilled_path = work / f"{METHOD}-ipc{ipc}.ddk.h5"
    grid_path = work / f"{METHOD}-ipc{ipc}.png"

    echo(f"[1/5] training a convnet-bn teacher on {dataset} ({epochs} epochs; its logits are stored as soft labels)")
    result = train_teacher(teacher_path, dataset, "convnet-bn", {"width": 32}, epochs=epochs, seed=seed, overwrite=True)
    echo(f"      {teacher_path}: val {100 * result.header.val_accuracy:.2f}%, test {100 * result.header.test_accuracy:.2f}%")

    echo(f"[2/5] distilling {distilled_path} with {METHOD} (distribution matching) at IPC {ipc}, {iterations} iterations")
    run_synthesizer(METHOD, dataset, [str(teacher_path)], ipc, {"iterations": iterations}, seed, distilled_path,
                    overwrite=True)

    echo(f"[3/5] ddkit info {distilled_path}")
    echo(describe(distilled_path))

    echo(f"[4/5] ddkit show {distilled_path} --out {grid_path}")
    render_grid(distilled_path, grid_path, per_class=min(ipc, 10), overwrite=True)

    echo("[5/5] ddkit evaluate --protocol hard-cpu@1 (3 seeds, beside a random real subset of the same size): @1 is the "
         "version of the quickstart's number in BENCHMARKS.md; `ddkit evaluate` without --protocol uses the newest "
         "version of hard-cpu, and numbers are comparable only under the same NAME@VERSION")
    card = evaluate(str(distilled_path), "hard-cpu@1", seeds=[0, 1, 2], steps=steps, full_reference=False)
    echo(card.table())
    echo(f"done: files in {work}/")
    return {"teacher": str(teacher_path), "distilled": str(distilled_path), "grid": str(grid_path), "card": card.to_dict()}
