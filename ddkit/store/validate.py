"""`validate_file`: every check `ddkit validate` runs on a `.ddk.h5` or `.sel.h5` file, as a report.

Unlike the reader, which refuses at the first problem, validation runs each check it can and lists
what failed, so one run tells a user everything that is wrong with a file. The structural checks
are the reader's own (opening the file runs them); this module adds the ones too costly or too
strict for every open: the content hash, the pixel range, class coverage, the recorded budget,
and the fit to a teacher.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ddkit.data.base import check_pixels
from ddkit.errors import DdkitError, FileFormatError, IncompatibleError, InvalidInput
from ddkit.store.h5io import DAMAGED_FIX, READ_ERRORS, open_store, reading, verify_content
from ddkit.store.hashing import iter_blocks, stored_datasets
from ddkit.store.reader import DistilledDataset
from ddkit.store.results import STORE_FORMATS, read_results
from ddkit.store.schema import DISTILLED_FORMAT, budget_parts
from ddkit.store.selection import read_selection


@dataclass
class ValidationReport:
    """What `validate_file` checked and what it found wrong; `ok` when nothing."""

    path: str
    kind: str = "unknown"
    checks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    failed: set[str] = field(default_factory=set, repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems

    def run(self, name: str, check: Callable[[], None]) -> bool:
        """Run one check; a ddkit error or a read error becomes a problem. True if it passed."""
        self.checks.append(name)
        try:
            check()
        except DdkitError as exc:
            problem = exc.problem
        except READ_ERRORS as exc:
            problem = f"the file could not be read ({exc})"
        else:
            return True
        self.problems.append(f"{name}: {problem}")
        self.failed.add(name)
        return False

    def __str__(self) -> str:
        verdict = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        lines = [f"{self.path} ({self.kind}): {verdict}, {len(self.checks)} checks"]
        lines += [f"  [ok]   {name}" for name in self.checks if name not in self.failed]
        lines += [f"  [FAIL] {problem}" for problem in self.problems]
        return "\n".join(lines)


def validate_file(
    path: str | os.PathLike, num_classes: int | None = None, image_shape: Sequence[int] | None = None
) -> ValidationReport:
    """Check a ddkit file; `num_classes` / `image_shape` (a teacher's) are checked against it when given."""
    report = ValidationReport(str(path))
    kind: list[str] = []

    def identify() -> None:
        h5, fmt = open_store(path, STORE_FORMATS, verify=True)  # validate always checks every byte
        h5.close()
        kind.append(fmt)

    if not report.run("ddkit file", identify):
        return report
    report.kind = kind[0]
    if report.kind == DISTILLED_FORMAT:
        _validate_distilled(report, path, num_classes, image_shape)
    else:
        report.run("structure (header, unique ids, per-id arrays)", lambda: read_selection(path, verify=False))
        report.run("content hash", lambda: _check_hash(path))
        report.run("result cards", lambda: read_results(path))
    return report


def _check_hash(path) -> None:
    h5, _ = open_store(path, STORE_FORMATS)
    with h5:
        verify_content(h5, path)


def _content_checks(ds: DistilledDataset) -> list[tuple[str, Callable[[], None]]]:
    """The checks of a distilled file's content beyond what opening it checks, by name.

    `validate_file` runs and reports each; `require_valid` runs them for `evaluate` and `show`,
    so neither trains on nor draws a file that `validate` refuses.
    """
    h5 = ds._h5()
    header = ds.header

    def pixels() -> None:
        for block in iter_blocks(h5["images"]):
            # uint8 pixels are in range by construction; float ones must be finite and in [0, 1].
            check_pixels(torch.from_numpy(block), what="stored images")

    def coverage() -> None:
        counts = torch.bincount(ds.labels, minlength=ds.num_classes)
        empty = [f"{c} ({ds.classes[c]})" for c in torch.nonzero(counts == 0).flatten().tolist()[:10]]
        if empty:
            raise InvalidInput(f"classes {', '.join(empty)} have no instance", "every class needs at least one")

    def budget() -> None:
        parts = budget_parts((p, d.nbytes) for p, d in stored_datasets(h5))
        recorded = header.budget
        if parts != recorded.bytes_by_part or recorded.instances != len(ds):
            raise InvalidInput(
                f"the recorded budget ({recorded.instances} instances, {recorded.bytes_by_part}) does not "
                f"match the file ({len(ds)} instances, {parts})"
            )

    return [
        ("pixel values (finite, in [0, 1])", pixels),
        ("class coverage", coverage),
        ("label payloads (rows per instance, label space)", lambda: ds.soft),
        ("recorded budget", budget),
    ]


def require_valid(ds: DistilledDataset) -> None:
    """Refuse (FileFormatError) a distilled file that fails any check `validate` runs on its content."""
    for name, check in _content_checks(ds):
        try:
            with reading(ds.path):
                check()
        except FileFormatError:
            raise
        except DdkitError as exc:
            raise FileFormatError(f"{ds.path}: {name}: {exc.problem}",
                                  f"`ddkit validate {ds.path}` lists every problem; {DAMAGED_FIX}") from None


def _validate_distilled(report: ValidationReport, path, num_classes, image_shape) -> None:
    opened: list[DistilledDataset] = []
    if not report.run(
        "structure (header, image shape and dtype, label range, composite, formation)",
        lambda: opened.append(DistilledDataset(path, verify=False)),
    ):
        return
    with opened[0] as ds:
        h5 = ds._h5()
        header = ds.header
        report.run("content hash", lambda: verify_content(h5, path))
        for name, check in _content_checks(ds):
            report.run(name, check)
        report.run("result cards", lambda: ds.results)
        if num_classes is not None:
            report.run("teacher label space", _fits("number of classes", int(num_classes), header.num_classes))
        if image_shape is not None:
            shape = tuple(int(s) for s in image_shape)
            report.run("teacher input shape", _fits("input shape", shape, tuple(header.dataset.info.image_shape)))


def _fits(what: str, teacher, stored) -> Callable[[], None]:
    def check() -> None:
        if teacher != stored:
            raise IncompatibleError(
                f"the teacher's {what} is {teacher}, the file's is {stored}",
                "use a teacher trained on the file's source dataset",
            )

    return check
