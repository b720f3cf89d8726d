"""User-facing errors: each names the problem and the fix, and the CLI turns it into exit code 2.

Anything that is not a `DdkitError` reaching the CLI is a bug in ddkit, not bad input.
"""

from __future__ import annotations


class DdkitError(Exception):
    """A problem the user can fix. `problem` says what is wrong, `fix` says what to do."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem}\n  fix: {fix}")


class DatasetUnavailable(DdkitError):
    """A dataset is not on disk and cannot be downloaded."""


class FileFormatError(DdkitError):
    """A file is missing, truncated, corrupt, foreign or of an unsupported schema."""


class IncompatibleError(DdkitError):
    """Two valid things do not fit together (teacher vs dataset, shard vs shard, ...)."""


class InvalidInput(DdkitError):
    """Bad values: wrong shapes, NaNs, out-of-range pixels, impossible budgets."""


class OutputExists(DdkitError):
    """Refusing to replace an existing output without --overwrite."""


class OutputUnwritable(DdkitError):
    """An output's folder cannot be written (permissions, read-only file system, not a folder)."""


class UnsafePath(FileFormatError):
    """A path found in a file or folder that ddkit will not follow: outside its folder, a symbolic
    link, a FIFO or device (see `ddkit.paths`)."""
