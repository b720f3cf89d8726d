"""Sharing distilled sets (ddkit.share): `export`, `import`, `pack`, `catalog`, `sign`, `keys`."""

from __future__ import annotations

import click

from ddkit.cli.common import FOLLOW_SYMLINKS, OUT_FILE, local, one_output, print_json, signature_options, trusted_keys


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
@FOLLOW_SYMLINKS
@signature_options
@click.option("--overwrite", is_flag=True)
def import_cmd(source, fmt, dataset, out, out_option, zca, no_zca, mean, std, index, follow_symlinks, require_signature,
               trusted_keys_file, overwrite):
    """Import a released distilled set (SOURCE: a file, folder or URL) as a .ddk.h5 file (--out)."""
    from ddkit.share import ImportOptions, import_set
    from ddkit.share.formats import parse_normalization

    out = one_output(out, out_option)
    options = ImportOptions(dataset, parse_normalization(mean, std), zca, no_zca, index, follow_symlinks,
                            trusted_keys(require_signature, trusted_keys_file))
    digest = import_set(local(source), fmt, out, options, overwrite=overwrite, source_label=source)
    click.echo(f"wrote {out} from {source} ({fmt}; content_sha256 {digest[:16]}…)")


@click.command("pack")
@click.argument("path")
@click.argument("out_dir", required=False, metavar="[OUT]", type=click.Path(file_okay=False))
@click.option("--out", "out_option", default=None, type=click.Path(file_okay=False), help="the output folder (or OUT)")
@click.option("--teacher", "teachers", multiple=True, help="where to look for the teachers (files or folders; repeatable)")
@FOLLOW_SYMLINKS
@click.option("--overwrite", is_flag=True)
def pack_cmd(path, out_dir, out_option, teachers, follow_symlinks, overwrite):
    """Write PATH, every teacher it references (matched by sha256) and a README into the folder --out."""
    from ddkit.share.pack import pack

    out_dir = one_output(out_dir, out_option)
    manifest = pack(local(path), out_dir, [local(t) for t in teachers], overwrite=overwrite,
                    follow_symlinks=follow_symlinks)
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
    from ddkit.records import printable
    from ddkit.share.catalog import Catalog

    with Catalog(catalog_path) as cat:
        counts = cat.scan(list(roots))
    click.echo(", ".join(f"{n} {k}" for k, n in counts.items()))
    for path, reason in cat.skipped:
        click.echo(f"  skipped {printable(path)}: {printable(reason)}")


@catalog.command("ls")
@_CATALOG
@click.option("--dataset", default=None)
@click.option("--method", default=None)
@click.option("--ipc", default=None, type=click.IntRange(0, 2**63 - 1))
@click.option("--protocol", default=None, help="only cards under this protocol (NAME@VERSION; a bare name: its one indexed version)")
@click.option("--derived", is_flag=True, help="list only the cards of derived protocols (shortened --steps runs), never ranked")
@click.option("--sort", default="gain", show_default=True, type=click.Choice(["gain", "accuracy", "bytes", "created"]),
              help="the order within each protocol and IPC")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1 << 31))
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
@click.option("--out", default=None, type=OUT_FILE, help="also copy the verified file here")
@click.option("--overwrite", is_flag=True, help="replace an existing --out file")
@signature_options
def catalog_get(entry_id, catalog_path, out, overwrite, require_signature, trusted_keys_file):
    """Fetch an indexed file by its id (a content-hash prefix, as `catalog ls` shows) and verify it."""
    from ddkit.share.catalog import Catalog

    with Catalog(catalog_path) as cat:
        path = cat.get(entry_id, out, trusted_keys(require_signature, trusted_keys_file), overwrite=overwrite)
    click.echo(str(path))


@click.command("sign")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--key", required=True, type=click.Path(dir_okay=False), help="your private key (`ddkit keys new`)")
def sign_cmd(path, key):
    """Sign a .ddk.h5 / .sel.h5 file with your Ed25519 key, so a team can require it (--require-signature)."""
    from ddkit.share.sign import sign_file

    signature = sign_file(path, key)
    click.echo(f"signed {path} with {signature.key_id} (its data and header; result cards are not covered)")


@click.group()
def keys():
    """Ed25519 key pairs for `ddkit sign`, and the trusted-keys file that `--require-signature` reads."""


@keys.command("new")
@click.option("--out", required=True, type=OUT_FILE, help="the private key file to write (the public line goes to OUT.pub)")
@click.option("--name", default=None, help="the name the key goes by in trusted-keys files (default: the file name)")
@click.option("--overwrite", is_flag=True)
def keys_new(out, name, overwrite):
    """Make a key pair: OUT (private, yours alone) and OUT.pub (one line for a team's trusted-keys file)."""
    from ddkit.share.sign import default_trusted_keys, new_key_pair

    pub, line = new_key_pair(out, name, overwrite)
    click.echo(f"wrote {out} (private: keep it) and {pub}:\n  {line}\n"
               f"add that line to the trusted-keys file of whoever should trust your sets ({default_trusted_keys()})")


@keys.command("verify")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--trusted-keys", "trusted_keys_file", default=None, type=click.Path(dir_okay=False),
              help="the keys you trust (default $DDKIT_TRUSTED_KEYS, else ~/.config/ddkit/trusted_keys)")
def keys_verify(path, trusted_keys_file):
    """Say who signed PATH, if a key you trust did and nothing changed since (else one error, exit 2)."""
    from ddkit.share.sign import verify_file

    v = verify_file(local(path), trusted_keys_file)
    click.echo(f"{path}: signed by {v.signer} ({v.key_id}); data and header as signed "
               f"(content {v.content_sha256[:16]}…, header {v.header_sha256[:16]}…)")
