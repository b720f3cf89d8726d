"""The verbs that inspect a ddkit file: `info`, `validate`, `show`."""

from __future__ import annotations

import click

from ddkit.cli.common import COUNT, OUT_FILE, device_option, local, print_json


def _is_safetensors(path) -> bool:
    """A safetensors file starts with its JSON header's length (8 bytes, little-endian) and the header."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
            size = fh.seek(0, 2)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < size


@click.command()
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True)
def info(path, as_json):
    """Budget in bytes, provenance and results of a ddkit file (.ddk.h5, .sel.h5, .pool.h5, teacher, experts)."""
    from ddkit.share import remote
    from ddkit.store import describe, info_dict
    from ddkit.store.describe import render_info

    if remote.is_url(path) and path.endswith(".ddk.h5"):  # ranged reads of the header only
        d = remote.header_info(path)
        print_json(d) if as_json else click.echo(render_info(d))
        return
    path = local(path)
    if _is_safetensors(path):  # a teacher
        from ddkit.teachers import describe_teacher

        d, text = describe_teacher(path)
        print_json(d) if as_json else click.echo(text)
    elif str(path).endswith(".experts.h5"):
        import dataclasses

        from ddkit.experts import describe_experts, load_experts

        print_json(dataclasses.asdict(load_experts(path).header)) if as_json else click.echo(describe_experts(path))
    elif as_json:
        print_json(info_dict(path))
    else:
        click.echo(describe(path))


@click.command()
@click.argument("path", type=click.Path())
@click.option("--teacher", default=None, type=click.Path(), help="also check the label space and input shape against this teacher")
@click.option("--against", default=None, metavar="DATASET[:SPLIT]",
              help="also look for copies of this dataset's images (test split by default) in the file, its recorded "
                   "real sources, or the pool; the result is written into the file")
@click.option("--no-write", is_flag=True, help="with --against: do not record the result in the file")
@click.option("--dataset", default=None,
              help="with --against: a selection's pool when the file names it by a path (pool:FILE); never read from the file")
@click.option("--detector", default=None, metavar="NAME",
              help="with --against: the contamination detector (default descriptor-2; `ddkit list contamination-detectors`)")
@device_option("; with --against: where the search runs")
def validate(path, teacher, against, no_write, dataset, detector, device):
    """Recompute the content hash and check shapes, dtypes, class coverage and label space
    (.ddk.h5, .sel.h5); with --against, check any ddkit file (pools too) for test-set copies."""
    from ddkit.store import validate_file

    if against:
        from ddkit.data.poolfile import is_pool_file

        if not is_pool_file(path):  # pools have no store checks; their fingerprint is checked by the search
            _validate_and_report(validate_file, path, teacher)
        from ddkit.contamination import check_file
        from ddkit.training import pick_device

        check = check_file(path, against, detector, record=not no_write, source=dataset, device=pick_device(device))
        click.echo(str(check))
        if not check.ok:
            raise SystemExit(1)
        return
    if detector is not None:
        from ddkit.errors import InvalidInput

        raise InvalidInput("--detector only applies with --against", "add --against DATASET[:SPLIT], or drop --detector")
    _validate_and_report(validate_file, path, teacher)


def _validate_and_report(validate_file, path, teacher):
    kwargs = {}
    if teacher:
        from ddkit.models.teacher import load_teacher

        h = load_teacher(local(teacher)).header  # all of it (weights, hash, architecture), as evaluate loads it
        kwargs = {"num_classes": h.num_classes, "image_shape": h.input_shape}
    report = validate_file(local(path), **kwargs)
    click.echo(str(report))
    if not report.ok:
        raise SystemExit(1)


@click.command()
@click.argument("path", type=click.Path())
@click.option("--out", required=True, type=OUT_FILE, help="output PNG")
@click.option("--per-class", default=10, show_default=True, type=click.IntRange(1, 1000))
@click.option("--max-rows", default=100, show_default=True, type=COUNT, help="draw at most this many rows (classes)")
@click.option("--what", default="auto", show_default=True, type=click.Choice(["auto", "instances", "stored", "compensators"]),
              help="auto: the stored images of a file with a formation, else the training instances")
@click.option("--overwrite", is_flag=True)
def show(path, out, per_class, max_rows, what, overwrite):
    """Render a per-class grid of a distilled file's instances (or its compensators) to a PNG."""
    from ddkit.store import render_grid

    drawn = render_grid(local(path), out, per_class=per_class, what=what, overwrite=overwrite, max_rows=max_rows)
    click.echo(f"wrote {out}" + (f" (first {drawn['rows']} of {drawn['of']} rows; see --max-rows)"
                                 if drawn["rows"] < drawn["of"] else ""))
