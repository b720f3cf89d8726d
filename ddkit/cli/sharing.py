"""Sharing distilled sets (ddkit.share): `export`, `import`, `pack`, `catalog`."""

from __future__ import annotations

import click

from ddkit.cli.common import OUT_FILE, local, one_output, print_json


@click.command("export")
@click.argument("path")
@click.option("--to", "fmt", required=True, type=click.Choice(["imagefolder", "pt", "hf"]), help="the format to write")
@click.argument("out", required=False, metavar="[OUT]", type=click.Path(file_okay=False))
@click.option("--out", "out_option", default=None, type=click.Path(file_okay=False), help="the output folder (or OUT)")
@click.option("--overwrite", is_flag=True)
def export_cmd(path, fmt, out, out_option, overwrite):
    """Write the distilled file PATH (a path or URL) as a folder --out OUT in another format."""
    from ddkit.share import export_file

    out = one_output(out, out_option)
    r = export_file(local(path), fmt, out, overwrite=overwrite)
    click.echo(f"wrote {out}: {r.instances} instances as {fmt}, {r.files} files, {r.bytes} bytes")
    for note in r.notes:
        click.echo(f"  note: {note}")


@click.command("import")
@click.argument("source")
@click.option("--from", "fmt", required=True, help="source format (`ddkit list import-formats`): dc, mtt, pt, imagefolder, hf")
@click.option("--dataset", required=True, help="the registered dataset the set was distilled from")
@click.argument("out", required=False, metavar="[OUT]", type=click.Path(dir_okay=False))
@click.option("--out", "out_option", default=None, type=OUT_FILE, help="the output .ddk.h5 file (or OUT)")
@click.option("--zca", default=None, help="undo ZCA whitening: a .pt/.npz with mean + transform, or 'fit' (MTT's, refit)")
@click.option("--no-zca", is_flag=True, help="the MTT/DATM set was distilled without ZCA")
@click.option("--mean", default=None, help="comma-separated mean the set is normalized with (default: the dataset's)")
@click.option("--std", default=None, help="comma-separated std the set is normalized with (default: the dataset's)")
@click.option("--index", default=0, show_default=True, help="which experiment of a DC result file")
@click.option("--overwrite", is_flag=True)
def import_cmd(source, fmt, dataset, out, out_option, zca, no_zca, mean, std, index, overwrite):
    """Import a released distilled set (SOURCE: a file, folder or URL) as a .ddk.h5 file (--out)."""
    from ddkit.data.base import Normalization
    from ddkit.errors import InvalidInput
    from ddkit.share import ImportOptions, import_set

    out = one_output(out, out_option)
    if (mean is None) != (std is None):
        raise InvalidInput("--mean and --std go together", "give both, e.g. --mean 0.2861 --std 0.3530")
    norm = Normalization(tuple(float(v) for v in mean.split(",")), tuple(float(v) for v in std.split(","))) if mean else None
    options = ImportOptions(dataset, norm, zca, no_zca, index)
    digest = import_set(local(source), fmt, out, options, overwrite=overwrite, source_label=source)
    click.echo(f"wrote {out} from {source} ({fmt}; content_sha256 {digest[:16]}…)")


@click.command("pack")
@click.argument("path")
@click.argument("out_dir", required=False, metavar="[OUT]", type=click.Path(file_okay=False))
@click.option("--out", "out_option", default=None, type=click.Path(file_okay=False), help="the output folder (or OUT)")
@click.option("--teacher", "teachers", multiple=True, help="where to look for the teachers (files or folders; repeatable)")
@click.option("--overwrite", is_flag=True)
def pack_cmd(path, out_dir, out_option, teachers, overwrite):
    """Write PATH, every teacher it references (matched by sha256) and a README into the folder --out."""
    from ddkit.share.pack import pack

    out_dir = one_output(out_dir, out_option)
    manifest = pack(local(path), out_dir, [local(t) for t in teachers], overwrite=overwrite)
    click.echo(f"wrote {out_dir}: {manifest['set']} with {len(manifest['teachers'])} teacher(s)")


@click.group()
def catalog():
    """A team's index of distilled files: scan folders or URLs, list and filter, fetch verified."""


_CATALOG = click.option("--catalog", "catalog_path", default=None, type=click.Path(dir_okay=False),
                        help="the index file (default $DDKIT_CACHE/catalog.sqlite)")


@catalog.command("scan")
@click.argument("roots", nargs=-1, required=True)
@_CATALOG
def catalog_scan(roots, catalog_path):
    """Index the headers and result cards of every .ddk.h5 under ROOTS (folders, files or URLs)."""
    from ddkit.share.catalog import Catalog

    with Catalog(catalog_path) as cat:
        counts = cat.scan(list(roots))
    click.echo(", ".join(f"{n} {k}" for k, n in counts.items()))


@catalog.command("ls")
@_CATALOG
@click.option("--dataset", default=None)
@click.option("--method", default=None)
@click.option("--ipc", default=None, type=int)
@click.option("--protocol", default=None, help="only cards under this protocol (NAME@VERSION; a bare name: its one indexed version)")
@click.option("--derived", is_flag=True, help="list only the cards of derived protocols (shortened --steps runs), never ranked")
@click.option("--sort", default="gain", show_default=True, type=click.Choice(["gain", "accuracy", "bytes", "created"]),
              help="the order within each protocol and IPC")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def catalog_ls(catalog_path, dataset, method, ipc, protocol, derived, sort, limit, as_json):
    """List indexed files by protocol and IPC (best first within each), damaged and stale ones marked."""
    from ddkit.share.catalog import Catalog, format_rows

    with Catalog(catalog_path) as cat:
        rows = cat.ls(dataset=dataset, method=method, ipc=ipc, protocol=protocol, sort=sort, limit=limit, derived=derived)
        empty = "" if rows else cat.explain_empty(protocol, derived, dataset=dataset, method=method, ipc=ipc)
    print_json(rows) if as_json else click.echo(format_rows(rows, empty))


@catalog.command("get")
@click.argument("entry_id")
@_CATALOG
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="also copy the verified file here")
@click.option("--overwrite", is_flag=True, help="replace an existing --out file")
def catalog_get(entry_id, catalog_path, out, overwrite):
    """Fetch an indexed file by its id (a content-hash prefix, as `catalog ls` shows) and verify it."""
    from ddkit.share.catalog import Catalog

    with Catalog(catalog_path) as cat:
        path = cat.get(entry_id, out, overwrite=overwrite)
    click.echo(str(path))
