"""ddkit: dataset distillation and data-centric knowledge distillation.

Synthesizers and selectors turn a labeled dataset plus trained teachers into a compact training set
stored as one self-describing HDF5 file; the evaluator trains students on it under named protocols
and reports accuracy beside the random-subset baseline at the same budget.
"""

__version__ = "0.1.0"
