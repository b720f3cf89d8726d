"""`ddkit list` and `ddkit describe`: the registries (models, datasets, methods, protocols, ...), one
line per entry or everything about one, read from `ddkit.explain`'s cached index (no torch once built)."""

from __future__ import annotations

import click

from ddkit.cli.common import print_json

KINDS = ["models", "datasets", "synthesizers", "selectors", "protocols", "augmentations", "mixes",
         "acquisition-rules", "label-payloads", "export-formats", "import-formats",
         "stored-label-losses", "baseline-payloads", "view-recipes", "perturbations",
         "contamination-detectors"]


@click.command("list")
@click.argument("kind", required=False, type=click.Choice(KINDS))
def list_cmd(kind):
    """Print every registry (or one) with a one-line summary per entry."""
    from ddkit.explain import registry_index

    for name, entries in registry_index()["kinds"].items():
        if kind and name != kind:
            continue
        click.echo(f"{name}:")
        for entry in entries:
            click.echo(f"  {entry['name']:<22} {entry['summary']}")


@click.command("describe")
@click.argument("name")
@click.option("--kind", type=click.Choice(KINDS), default=None, help="only this registry (when a name is in several)")
@click.option("--json", "as_json", is_flag=True)
def describe_cmd(name, kind, as_json):
    """Everything about one registered NAME: options (type, default, meaning), needs, protocols."""
    from ddkit.explain import lookup, registry_index, render

    found = lookup(registry_index(), name, kind)
    if as_json:
        print_json([{"kind": k, **entry, **detail} for k, entry, detail in found])
    else:
        click.echo("\n\n".join(render(k, entry, detail) for k, entry, detail in found))
