"""The command line's verb registry (ddkit/cli/verbs.py): every verb resolves to its command, the
summary `ddkit --help` shows is the verb's own help line, and `ddkit --help` imports no verb module."""

import subprocess
import sys

import click
import pytest

from ddkit.cli import cli
from ddkit.cli.verbs import VERBS


@pytest.mark.parametrize("name", sorted(VERBS))
def test_every_verb_resolves_to_a_command_of_that_name(name):
    ctx = click.Context(cli)
    command = cli.get_command(ctx, name)
    assert isinstance(command, click.Command) and command.name == name


@pytest.mark.parametrize("name", sorted(VERBS))
def test_summary_is_the_verbs_own_first_help_line(name):
    command = cli.get_command(click.Context(cli), name)
    first_line = (command.help or "").strip().splitlines()[0]
    assert VERBS[name].summary == first_line, f"update VERBS[{name!r}].summary in ddkit/cli/verbs.py"


def test_top_level_help_imports_no_verb_module():
    code = ("import sys\nfrom ddkit.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('ddkit.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = eval(out.strip().splitlines()[-1])
    assert not [m for m in loaded if m.startswith("ddkit.cli.") and m not in ("ddkit.cli.common", "ddkit.cli.verbs")]


def test_top_level_help_lists_every_verb(capsys):
    from helpers import run_cli

    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for name in VERBS:
        assert f"  {name} " in out


def test_python_dash_m_ddkit_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "ddkit", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "ddkit" in result.stdout
