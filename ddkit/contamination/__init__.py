"""ddkit.contamination: is any image of a pool, a selection or a distilled set a copy of a test image?

A teacher-free detector (`detector.py`: exact pixel hashes, then a FAISS candidate search in a
canonical, shift- and crop-tolerant frame, then verification under small undo-edits), the
perturbation suite it is calibrated and benchmarked on (`perturb.py`), and one check for every kind
of ddkit file (`check.py`: `ddkit validate FILE --against DATASET[:SPLIT]`; `ddkit pool dedup` uses
the same detector). `scripts/calibrate_contamination.py` sets the threshold from TRAIN images only;
`scripts/bench_contamination.py` measures recall per perturbation and the clean images flagged.
"""

from ddkit.contamination.check import ContaminationReport, check_file, parse_against
from ddkit.contamination.detector import Detector, DetectorConfig, Matches, within
from ddkit.contamination.perturb import PERTURBATIONS, perturb, suite_kinds

__all__ = ["ContaminationReport", "Detector", "DetectorConfig", "Matches", "PERTURBATIONS", "check_file",
           "parse_against", "perturb", "suite_kinds", "within"]
