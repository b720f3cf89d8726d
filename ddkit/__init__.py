"""ddkit: dataset distillation and data-centric knowledge distillation.

Synthesizers and selectors turn a labeled dataset plus trained teachers into a compact training set
stored as one self-describing HDF5 file; the evaluator trains students on it under named protocols
and reports accuracy beside the random-subset baseline at the same budget.
"""

__version__ = "0.1.0"


def load(path, labels: str = "hard", transform=None, target_transform=None, dataset: str | None = None, verify="auto"):
    """A ddkit training set as a torch dataset: a `.ddk.h5` file (path, URL or `ddkit pack` folder) as a
    `DistilledDataset` (`labels="soft"`: its stored soft labels), a `.sel.h5` as its selected pool samples.
    See `ddkit.loading.load`; imported here on first call, so `import ddkit` stays light."""
    from ddkit.loading import load as _load

    return _load(path, labels, transform, target_transform, dataset, verify)
