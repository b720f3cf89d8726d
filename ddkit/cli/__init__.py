"""The `ddkit` command line: each verb parses options and calls one library function.

The verbs live in one module per family (sets, teachers, pools, files, evaluation, sharing,
listing); `verbs.VERBS` maps each verb name to its module, which is imported only when that verb
runs, so `ddkit --help` starts without importing torch or the library.

User errors (`DdkitError`) print one message with its fix and exit with code 2; they never show a
traceback. Set DDKIT_DEBUG=1 to see tracebacks of user errors too.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

import ddkit
from ddkit.cli.common import ARGV
from ddkit.cli.verbs import VERBS
from ddkit.errors import DdkitError


class LazyGroup(click.Group):
    """A click group whose subcommands come from `VERBS`, each imported on first use."""

    def list_commands(self, ctx):
        return sorted(set(VERBS) | set(super().list_commands(ctx)))

    def get_command(self, ctx, name):
        if name in VERBS:
            verb = VERBS[name]
            return getattr(importlib.import_module(f"ddkit.cli.{verb.module}"), verb.attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx, formatter):
        """The verb list from the registry's summaries, without importing any verb module."""
        limit = formatter.width - 6 - max(len(name) for name in VERBS)
        rows = [(name, click.utils.make_default_short_help(VERBS[name].summary, limit)) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(ddkit.__version__, prog_name="ddkit")
@click.option("--data-mode", type=click.Choice(["auto", "memory", "stream"]), default=None,
              help="hold datasets in memory or stream them from disk (default auto: stream what is larger than "
                   "$DDKIT_MEMORY_LIMIT, 512 MiB); sets $DDKIT_DATA_MODE")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="decoding worker processes for streamed datasets (default min(4, CPUs)); sets $DDKIT_WORKERS")
@click.option("--decode", type=click.Choice(["auto", "pil", "torchvision", "nvjpeg"]), default=None,
              help="who decodes image-folder files: pil (in the workers), torchvision (torchvision.io; batched "
                   "nvjpeg on a CUDA --device), nvjpeg (that GPU path, required); default auto: nvjpeg on a CUDA "
                   "device that supports it, else pil; sets $DDKIT_DECODE")
def cli(data_mode, workers, decode):
    """ddkit: distill datasets, select samples with a teacher, evaluate honestly."""
    if data_mode is not None:
        os.environ["DDKIT_DATA_MODE"] = data_mode
    if workers is not None:
        os.environ["DDKIT_WORKERS"] = str(workers)
    if decode is not None:
        os.environ["DDKIT_DECODE"] = decode


def _exit_on_signal(signum, frame) -> None:
    """SIGTERM/SIGHUP end the command like an exception, so temporary files are removed on the way out."""
    raise SystemExit(128 + signum)


def main(argv=None) -> None:
    import signal
    import threading

    handled = (signal.SIGTERM, signal.SIGHUP) if threading.current_thread() is threading.main_thread() else ()
    previous = {signum: signal.signal(signum, _exit_on_signal) for signum in handled}
    try:
        _main(argv)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _main(argv=None) -> None:
    ARGV[:] = list(sys.argv[1:] if argv is None else argv)
    try:
        code = cli.main(args=argv, prog_name="ddkit", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except DdkitError as exc:
        if os.environ.get("DDKIT_DEBUG"):
            raise
        click.echo(f"error: {exc.problem}", err=True)
        if exc.fix:
            click.echo(f"  fix: {exc.fix}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
