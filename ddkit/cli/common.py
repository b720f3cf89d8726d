"""What every verb module of the command line shares: checked option types, JSON printing, the
relaunch arguments for torchrun, and fetching remote file arguments.

Only click and the standard library at import time: each verb imports its heavy dependencies
(torch, h5py, the library) inside its function, so that `ddkit --help` starts fast.
"""

from __future__ import annotations

import json

import click

ARGV: list[str] = []  # this invocation's arguments, set by `ddkit.cli.main`


def argv_without(option: str) -> list[str]:
    """This invocation's arguments without `option` and its value (to relaunch under torchrun)."""
    out, skip = [], False
    for arg in ARGV:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def print_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def local(spec):
    """A file argument as a local path: fsspec URLs are downloaded into $DDKIT_CACHE and verified first."""
    from ddkit.share.remote import resolve

    return resolve(spec)


# -- checked option values: counts, finite numbers, output paths (issue 19) -----------------------
class Finite(click.ParamType):
    """A finite float, optionally bounded below (strictly with `positive`)."""

    name = "number"

    def __init__(self, low: float = 0.0, positive: bool = False):
        self.low, self.positive = low, positive

    def convert(self, value, param, ctx):
        import math

        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number) or number < self.low or (self.positive and number == self.low):
            self.fail(f"{value!r} must be a finite number {'>' if self.positive else '≥'} {self.low:g}", param, ctx)
        return number


class OutputFile(click.Path):
    """An output file path whose folder can be written, checked before any work starts."""

    def __init__(self):
        super().__init__(dir_okay=False)

    def convert(self, value, param, ctx):
        from ddkit.fileio import check_output_folder

        check_output_folder(value)
        return super().convert(value, param, ctx)


COUNT = click.IntRange(min=1)  # epochs, batch sizes, budgets, seeds, steps, processes
ZERO_OK = click.IntRange(min=0)
POSITIVE = Finite(positive=True)  # learning rates
NONNEGATIVE = Finite()  # weight decay, momentum, distances
OUT_FILE = OutputFile()


class Device(click.ParamType):
    """A device name (auto, cpu, cuda, cuda:N, mps), checked before any work: `gpu` or `CPU0` fail
    here with the accepted names, not as a torch traceback."""

    name = "device"

    def convert(self, value, param, ctx):
        from ddkit.devices import parse_device
        from ddkit.errors import InvalidInput

        try:
            return parse_device(value)
        except InvalidInput as exc:
            self.fail(exc.problem, param, ctx)


DEVICE = Device()


def device_option(where: str = ""):
    """The `--device` option every verb that computes takes; `where` says what runs there."""
    return click.option("--device", default=None, type=DEVICE, metavar="DEVICE",
                        help=f"auto (default: cuda when a GPU is present, else cpu), cpu, cuda, cuda:N or mps{where}")


def config_option(help_text: str = "method option, parsed by the type of the method's config field "
                                   "(`ddkit describe METHOD` lists them); repeatable"):
    """`--config KEY=VALUE` (repeatable) as a dict of raw strings: each value is parsed by the type of
    the config field it sets when the config is built (`ddkit.config.build_config`)."""

    def to_dict(ctx, param, pairs):
        from ddkit.config import parse_pairs

        return parse_pairs(list(pairs), "--config")

    return click.option("--config", "config_pairs", multiple=True, metavar="KEY=VALUE", callback=to_dict, help=help_text)


def one_output(positional, option):
    """The output of a verb that takes it as `--out PATH` like every other verb, or (as it once did) as
    a last positional argument; given twice, or not at all, is a usage error."""
    if positional is not None and option is not None and positional != option:
        raise click.UsageError(f"the output is given twice ({positional} and --out {option}): give it once, as --out PATH")
    if positional is None and option is None:
        raise click.UsageError("missing the output: give --out PATH")
    return positional if positional is not None else option


def signature_options(command):
    """`--require-signature` and `--trusted-keys PATH` (ddkit.share.sign), passed on as `trusted_keys`:
    None when no signature is required, the file when one is given, True for the default file."""
    command = click.option("--trusted-keys", "trusted_keys_file", default=None, type=click.Path(dir_okay=False),
                           help="the keys you trust (default $DDKIT_TRUSTED_KEYS, else ~/.config/ddkit/trusted_keys)")(command)
    return click.option("--require-signature", is_flag=True,
                        help="refuse a set not signed by a key in your trusted-keys file (`ddkit sign`)")(command)


def trusted_keys(require_signature: bool, trusted_keys_file: str | None):
    """What `signature_options` hand the library: None, or the trusted-keys file (True: the default one)."""
    return (trusted_keys_file or True) if require_signature else None


FOLLOW_SYMLINKS = click.option("--follow-symlinks", is_flag=True,
                               help="read symbolic links found inside the given folders (refused by default: a link "
                                    "can point anywhere)")
