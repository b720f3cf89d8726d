"""The store: ddkit's file formats, where synthesizers, selectors and the evaluator meet.

- `.ddk.h5` (DESIGN §4): a distilled dataset. Build a `DistilledSet`, `write_distilled` it, read it
  back with `DistilledDataset` (a lazy, DataLoader-safe torchvision-style dataset). A set's training
  instances may be composed (`AdditiveComposite`) or decoded (`MultiFormation`) from what is stored.
- `.sel.h5`: a `Selection` of pool sample ids; `write_selection`, `read_selection`, and
  `resolve_selection` to get the kept samples back from the (unchanged) pool.
- Both kinds: `add_result` / `read_results` for evaluation cards, `validate_file`, `describe` /
  `info_dict`; `render_grid` draws a distilled file.

Writes are atomic and validated before any file is created; reads refuse damaged, foreign and
too-new files with a `FileFormatError`.
"""

# Torch-free modules are imported now (`ddkit info` needs nothing else); the ones that work on
# tensors (the reader, writer, merge, render, validation) when one of their names is first used.
from ddkit.lazy import lazy_exports
from ddkit.store.composite import AdditiveComposite
from ddkit.store.describe import describe, info_dict
from ddkit.store.formation import MultiFormation
from ddkit.store.payloads import PAYLOADS, DBRLabels, GenericPayload, LabelPayload, LogitsLabels, TopKLabels
from ddkit.store.results import add_result, read_results, summarize_card
from ddkit.store.schema import (
    DISTILLED_FORMAT,
    SCHEMA,
    SELECTION_FORMAT,
    Budget,
    DatasetRecord,
    DistilledHeader,
)
from ddkit.store.selection import Selection, pool_record, read_selection, resolve_selection, write_selection

__getattr__, __dir__ = lazy_exports(globals(), {
    "DistilledDataset": "reader", "DistilledSet": "distilled", "merge_files": "merge", "render_grid": "render",
    "ValidationReport": "validate", "require_valid": "validate", "validate_file": "validate",
    "write_distilled": "writer",
})

__all__ = [
    "AdditiveComposite", "Budget", "DBRLabels", "DISTILLED_FORMAT", "DatasetRecord", "DistilledDataset",
    "DistilledHeader", "DistilledSet", "GenericPayload", "LabelPayload", "LogitsLabels", "MultiFormation", "PAYLOADS",
    "SCHEMA", "SELECTION_FORMAT", "Selection", "TopKLabels", "ValidationReport",
    "add_result", "describe", "merge_files", "info_dict", "pool_record", "read_results", "read_selection", "render_grid",
    "require_valid",
    "resolve_selection", "summarize_card", "validate_file", "write_distilled", "write_selection",
]
