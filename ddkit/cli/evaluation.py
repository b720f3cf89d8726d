"""The verbs that judge training sets: `evaluate`, `active-learn`, and `quickstart` (the whole flow)."""

from __future__ import annotations

import click

from ddkit.cli.common import (
    COUNT,
    ZERO_OK,
    argv_without,
    config_option,
    device_option,
    print_json,
    signature_options,
    trusted_keys,
)
from ddkit.datainfo import DEFAULT_DATASET


@click.command()
@click.argument("train_set")
@click.option("--protocol", default="hard-cpu", show_default=True,
              help="registered protocol, NAME@VERSION; a bare NAME is its newest version, and the card names the one "
                   "used (`ddkit list protocols`, `ddkit describe NAME`); results under different versions never compare")
@click.option("--seeds", default=3, show_default=True, type=COUNT, help="number of seeds (0..N-1)")
@click.option("--teacher", "teachers", multiple=True, type=click.Path(), help="teacher(s) for teacher/stored protocols")
@device_option()
@click.option("--no-baseline", is_flag=True, help="skip the random-subset baseline (not recommended)")
@click.option("--no-full", is_flag=True, help="skip the full-data reference")
@click.option("--steps", default=None, type=COUNT, help="override the protocol's steps (a derived, renamed protocol; for smoke tests)")
@click.option("--batched/--sequential", default=None,
              help="train the seeds as one vmapped model, or one at a time (default: batched on a GPU, one at a time on a CPU)")
@click.option("--compile", "compile_", is_flag=True,
              help="students' forward passes through torch.compile (same recipe, fused kernels; needs a C++ compiler "
                   "on a CPU; with --sequential)")
@click.option("--no-write", is_flag=True, help="do not write the result card into the file")
@click.option("--no-ranking", is_flag=True,
              help="skip DD-Ranking's HLR/IOR/LRS (which train the set under the hard-label partner protocol)")
@click.option("--dataset", default=None, help="the data a file was made from when the file names it by a path "
              "(imagefolder:DIR, pool:FILE): ddkit never opens a path named inside a file")
@click.option("--nproc", default=1, show_default=True, type=COUNT, help="processes (torchrun): the seeds are shared out, one student per rank")
@signature_options
@click.option("--json", "as_json", is_flag=True)
def evaluate(train_set, protocol, seeds, teachers, device, no_baseline, no_full, steps, batched, compile_, no_write, no_ranking,
             dataset, nproc, require_signature, trusted_keys_file, as_json):
    """Train students on TRAIN_SET (.ddk.h5, .sel.h5, or random:DATASET:IPC) and report accuracy."""
    from ddkit import distributed
    from ddkit.evaluate import evaluate as run_evaluation

    if nproc > 1 and distributed.world().size == 1:
        distributed.launch(nproc, argv_without("--nproc"))
        return

    from ddkit.share.pack import resolve_train_set

    train_set, teachers = resolve_train_set(train_set, list(teachers), trusted_keys(require_signature, trusted_keys_file))
    card = run_evaluation(train_set, protocol, seeds=list(range(seeds)), teachers=teachers, device=device,
                          baseline=not no_baseline, full_reference=not no_full, steps=steps,
                          batched=batched, write_card=not no_write, ranking=not no_ranking, dataset=dataset,
                          compile=compile_)
    if distributed.world().rank != 0:
        return
    if as_json:
        print_json(card.to_dict())
    else:
        click.echo(card.table())


@click.command("active-learn")
@click.option("--pool", default=DEFAULT_DATASET, show_default=True, help="dataset whose train split is the pool (labels act as the oracle)")
@click.option("--pool-size", default=0, show_default=True, type=ZERO_OK, help="use a seeded random subset of this many pool samples (0: all)")
@click.option("--teacher", default=None, type=click.Path(dir_okay=False), help="teacher file")
@click.option("--teacher-logits", default=None, type=click.Path(dir_okay=False), help="precomputed teacher logits for the pool")
@click.option("--methods", default="pcoreset,random,entropy,coreset-features,pcoreset-teacher,class-balanced", show_default=True,
              help="comma-separated acquisition rules to compare")
@click.option("--rounds", default=10, show_default=True, type=COUNT, help="acquisition rounds")
@click.option("--queries", default=0, show_default=True, type=ZERO_OK, help="samples queried per round (0: the number of classes)")
@click.option("--seeds", default=3, show_default=True, type=COUNT, help="number of seeds (0..N-1)")
@click.option("--distill", default="both", show_default=True, type=click.Choice(["both", "on", "off"]), help="ActiveKD distillation terms")
@config_option("ActiveKD student option, e.g. steps_per_label=1 (repeatable)")
@device_option()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="output folder")
@click.option("--overwrite", is_flag=True)
@click.option("--protocol", default="active-cpu@1", show_default=True, help="evaluation protocol that judges each round's labeled set (hard or teacher labels)")
@click.option("--plot/--no-plot", default=True, show_default=True, help="draw accuracy.png (needs the plot extra: pip install -e '.[plot]')")
def active_learn_cmd(pool, pool_size, teacher, teacher_logits, methods, rounds, queries, seeds, distill, config_pairs, device, out,
                     overwrite, protocol, plot):
    """Run the active-learning loop (oracle = the pool's labels) for each method, with and without KD;
    each round's labeled set is judged under an evaluation protocol and each selection gets a result card."""
    from ddkit.workflows.active_learning import run_active_learning

    result = run_active_learning(pool, out, [m.strip() for m in methods.split(",") if m.strip()], teacher, teacher_logits,
                                 rounds, queries or None, seeds, distill, pool_size or None, config_pairs,
                                 device, overwrite, log=click.echo, protocol=protocol, plot=plot)
    written = [result.files[k] for k in ("json", "table", "plot") if k in result.files]
    click.echo(f"wrote {', '.join(written)}, {len(result.files.get('selections', []))} selection files with result cards")


@click.command()
@click.option("--workdir", default="runs/quickstart", show_default=True, type=click.Path(file_okay=False))
@click.option("--dataset", default=DEFAULT_DATASET, show_default=True)
@click.option("--ipc", default=10, show_default=True, type=COUNT)
@click.option("--epochs", default=5, show_default=True, type=COUNT, help="teacher epochs")
@click.option("--steps", default=None, type=COUNT, help="evaluation steps (default: the protocol's)")
@click.option("--seed", default=0, show_default=True)
@click.option("--iterations", default=300, show_default=True, type=COUNT, help="distribution-matching iterations")
def quickstart(workdir, dataset, ipc, epochs, steps, seed, iterations):
    """The main job end to end on the embedded dataset: teacher → distilled file → info → show → evaluate."""
    from ddkit.quickstart import run_quickstart

    run_quickstart(workdir, dataset, ipc, epochs, steps, seed, iterations, echo=click.echo)
