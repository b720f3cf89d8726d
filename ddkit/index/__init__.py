"""ddkit.index: the one place that does distance work (exact kNN, k-means, greedy k-center, dedup).

numpy in, numpy out, explicit seeds, keyword arguments validated with one clear error, in the
manner of FAISS's python wrappers. Inputs are N×d arrays or h5py datasets; a dataset is read in
blocks (aligned to its chunks), so inputs larger than memory work.

The hardware follows the run's device (`device=`, from `--device`; None: the GPU when there is
one), is chosen once per process and device and reported by `backend(device)`: FAISS on the GPU
for cuda with faiss-gpu (torch on the GPU without it); on the CPU a measured check picks FAISS or
torch for the distance blocks, see `ddkit.index.device`.

    >>> from ddkit import index
    >>> distances, neighbours = index.knn(queries, database, k=10, device="cpu")
    >>> km = index.kmeans(x, 100, seed=0)
    >>> picks = index.kcenter(probs, 500, center_positions=labeled).indices
    >>> dups = index.near_duplicates(x, threshold=1e-3)
    >>> distances, neighbours = index.knn_ivf(x, x, k=4, probes=8, seed=0)  # approximate, ~N·√N
    >>> print(index.backend("cpu").describe())
"""

from ddkit.index.dedup import Duplicates, near_duplicates
from ddkit.index.device import Backend, backend, reset_backend
from ddkit.index.ivf import InvertedFile, knn_ivf
from ddkit.index.kcenter import KCenterResult, kcenter
from ddkit.index.kmeans import KMeansResult, kmeans
from ddkit.index.search import knn
from ddkit.index.source import as_points

__all__ = ["Backend", "Duplicates", "InvertedFile", "KCenterResult", "KMeansResult", "as_points", "backend", "kcenter",
           "kmeans", "knn", "knn_ivf", "near_duplicates", "reset_backend"]
