"""The verbs that make training sets: `synthesize` (distill), `select` (pick real samples), `merge`."""

from __future__ import annotations

import click

from ddkit.cli.common import COUNT, OUT_FILE, argv_without, config_option, device_option, local
from ddkit.datainfo import DEFAULT_DATASET


@click.command()
@click.option("--method", default="random-real", show_default=True, help="registered synthesizer (`ddkit list synthesizers`)")
@click.option("--dataset", default=DEFAULT_DATASET, show_default=True)
@click.option("--teacher", "teachers", multiple=True, type=click.Path(), help="teacher file (repeat for several)")
@click.option("--ipc", required=True, type=COUNT, help="budget: stored images per class")
@config_option()
@click.option("--seed", default=0, show_default=True)
@device_option()
@click.option("--out", required=True, type=OUT_FILE, help="output .ddk.h5 file")
@click.option("--overwrite", is_flag=True, help="replace an existing output, and start over from an interrupted run's OUT.work/")
@click.option("--resume", is_flag=True, help="continue an interrupted run from its finished work items (OUT.work/)")
@click.option("--nproc", default=1, show_default=True, type=COUNT, help="processes (torchrun): work items are shared out, rank 0 writes")
def synthesize(method, dataset, teachers, ipc, config_pairs, seed, device, out, overwrite, resume, nproc):
    """Distill DATASET into a compact .ddk.h5 training set."""
    from ddkit import distributed
    from ddkit.synth import run_synthesizer

    if nproc > 1 and distributed.world().size == 1:
        distributed.launch(nproc, argv_without("--nproc"))
        click.echo(f"wrote {out} ({nproc} processes)")
        return

    digest = run_synthesizer(method, dataset, [local(t) for t in teachers], ipc, config_pairs, seed, out,
                             overwrite=overwrite, resume=resume, device=device)
    if distributed.world().is_main:
        click.echo(f"wrote {out} (content_sha256 {digest[:16]}…)")


@click.command()
@click.option("--method", default="random", show_default=True, help="registered selector (`ddkit list selectors`)")
@click.option("--pool", default=DEFAULT_DATASET, show_default=True, help="dataset whose train split is the pool")
@click.option("--teacher", "teachers", multiple=True, type=click.Path())
@click.option("--budget", required=True, type=COUNT, help="number of samples to keep")
@config_option()
@click.option("--seed", default=0, show_default=True)
@device_option()
@click.option("--out", required=True, type=OUT_FILE, help="output .sel.h5 file")
@click.option("--overwrite", is_flag=True)
@click.option("--labeled", default=None, type=click.Path(dir_okay=False), help="already-labeled samples (.sel.h5 of this pool); the output keeps them and adds BUDGET new ones")
@click.option("--teacher-logits", default=None, type=click.Path(dir_okay=False), help="precomputed teacher logits for the pool (.npy N×C in pool order, or .h5 with logits + ids)")
def select(method, pool, teachers, budget, config_pairs, seed, device, out, overwrite, labeled, teacher_logits):
    """Select BUDGET samples from a pool into a .sel.h5 file (with --labeled: one active-learning round)."""
    from ddkit.selectors import run_selector

    digest = run_selector(method, pool, [local(t) for t in teachers], budget, config_pairs, seed, out,
                          overwrite=overwrite, device=device, labeled=local(labeled), teacher_logits=teacher_logits)
    click.echo(f"wrote {out} (content_sha256 {digest[:16]}…)")


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=OUT_FILE, help="output .ddk.h5 file")
@click.option("--overwrite", is_flag=True)
def merge(files, out, overwrite):
    """Merge distilled files of the same dataset, normalization, teachers and method (lineage recorded)."""
    from ddkit.store import merge_files

    digest = merge_files([local(f) for f in files], out, overwrite=overwrite)
    click.echo(f"wrote {out} from {len(files)} files (content_sha256 {digest[:16]}…)")
