"""ddkit.pools: work over unlabeled image pools with a teacher: build, dedup, score, k-center.

The `.pool.h5` file itself (writer, reader, the `pool:PATH` dataset) is `ddkit.data.poolfile`, so
loading a pool needs none of this package. Here: `build` (datasets → pool), `embed` (teacher
logits and embeddings of clean views), `dedup` (near-copies of test images and inside the pool),
`scores` (the `.scores.h5` file, by sharded inference), `kcenter` (greedy k-center streamed from a
scores file into a `.sel.h5`) and `logits` (the pool-logits file read by active-learning selectors).
"""
