"""`ddkit list`: the registries (models, datasets, methods, protocols, ...) with one line per entry."""

from __future__ import annotations

import click


@click.command("list")
@click.argument("kind", required=False, type=click.Choice(
    ["models", "datasets", "synthesizers", "selectors", "protocols", "augmentations", "mixes",
     "acquisition-rules", "label-payloads", "export-formats", "import-formats",
     "stored-label-losses", "baseline-payloads", "view-recipes", "perturbations"]))
def list_cmd(kind):
    """Print every registry (or one) with a one-line summary per entry."""
    from ddkit.registries import all_registries

    for name, registry in all_registries().items():
        if kind and name != kind:
            continue
        click.echo(f"{name}:")
        for entry in registry.entries():
            click.echo(f"  {entry.name:<22} {entry.summary}")
