"""`ddkit pool`: unlabeled image pools for selectors (build, dedup, score, kcenter)."""

from __future__ import annotations

import click

from ddkit.cli.common import COUNT, NONNEGATIVE, OUT_FILE, argv_without, device_option, print_json


@click.group()
def pool():
    """Unlabeled image pools (.pool.h5) for selectors such as KD³: build, dedup, score, kcenter."""


@pool.command("build")
@click.option("--task", required=True, help="registered dataset whose classes, image shape and normalization the pool serves")
@click.option("--from", "sources", multiple=True, required=True, metavar="DATASET[@SPLIT]",
              help="images from a registered dataset (or imagefolder:PATH), split train by default; repeatable. "
                   "Their labels are kept aside, never used for training or selection")
@click.option("--name", default=None, help="pool name (default: from the file name)")
@click.option("--out", required=True, type=OUT_FILE, help="output .pool.h5 file")
@click.option("--overwrite", is_flag=True)
def pool_build(task, sources, name, out, overwrite):
    """Build a chunked HDF5 pool with stable ids and a fingerprint."""
    from ddkit.data import load_dataset
    from ddkit.errors import InvalidInput
    from ddkit.pools.build import build_pool, dataset_part

    parts = []
    for spec in sources:
        dataset, _, split = spec.rpartition("@") if "@" in spec else (spec, "", "train")
        if split not in ("train", "test"):
            raise InvalidInput(f"--from {spec}: split must be train or test", "e.g. --from fashion-mnist@train")
        parts.append(dataset_part(load_dataset(dataset, split), origin=f"{dataset}@{split}"))
    s = build_pool(out, parts, load_dataset(task, "train").info, name=name, provenance={"sources": list(sources)}, overwrite=overwrite)
    click.echo(f"wrote {out}: pool {s.name}, {s.size} images ({', '.join(f'{k}: {v}' for k, v in s.origins.items())}), "
               f"fingerprint {s.fingerprint[:16]}…")


@pool.command("dedup")
@click.argument("pool_path", type=click.Path(dir_okay=False))
@click.option("--detector", default=None, metavar="NAME",
              help="descriptor-2 (default), descriptor-1 or pixel-align-1 (old name: pixels): the teacher-free detectors of "
                   "`validate --against` (`ddkit list contamination-detectors`); teacher: distance between teacher embeddings")
@click.option("--teacher", default=None, type=click.Path(dir_okay=False), help="teacher whose embeddings compare images (--detector teacher)")
@click.option("--test", "test_dataset", default=None, help="dataset whose TEST split must not leak into the pool (default: the pool's task)")
@click.option("--threshold", default=0.1, show_default=True, type=NONNEGATIVE,
              help="(teacher) L2 distance between unit embeddings that counts as a near-duplicate")
@click.option("--test-threshold", default=None, type=NONNEGATIVE, help="(teacher) threshold against test images (default: --threshold)")
@click.option("--embedding", default="map", show_default=True, type=click.Choice(["map", "pooled"]), help="(teacher) which features")
@click.option("--k", default=16, show_default=True, type=COUNT, help="(teacher) neighbours searched per sample")
@device_option()
@click.option("--out", required=True, type=OUT_FILE, help="output .pool.h5 (the pool without the dropped samples)")
@click.option("--overwrite", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
def pool_dedup(pool_path, detector, teacher, test_dataset, threshold, test_threshold, embedding, k, device, out, overwrite, as_json):
    """Drop pool samples that copy test images and near-duplicates inside POOL."""
    from ddkit.pools.dedup import dedup_pool

    report = dedup_pool(pool_path, teacher, out, test_dataset=test_dataset, threshold=threshold, test_threshold=test_threshold,
                        k=k, embedding=embedding, device=device, overwrite=overwrite, detector=detector)
    if as_json:
        print_json(report)
    else:
        click.echo(f"wrote {out}: {report['size_after']} of {report['size_before']} kept; dropped "
                   f"{report['dropped_test_contamination']} near-copies of {report['test_dataset']} test images and "
                   f"{report['dropped_in_pool_duplicates']} in-pool near-duplicates ({report['detector']})")


@pool.command("score")
@click.argument("pool_path")
@click.option("--teacher", required=True, type=click.Path(dir_okay=False), help="teacher file (.safetensors)")
@click.option("--out", required=True, type=OUT_FILE, help="output .scores.h5 (logits, probs, embeddings, ids)")
@click.option("--embedding", default="pooled", show_default=True, type=click.Choice(["pooled", "map", "none"]),
              help="also store L2-normalized embeddings: the classifier's input, or the flattened last feature map")
@click.option("--probs/--no-probs", default=True, show_default=True, help="also store the softmax of the logits (/probs)")
@click.option("--batch-size", default=512, show_default=True, type=COUNT, help="images per teacher batch (a fixed grid: results do not depend on --nproc)")
@device_option()
@click.option("--nproc", default=1, show_default=True, type=COUNT, help="processes (torchrun): shards of the batch grid are shared out, rank 0 writes")
@click.option("--resume", is_flag=True, help="reuse the finished shards of an interrupted run (OUT.work/)")
@click.option("--overwrite", is_flag=True, help="replace an existing output, and start over from an interrupted run's OUT.work/")
@click.option("--json", "as_json", is_flag=True)
def pool_score(pool_path, teacher, out, embedding, probs, batch_size, device, nproc, resume, overwrite, as_json):
    """Teacher logits (and probs, embeddings) of every sample of POOL (a .pool.h5, or a dataset's train
    split) into a chunked HDF5 file, by sharded inference; `--teacher-logits` and `pool kcenter` read it."""
    from ddkit import distributed
    from ddkit.pools.scores import score_pool

    if nproc > 1 and distributed.world().size == 1:
        distributed.launch(nproc, argv_without("--nproc"))
        return
    header = score_pool(pool_path, teacher, out, embedding=None if embedding == "none" else embedding, probs=probs,
                        batch_size=batch_size, device=device, overwrite=overwrite, resume=resume,
                        log=lambda m: click.echo(m, err=True))
    if header is None:  # a rank other than 0
        return
    if as_json:
        print_json(header)
    else:
        fields = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in header["fields"].items())
        click.echo(f"wrote {out}: {fields} (pool fingerprint {header['pool_fingerprint'][:16]}…)")


@pool.command("kcenter")
@click.argument("scores")
@click.option("--field", default="embeddings", show_default=True, type=click.Choice(["embeddings", "probs", "logits"]),
              help="the dataset of the scores file whose rows are compared (L2)")
@click.option("--budget", required=True, type=COUNT, help="number of new samples to pick")
@click.option("--labeled", default=None, type=click.Path(dir_okay=False), help="already-labeled samples (.sel.h5 of the scored pool): initial centers, kept in the output")
@click.option("--seed", default=0, show_default=True, help="draws the first pick when there is no labeled sample")
@click.option("--out", required=True, type=OUT_FILE, help="output .sel.h5 file")
@click.option("--overwrite", is_flag=True)
@device_option("; where the k-center passes run")
def pool_kcenter(scores, field, budget, labeled, seed, out, overwrite, device):
    """Greedy k-center on a field of a SCORES file, streamed in row blocks (O(N) memory), into a .sel.h5."""
    from ddkit.pools.kcenter import kcenter_from_scores
    from ddkit.training import pick_device

    sel, digest = kcenter_from_scores(scores, field, budget, out, labeled=labeled, seed=seed, overwrite=overwrite,
                                      device=pick_device(device))
    click.echo(f"wrote {out}: {budget} picks by k-center on /{field} ({len(sel)} samples in all; last pick "
               f"{sel.score[-1]:.4g} from its nearest center; content_sha256 {digest[:16]}…)")
