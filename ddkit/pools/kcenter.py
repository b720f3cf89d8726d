"""Greedy k-center straight from a pool-scores file (`ddkit pool kcenter`): the selection streams.

`ddkit.index.kcenter` reads an h5py dataset in row blocks, so picking from `/embeddings`,
`/probs` or `/logits` of a `.scores.h5` needs O(N) floats of memory besides one block, however
large the pool: no N×D array and no budget × N distance matrix is ever built. The result is a
normal `.sel.h5` of the scored pool: with `labeled`, the labeled samples are the initial centers
and stay first in the file (as one active-learning round of `pcoreset-teacher` does on `/probs`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ddkit import index
from ddkit.errors import FileFormatError, IncompatibleError, InvalidInput
from ddkit.fileio import check_output
from ddkit.pools.scores import FIELDS, open_scores, scores_header
from ddkit.store import Selection, read_selection, write_selection
from ddkit.store.selection import ids_to_positions

_HOW = {"probs": "score without --no-probs", "embeddings": "score with --embedding pooled (or map)",
        "logits": "score again"}


def kcenter_selection(scores: str | os.PathLike, field: str, budget: int, *, labeled: Selection | None = None,
                      seed: int = 0, block_rows: int | None = None, device=None) -> Selection:
    """Pick `budget` pool samples by greedy k-center on dataset `field` of the scores file (streamed).

    Returns the labeled samples (if any, earlier rounds kept) followed by the picks, each with its
    L2 distance to the nearest center at pick time (`score` and `extra/min_distance`). `device`: the
    run's (`--device`; None: the GPU when there is one), where the passes run.
    """
    if field not in FIELDS:
        raise InvalidInput(f"unknown field {field!r}", f"use one of {', '.join(FIELDS)}")
    with open_scores(scores) as f:
        header = scores_header(f)
        if field not in f:
            raise FileFormatError(f"{scores} has no /{field}", _HOW[field])
        try:
            ids = np.asarray(f["ids"][()], np.int64)
        except KeyError:
            raise FileFormatError(f"{scores} has no /ids", "compute it again with `ddkit pool score`") from None
        pool = header["pool"]
        given = np.empty(0, np.int64)
        if labeled is not None:
            if labeled.pool.get("fingerprint") != header["pool_fingerprint"]:
                raise IncompatibleError(
                    f"the labeled set was selected from another pool ({labeled.pool.get('name')}, fingerprint "
                    f"{str(labeled.pool.get('fingerprint'))[:12]}…) than {scores} was scored on ({pool['name']})",
                    "pass a --labeled selection made on the scored pool",
                )
            given = ids_to_positions(ids, labeled.ids)
        left = len(ids) - len(given)
        if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or not 1 <= budget <= left:
            raise InvalidInput(f"budget {budget} is not in [1, {left}] (the pool's unlabeled samples)",
                               "choose a smaller budget")
        result = index.kcenter(f[field], int(budget), center_positions=given, seed=seed, block_rows=block_rows,
                               device=device)
    round_index = int(labeled.round.max()) + 1 if labeled is not None and len(labeled) else 1
    old_md = labeled.extra.get("min_distance") if labeled is not None else None
    prior_md = np.asarray(old_md, np.float64) if old_md is not None else np.full(len(given), np.nan)
    config = {"field": field, "scores": Path(scores).name, "scores_created": header.get("created"),
              "embedding": header.get("embedding"), "budget": int(budget), "block_rows": block_rows,
              "index_backend": index.backend(device).to_dict(), "kcenter_kernel": result.kernel}
    return Selection(
        method="kcenter", method_version="1", config=config, seed=seed, pool=pool,
        ids=np.concatenate([ids[given], ids[result.indices]]),
        score=np.concatenate([labeled.score if labeled is not None else np.empty(0), result.min_distance]),
        round=np.concatenate([labeled.round if labeled is not None else np.empty(0, np.int64),
                              np.full(budget, round_index)]),
        extra={"min_distance": np.concatenate([prior_md, result.min_distance])},
        teachers=[header["teacher"]],
    )


def kcenter_from_scores(scores: str | os.PathLike, field: str, budget: int, out: str | os.PathLike, *,
                        labeled: str | os.PathLike | None = None, seed: int = 0, block_rows: int | None = None,
                        overwrite: bool = False, device=None) -> tuple[Selection, str]:
    """`kcenter_selection` written atomically to `out` (.sel.h5); returns it and its content_sha256."""
    check_output(out, overwrite)
    sel = kcenter_selection(scores, field, budget, labeled=read_selection(labeled) if labeled else None, seed=seed,
                            block_rows=block_rows, device=device)
    return sel, write_selection(out, sel, overwrite=overwrite)
