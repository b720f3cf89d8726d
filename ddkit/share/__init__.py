"""Sharing distilled sets: every path into and out of a `.ddk.h5`, remote files, packs and a catalog.

- `export_file` / `import_set`: the field's formats (`EXPORTERS`, `IMPORTERS`; one module per format).
  Foreign `.pt` files are read with `torch.load(weights_only=True)` and must hold plain tensors.
- `remote`: fsspec URLs resolved to verified local copies in `$DDKIT_CACHE` (seal and content hash
  checked; a mismatch is an error), and header-only ranged reads for `info`.
- `pack`: a set with the teachers it references (matched by sha256) and a README, in one folder.
- `catalog`: an SQLite index over the headers and result cards of many files; the files stay the truth.
"""

from ddkit.lazy import lazy_exports

# Resolved on first use: the formats import torch, and `ddkit catalog` / `ddkit info URL` need none of them.
# Every name comes through `convert`, which imports each format module (and so registers the formats).
__getattr__, __dir__ = lazy_exports(globals(), {
    name: "convert" for name in ("ExportReport", "export_file", "import_set", "EXPORTERS", "IMPORTERS", "ImportOptions")
})

__all__ = ["EXPORTERS", "IMPORTERS", "ExportReport", "ImportOptions", "export_file", "import_set"]
