"""`ddkit contamination`: the copy descriptor of a dataset (learned and calibrated on its train split)."""

from __future__ import annotations

import click

from ddkit.cli.common import COUNT, OUT_FILE, print_json


@click.group()
def contamination():
    """Copy detection against test sets: learn and calibrate a dataset's copy descriptor."""


@contamination.command("calibrate")
@click.argument("dataset")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0), help="the train split's holdout, the views, the weights")
@click.option("--steps", default=None, type=COUNT, help="training steps (default: the fit config's)")
@click.option("--out", default=None, type=OUT_FILE, help="also write the descriptor file here (it is always cached)")
@click.option("--overwrite", is_flag=True, help="with --out: replace an existing file")
@click.option("--json", "as_json", is_flag=True)
def calibrate(dataset, seed, steps, out, overwrite, as_json):
    """Learn DATASET's copy descriptor (`descriptor-1`, `descriptor-2`) on its train split and calibrate each
    version's threshold on held-out train images; cached under $DDKIT_CACHE/contamination, used by `validate --against` and
    `pool dedup`. A dataset with a descriptor shipped in ddkit (fashion-mnist) is shown, not re-learned."""
    import dataclasses

    from ddkit.contamination.fit import FitConfig
    from ddkit.contamination.weights import descriptor_for, save_descriptor

    config = FitConfig(seed=seed) if steps is None else FitConfig(seed=seed, steps=steps)
    found = descriptor_for(dataset, config)
    if out:
        save_descriptor(out, found, overwrite=overwrite)
    header = dataclasses.asdict(found.header)
    if as_json:
        print_json({"path": found.path, **header})
        return
    from ddkit.contamination.weights import DETECTOR_VERSIONS

    click.echo(f"{dataset}: copy descriptor {found.path}\n  {found.header.summary()}")
    for version in DETECTOR_VERSIONS:
        cal = found.header.calibration_of(version)
        click.echo(f"  descriptor-{version} (threshold {cal['threshold']:.4g}), on held-out train images: "
                   f"{cal['clean_rate']:.2%} of {cal['negatives']} distinct images flagged; "
                   "recall " + ", ".join(f"{k} {v:.1%}" for k, v in cal["recall"].items()))
    if out:
        click.echo(f"wrote {out}")
