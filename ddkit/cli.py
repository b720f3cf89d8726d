"""The `ddkit` command line: each command parses options and calls one library function.

User errors (`DdkitError`) print one message with its fix and exit with code 2; they never show a
traceback. Set DDKIT_DEBUG=1 to see tracebacks of user errors too.
"""

from __future__ import annotations

import json
import os
import sys

import click

import ddkit
from ddkit.data import DEFAULT_DATASET
from ddkit.errors import DdkitError

_ARGV: list[str] = []


def _argv_without(option: str) -> list[str]:
    """This invocation's arguments without `option` and its value (to relaunch under torchrun)."""
    out, skip = [], False
    for arg in _ARGV:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def _print_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def _local(spec):
    """A file argument as a local path: fsspec URLs are downloaded into $DDKIT_CACHE and verified first."""
    from ddkit.share.remote import resolve

    return resolve(spec)


# -- checked option values: counts, finite numbers, output paths (issue 19) -----------------------
class _Finite(click.ParamType):
    """A finite float, optionally bounded below (strictly with `positive`)."""

    name = "number"

    def __init__(self, low: float = 0.0, positive: bool = False):
        self.low, self.positive = low, positive

    def convert(self, value, param, ctx):
        import math

        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number) or number < self.low or (self.positive and number == self.low):
            self.fail(f"{value!r} must be a finite number {'>' if self.positive else '≥'} {self.low:g}", param, ctx)
        return number


class _OutputFile(click.Path):
    """An output file path whose folder can be written, checked before any work starts."""

    def __init__(self):
        super().__init__(dir_okay=False)

    def convert(self, value, param, ctx):
        from ddkit.fileio import check_output_folder

        check_output_folder(value)
        return super().convert(value, param, ctx)


COUNT = click.IntRange(min=1)  # epochs, batch sizes, budgets, seeds, steps, processes
ZERO_OK = click.IntRange(min=0)
POSITIVE = _Finite(positive=True)  # learning rates
NONNEGATIVE = _Finite()  # weight decay, momentum, distances
OUT_FILE = _OutputFile()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(ddkit.__version__, prog_name="ddkit")
@click.option("--data-mode", type=click.Choice(["auto", "memory", "stream"]), default=None,
              help="hold datasets in memory or stream them from disk (default auto: stream what is larger than "
                   "$DDKIT_MEMORY_LIMIT, 512 MiB); sets $DDKIT_DATA_MODE")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="decoding worker processes for streamed datasets (default min(4, CPUs)); sets $DDKIT_WORKERS")
@click.option("--decode", type=click.Choice(["auto", "pil", "torchvision", "nvjpeg"]), default=None,
              help="who decodes image-folder files: pil (in the workers), torchvision (torchvision.io; batched "
                   "nvjpeg on a CUDA --device), nvjpeg (that GPU path, required); default auto: nvjpeg on a CUDA "
                   "device that supports it, else pil; sets $DDKIT_DECODE")
def cli(data_mode, workers, decode):
    """ddkit: distill datasets, select samples with a teacher, evaluate honestly."""
    import os

    if data_mode is not None:
        os.environ["DDKIT_DATA_MODE"] = data_mode
    if workers is not None:
        os.environ["DDKIT_WORKERS"] = str(workers)
    if decode is not None:
        os.environ["DDKIT_DECODE"] = decode


# -- registries ---------------------------------------------------------------------------------
@cli.command("list")
@click.argument("kind", required=False, type=click.Choice(
    ["models", "datasets", "synthesizers", "selectors", "protocols", "augmentations", "mixes",
     "acquisition-rules", "label-payloads", "export-formats", "import-formats",
     "stored-label-losses", "baseline-payloads", "view-recipes", "perturbations"]))
def list_cmd(kind):
    """Print every registry (or one) with a one-line summary per entry."""
    from ddkit.registries import all_registries

    for name, registry in all_registries().items():
        if kind and name != kind:
            continue
        click.echo(f"{name}:")
        for entry in registry.entries():
            click.echo(f"  {entry.name:<22} {entry.summary}")


# -- teachers -----------------------------------------------------------------------------------
@cli.group()
def teacher():
    """Train and evaluate teacher networks (safetensors files with a JSON header)."""


@teacher.command("train")
@click.option("--dataset", default=DEFAULT_DATASET, show_default=True, help="registered dataset name")
@click.option("--model", default="convnet-bn", show_default=True, help="registered model name (`ddkit list models`)")
@click.option("--model-opt", multiple=True, metavar="KEY=VALUE", help="model constructor option, e.g. width=32")
@click.option("--epochs", default=10, show_default=True, type=COUNT)
@click.option("--batch-size", default=128, show_default=True, type=COUNT)
@click.option("--lr", default=0.05, show_default=True, type=POSITIVE)
@click.option("--optimizer", default="sgd", show_default=True, type=click.Choice(["sgd", "adamw", "adam"]))
@click.option("--weight-decay", default=5e-4, show_default=True, type=NONNEGATIVE)
@click.option("--augmentation", default="crop-flip", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default=None, help="cpu, cuda, or auto (default)")
@click.option("--out", required=True, type=OUT_FILE, help="output .safetensors file")
@click.option("--overwrite", is_flag=True, help="replace an existing output file")
def teacher_train(dataset, model, model_opt, epochs, batch_size, lr, optimizer, weight_decay, augmentation, seed, device, out, overwrite):
    """Train a teacher on DATASET's train split (minus a val split); record its test accuracy."""
    from ddkit.models import parse_model_options
    from ddkit.teachers import train_teacher

    result = train_teacher(out, dataset, model, parse_model_options(model_opt), epochs, batch_size, lr, optimizer,
                           weight_decay, augmentation, seed=seed, device=device, overwrite=overwrite)
    h = result.header
    click.echo(f"wrote {out}: {h.arch} on {h.dataset}, val accuracy {100 * h.val_accuracy:.2f}%, "
               f"test accuracy {100 * h.test_accuracy:.2f}%, {result.wall_seconds:.1f}s")


@teacher.command("import")
@click.argument("checkpoint", type=click.Path())
@click.option("--dataset", default=DEFAULT_DATASET, show_default=True, help="the dataset it was trained on")
@click.option("--model", required=True, help="the registered model the checkpoint is a state dict of (tv-resnet18, ...)")
@click.option("--model-opt", multiple=True, metavar="KEY=VALUE")
@click.option("--source", default=None, help="where the checkpoint came from (e.g. its download URL), recorded in the header")
@click.option("--checkpoint-key", default=None, metavar="KEY", help="the entry holding the weights (e.g. model_ema); default: found")
@click.option("--checkpoint-classes", default=None, type=click.Path(dir_okay=False),
              help="the checkpoint's class names in output order (JSON list or one per line): keep the dataset's rows")
@click.option("--device", default=None)
@click.option("--out", required=True, type=OUT_FILE, help="output .safetensors file")
@click.option("--overwrite", is_flag=True)
def teacher_import(checkpoint, dataset, model, model_opt, source, checkpoint_key, checkpoint_classes, device, out, overwrite):
    """Import a foreign PyTorch state dict (read with weights_only=True; nothing is unpickled as code)."""
    from ddkit.models import parse_model_options
    from ddkit.teachers import import_teacher

    h = import_teacher(checkpoint, out, dataset, model, parse_model_options(model_opt), device, overwrite, source=source,
                       checkpoint_key=checkpoint_key, checkpoint_classes=checkpoint_classes)
    click.echo(f"wrote {out}: {h.arch} imported with torch.load(weights_only=True) from {h.train['source']} "
               f"(sha256 {h.train['checkpoint_sha256']}), test accuracy {100 * h.test_accuracy:.2f}%")


@teacher.command("eval")
@click.argument("path", type=click.Path())
@click.option("--dataset", default=None, help="defaults to the dataset the teacher was trained on")
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "test"]))
@click.option("--device", default=None)
@click.option("--json", "as_json", is_flag=True)
def teacher_eval(path, dataset, split, device, as_json):
    """Accuracy of a teacher file on a dataset split."""
    from ddkit.teachers import evaluate_teacher

    result = evaluate_teacher(path, dataset, split, device)
    if as_json:
        _print_json(result)
    else:
        click.echo(f"{result['arch']} on {result['dataset']}/{result['split']}: {100 * result['accuracy']:.2f}% "
                   f"({result['samples']} samples)")


# -- expert trajectories ------------------------------------------------------------------------
@cli.group()
def experts():
    """Expert trajectories for trajectory matching (MTT), in one sealed .experts.h5 file."""


@experts.command("train")
@click.option("--dataset", default=DEFAULT_DATASET, show_default=True, help="registered dataset (its full train split)")
@click.option("--model", default="convnet", show_default=True, help="registered model without BatchNorm")
@click.option("--model-opt", multiple=True, metavar="KEY=VALUE", help="model constructor option, e.g. width=32")
@click.option("--experts", "num_experts", default=5, show_default=True, type=COUNT, help="number of experts")
@click.option("--epochs", default=50, show_default=True, type=COUNT, help="epochs per expert (parameters saved after each)")
@click.option("--lr", default=0.01, show_default=True, type=POSITIVE, help="plain SGD step size")
@click.option("--momentum", default=0.0, show_default=True, type=NONNEGATIVE)
@click.option("--weight-decay", default=0.0, show_default=True, type=NONNEGATIVE)
@click.option("--batch-size", default=256, show_default=True, type=COUNT)
@click.option("--augmentation", default="dsa", show_default=True, help="dsa, crop-flip or none")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default=None, help="cpu, cuda, or auto (default)")
@click.option("--out", required=True, type=OUT_FILE, help="output .experts.h5 file")
@click.option("--resume", is_flag=True, help="reuse finished experts and epochs of an interrupted run (OUT.work/)")
@click.option("--overwrite", is_flag=True, help="replace an existing output file")
def experts_train(dataset, model, model_opt, num_experts, epochs, lr, momentum, weight_decay, batch_size, augmentation,
                  seed, device, out, resume, overwrite):
    """Train N experts on DATASET and record their parameters after every epoch."""
    from ddkit.experts import ExpertTraining, train_experts
    from ddkit.models import parse_model_options

    training = ExpertTraining(epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay, batch_size=batch_size,
                              augmentation=augmentation)
    r = train_experts(out, dataset, model, parse_model_options(model_opt), num_experts, training, seed=seed, device=device,
                      overwrite=overwrite, resume=resume, log=lambda m: click.echo(m, err=True))
    click.echo(f"wrote {out}: {num_experts} experts × {epochs} epochs of {model} on {dataset} "
               f"({r.header.num_params} parameters), {r.wall_seconds:.1f}s ({r.seconds_per_epoch:.2f}s per expert-epoch)")


@experts.command("info")
@click.argument("path", type=click.Path())
def experts_info(path):
    """Check an experts file (seal, header, params hash) and describe it."""
    from ddkit.experts import describe_experts

    click.echo(describe_experts(path))


# -- pools ------------------------------------------------------------------------------------
@cli.group()
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
@click.option("--detector", default="pixels", show_default=True, type=click.Choice(["pixels", "teacher"]),
              help="pixels: the teacher-free detector of `validate --against`; teacher: distance between teacher embeddings")
@click.option("--teacher", default=None, type=click.Path(dir_okay=False), help="teacher whose embeddings compare images (--detector teacher)")
@click.option("--test", "test_dataset", default=None, help="dataset whose TEST split must not leak into the pool (default: the pool's task)")
@click.option("--threshold", default=0.1, show_default=True, type=NONNEGATIVE,
              help="(teacher) L2 distance between unit embeddings that counts as a near-duplicate")
@click.option("--test-threshold", default=None, type=NONNEGATIVE, help="(teacher) threshold against test images (default: --threshold)")
@click.option("--embedding", default="map", show_default=True, type=click.Choice(["map", "pooled"]), help="(teacher) which features")
@click.option("--k", default=16, show_default=True, type=COUNT, help="(teacher) neighbours searched per sample")
@click.option("--device", default=None)
@click.option("--out", required=True, type=OUT_FILE, help="output .pool.h5 (the pool without the dropped samples)")
@click.option("--overwrite", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
def pool_dedup(pool_path, detector, teacher, test_dataset, threshold, test_threshold, embedding, k, device, out, overwrite, as_json):
    """Drop pool samples that copy test images and near-duplicates inside POOL."""
    from ddkit.pools.dedup import dedup_pool

    report = dedup_pool(pool_path, teacher, out, test_dataset=test_dataset, threshold=threshold, test_threshold=test_threshold,
                        k=k, embedding=embedding, device=device, overwrite=overwrite, detector=detector)
    if as_json:
        _print_json(report)
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
@click.option("--device", default=None)
@click.option("--nproc", default=1, show_default=True, type=COUNT, help="processes (torchrun): shards of the batch grid are shared out, rank 0 writes")
@click.option("--resume", is_flag=True, help="reuse the finished shards of an interrupted run (OUT.work/)")
@click.option("--overwrite", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
def pool_score(pool_path, teacher, out, embedding, probs, batch_size, device, nproc, resume, overwrite, as_json):
    """Teacher logits (and probs, embeddings) of every sample of POOL (a .pool.h5, or a dataset's train
    split) into a chunked HDF5 file, by sharded inference; `--teacher-logits` and `pool kcenter` read it."""
    from ddkit import distributed
    from ddkit.pools.scores import score_pool

    if nproc > 1 and distributed.world().size == 1:
        distributed.launch(nproc, _argv_without("--nproc"))
        return
    header = score_pool(pool_path, teacher, out, embedding=None if embedding == "none" else embedding, probs=probs,
                        batch_size=batch_size, device=device, overwrite=overwrite, resume=resume,
                        log=lambda m: click.echo(m, err=True))
    if header is None:  # a rank other than 0
        return
    if as_json:
        _print_json(header)
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
@click.option("--device", default=None, help="cpu, cuda, or auto (default): where the k-center passes run")
def pool_kcenter(scores, field, budget, labeled, seed, out, overwrite, device):
    """Greedy k-center on a field of a SCORES file, streamed in row blocks (O(N) memory), into a .sel.h5."""
    from ddkit.pools.kcenter import kcenter_from_scores
    from ddkit.training import pick_device

    sel, digest = kcenter_from_scores(scores, field, budget, out, labeled=labeled, seed=seed, overwrite=overwrite,
                                      device=pick_device(device))
    click.echo(f"wrote {out}: {budget} picks by k-center on /{field} ({len(sel)} samples in all; last pick "
               f"{sel.score[-1]:.4g} from its nearest center; content_sha256 {digest[:16]}…)")


# -- the verbs of the flow ----------------------------------------------------------------------
@cli.command()
@click.option("--method", default="random-real", show_default=True, help="registered synthesizer (`ddkit list synthesizers`)")
@click.option("--dataset", default=DEFAULT_DATASET, show_default=True)
@click.option("--teacher", "teachers", multiple=True, type=click.Path(), help="teacher file (repeat for several)")
@click.option("--ipc", required=True, type=COUNT, help="budget: stored images per class")
@click.option("--config", "config_pairs", multiple=True, metavar="KEY=VALUE", help="method option (see the method's config)")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default=None)
@click.option("--out", required=True, type=OUT_FILE, help="output .ddk.h5 file")
@click.option("--overwrite", is_flag=True)
@click.option("--resume", is_flag=True, help="continue an interrupted run from its finished work items")
@click.option("--nproc", default=1, show_default=True, type=COUNT, help="processes (torchrun): work items are shared out, rank 0 writes")
def synthesize(method, dataset, teachers, ipc, config_pairs, seed, device, out, overwrite, resume, nproc):
    """Distill DATASET into a compact .ddk.h5 training set."""
    from ddkit import distributed
    from ddkit.models import parse_model_options
    from ddkit.synth import run_synthesizer

    if nproc > 1 and distributed.world().size == 1:
        distributed.launch(nproc, _argv_without("--nproc"))
        click.echo(f"wrote {out} ({nproc} processes)")
        return

    digest = run_synthesizer(method, dataset, [_local(t) for t in teachers], ipc, parse_model_options(config_pairs), seed, out,
                             overwrite=overwrite, resume=resume, device=device)
    if distributed.world().is_main:
        click.echo(f"wrote {out} (content_sha256 {digest[:16]}…)")


@cli.command()
@click.option("--method", default="random", show_default=True, help="registered selector (`ddkit list selectors`)")
@click.option("--pool", default=DEFAULT_DATASET, show_default=True, help="dataset whose train split is the pool")
@click.option("--teacher", "teachers", multiple=True, type=click.Path())
@click.option("--budget", required=True, type=COUNT, help="number of samples to keep")
@click.option("--config", "config_pairs", multiple=True, metavar="KEY=VALUE")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default=None)
@click.option("--out", required=True, type=OUT_FILE, help="output .sel.h5 file")
@click.option("--overwrite", is_flag=True)
@click.option("--labeled", default=None, type=click.Path(dir_okay=False), help="already-labeled samples (.sel.h5 of this pool); the output keeps them and adds BUDGET new ones")
@click.option("--teacher-logits", default=None, type=click.Path(dir_okay=False), help="precomputed teacher logits for the pool (.npy N×C in pool order, or .h5 with logits + ids)")
def select(method, pool, teachers, budget, config_pairs, seed, device, out, overwrite, labeled, teacher_logits):
    """Select BUDGET samples from a pool into a .sel.h5 file (with --labeled: one active-learning round)."""
    from ddkit.models import parse_model_options
    from ddkit.selectors import run_selector

    digest = run_selector(method, pool, [_local(t) for t in teachers], budget, parse_model_options(config_pairs), seed, out,
                          overwrite=overwrite, device=device, labeled=_local(labeled), teacher_logits=teacher_logits)
    click.echo(f"wrote {out} (content_sha256 {digest[:16]}…)")


@cli.command("active-learn")
@click.option("--pool", default=DEFAULT_DATASET, show_default=True, help="dataset whose train split is the pool (labels act as the oracle)")
@click.option("--pool-size", default=0, show_default=True, type=ZERO_OK, help="use a seeded random subset of this many pool samples (0: all)")
@click.option("--teacher", default=None, type=click.Path(dir_okay=False), help="teacher file")
@click.option("--teacher-logits", default=None, type=click.Path(dir_okay=False), help="precomputed teacher logits for the pool")
@click.option("--methods", default="pcoreset,random,entropy,coreset-features,pcoreset-teacher,class-balanced", show_default=True,
              help="comma-separated acquisition rules to compare")
@click.option("--rounds", default=10, show_default=True, type=COUNT, help="acquisition rounds")
@click.option("--queries", default=0, show_default=True, type=ZERO_OK, help="samples queried per round (0: the number of classes)")
@click.option("--seeds", default=3, show_default=True, type=COUNT, help="number of seeds (0..N-1)")
@click.option("--distill", default="both", show_default=True, type=click.Choice(["both", "on", "off"]), help="ActiveKD distillation terms")
@click.option("--config", "config_pairs", multiple=True, metavar="KEY=VALUE", help="ActiveKD student option, e.g. steps_per_label=1")
@click.option("--device", default=None)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="output folder")
@click.option("--overwrite", is_flag=True)
@click.option("--protocol", default="active-cpu@1", show_default=True, help="evaluation protocol that judges each round's labeled set (hard or teacher labels)")
@click.option("--plot/--no-plot", default=True, show_default=True, help="draw accuracy.png (needs the plot extra: pip install -e '.[plot]')")
def active_learn_cmd(pool, pool_size, teacher, teacher_logits, methods, rounds, queries, seeds, distill, config_pairs, device, out,
                     overwrite, protocol, plot):
    """Run the active-learning loop (oracle = the pool's labels) for each method, with and without KD;
    each round's labeled set is judged under an evaluation protocol and each selection gets a result card."""
    from ddkit.models import parse_model_options
    from ddkit.workflows.active_learning import run_active_learning

    result = run_active_learning(pool, out, [m.strip() for m in methods.split(",") if m.strip()], teacher, teacher_logits,
                                 rounds, queries or None, seeds, distill, pool_size or None, parse_model_options(config_pairs),
                                 device, overwrite, log=click.echo, protocol=protocol, plot=plot)
    written = [result.files[k] for k in ("json", "table", "plot") if k in result.files]
    click.echo(f"wrote {', '.join(written)}, {len(result.files.get('selections', []))} selection files with result cards")


@cli.command()
@click.argument("train_set")
@click.option("--protocol", default="hard-cpu", show_default=True, help="registered protocol (`ddkit list protocols`)")
@click.option("--seeds", default=3, show_default=True, type=COUNT, help="number of seeds (0..N-1)")
@click.option("--teacher", "teachers", multiple=True, type=click.Path(), help="teacher(s) for teacher/stored protocols")
@click.option("--device", default=None)
@click.option("--no-baseline", is_flag=True, help="skip the random-subset baseline (not recommended)")
@click.option("--no-full", is_flag=True, help="skip the full-data reference")
@click.option("--steps", default=None, type=COUNT, help="override the protocol's steps (a derived, renamed protocol; for smoke tests)")
@click.option("--batched/--sequential", default=None,
              help="train the seeds as one vmapped model, or one at a time (default: batched on a GPU, one at a time on a CPU)")
@click.option("--no-write", is_flag=True, help="do not write the result card into the file")
@click.option("--no-ranking", is_flag=True,
              help="skip DD-Ranking's HLR/IOR/LRS (which train the set under the hard-label partner protocol)")
@click.option("--dataset", default=None, help="the data a file was made from when the file names it by a path "
              "(imagefolder:DIR, pool:FILE): ddkit never opens a path named inside a file")
@click.option("--nproc", default=1, show_default=True, type=COUNT, help="processes (torchrun): the seeds are shared out, one student per rank")
@click.option("--json", "as_json", is_flag=True)
def evaluate(train_set, protocol, seeds, teachers, device, no_baseline, no_full, steps, batched, no_write, no_ranking, dataset, nproc,
             as_json):
    """Train students on TRAIN_SET (.ddk.h5, .sel.h5, or random:DATASET:IPC) and report accuracy."""
    from ddkit import distributed
    from ddkit.evaluate import evaluate as run_evaluation

    if nproc > 1 and distributed.world().size == 1:
        distributed.launch(nproc, _argv_without("--nproc"))
        return

    from ddkit.share.pack import resolve_train_set

    train_set, teachers = resolve_train_set(train_set, list(teachers))
    card = run_evaluation(train_set, protocol, seeds=list(range(seeds)), teachers=teachers, device=device,
                          baseline=not no_baseline, full_reference=not no_full, steps=steps,
                          batched=batched, write_card=not no_write, ranking=not no_ranking, dataset=dataset)
    if distributed.world().rank != 0:
        return
    if as_json:
        _print_json(card.to_dict())
    else:
        click.echo(card.table())


# -- inspecting files ---------------------------------------------------------------------------
@cli.command()
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True)
def info(path, as_json):
    """Budget in bytes, provenance and results of a .ddk.h5 / .sel.h5 file."""
    from ddkit.share import remote
    from ddkit.store import describe, info_dict
    from ddkit.store.describe import render_info

    if remote.is_url(path) and path.endswith(".ddk.h5"):  # ranged reads of the header only
        d = remote.header_info(path)
        _print_json(d) if as_json else click.echo(render_info(d))
    elif as_json:
        _print_json(info_dict(_local(path)))
    else:
        click.echo(describe(_local(path)))


@cli.command()
@click.argument("path", type=click.Path())
@click.option("--teacher", default=None, type=click.Path(), help="also check the label space and input shape against this teacher")
@click.option("--against", default=None, metavar="DATASET[:SPLIT]",
              help="also look for copies of this dataset's images (test split by default) in the file, its recorded "
                   "real sources, or the pool; the result is written into the file")
@click.option("--no-write", is_flag=True, help="with --against: do not record the result in the file")
@click.option("--dataset", default=None,
              help="with --against: a selection's pool when the file names it by a path (pool:FILE); never read from the file")
@click.option("--device", default=None, help="with --against: cpu, cuda, or auto (default), where the search runs")
def validate(path, teacher, against, no_write, dataset, device):
    """Recompute the content hash and check shapes, dtypes, class coverage and label space
    (.ddk.h5, .sel.h5); with --against, check any ddkit file (pools too) for test-set copies."""
    from ddkit.store import validate_file

    if against:
        from ddkit.data.poolfile import is_pool_file

        if not is_pool_file(path):  # pools have no store checks; their fingerprint is checked by the search
            _validate_and_report(validate_file, path, teacher)
        from ddkit.contamination import check_file
        from ddkit.training import pick_device

        check = check_file(path, against, record=not no_write, source=dataset, device=pick_device(device))
        click.echo(str(check))
        if not check.ok:
            raise SystemExit(1)
        return
    _validate_and_report(validate_file, path, teacher)


def _validate_and_report(validate_file, path, teacher):
    kwargs = {}
    if teacher:
        from ddkit.models.teacher import load_teacher

        h = load_teacher(_local(teacher)).header  # all of it (weights, hash, architecture), as evaluate loads it
        kwargs = {"num_classes": h.num_classes, "image_shape": h.input_shape}
    report = validate_file(_local(path), **kwargs)
    click.echo(str(report))
    if not report.ok:
        raise SystemExit(1)


@cli.command()
@click.argument("path", type=click.Path())
@click.option("--out", required=True, type=OUT_FILE, help="output PNG")
@click.option("--per-class", default=10, show_default=True, type=click.IntRange(1, 1000))
@click.option("--max-rows", default=100, show_default=True, type=COUNT, help="draw at most this many rows (classes)")
@click.option("--what", default="instances", show_default=True, type=click.Choice(["instances", "compensators"]))
@click.option("--overwrite", is_flag=True)
def show(path, out, per_class, max_rows, what, overwrite):
    """Render a per-class grid of a distilled file's instances (or its compensators) to a PNG."""
    from ddkit.store import render_grid

    drawn = render_grid(_local(path), out, per_class=per_class, what=what, overwrite=overwrite, max_rows=max_rows)
    click.echo(f"wrote {out}" + (f" (first {drawn['rows']} of {drawn['of']} rows; see --max-rows)"
                                 if drawn["rows"] < drawn["of"] else ""))


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=OUT_FILE, help="output .ddk.h5 file")
@click.option("--overwrite", is_flag=True)
def merge(files, out, overwrite):
    """Merge distilled files of the same dataset, normalization, teachers and method (lineage recorded)."""
    from ddkit.store import merge_files

    digest = merge_files([_local(f) for f in files], out, overwrite=overwrite)
    click.echo(f"wrote {out} from {len(files)} files (content_sha256 {digest[:16]}…)")


# -- sharing: export, import, pack, catalog (ddkit.share) -----------------------------------------
@cli.command("export")
@click.argument("path")
@click.option("--to", "fmt", required=True, type=click.Choice(["imagefolder", "pt", "hf"]), help="the format to write")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True)
def export_cmd(path, fmt, out, overwrite):
    """Write the distilled file PATH (a path or URL) as a folder OUT in another format."""
    from ddkit.share import export_file

    r = export_file(_local(path), fmt, out, overwrite=overwrite)
    click.echo(f"wrote {out}: {r.instances} instances as {fmt}, {r.files} files, {r.bytes} bytes")
    for note in r.notes:
        click.echo(f"  note: {note}")


@cli.command("import")
@click.argument("source")
@click.option("--from", "fmt", required=True, help="source format (`ddkit list import-formats`): dc, mtt, pt, imagefolder, hf")
@click.option("--dataset", required=True, help="the registered dataset the set was distilled from")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--zca", default=None, help="undo ZCA whitening: a .pt/.npz with mean + transform, or 'fit' (MTT's, refit)")
@click.option("--no-zca", is_flag=True, help="the MTT/DATM set was distilled without ZCA")
@click.option("--mean", default=None, help="comma-separated mean the set is normalized with (default: the dataset's)")
@click.option("--std", default=None, help="comma-separated std the set is normalized with (default: the dataset's)")
@click.option("--index", default=0, show_default=True, help="which experiment of a DC result file")
@click.option("--overwrite", is_flag=True)
def import_cmd(source, fmt, dataset, out, zca, no_zca, mean, std, index, overwrite):
    """Import a released distilled set (SOURCE: a file, folder or URL) as a .ddk.h5 file OUT."""
    from ddkit.data.base import Normalization
    from ddkit.errors import InvalidInput
    from ddkit.share import ImportOptions, import_set

    if (mean is None) != (std is None):
        raise InvalidInput("--mean and --std go together", "give both, e.g. --mean 0.2861 --std 0.3530")
    norm = Normalization(tuple(float(v) for v in mean.split(",")), tuple(float(v) for v in std.split(","))) if mean else None
    options = ImportOptions(dataset, norm, zca, no_zca, index)
    digest = import_set(_local(source), fmt, out, options, overwrite=overwrite, source_label=source)
    click.echo(f"wrote {out} from {source} ({fmt}; content_sha256 {digest[:16]}…)")


@cli.command("pack")
@click.argument("path")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--teacher", "teachers", multiple=True, help="where to look for the teachers (files or folders; repeatable)")
@click.option("--overwrite", is_flag=True)
def pack_cmd(path, out_dir, teachers, overwrite):
    """Write PATH, every teacher it references (matched by sha256) and a README into OUT_DIR."""
    from ddkit.share.pack import pack

    manifest = pack(_local(path), out_dir, [_local(t) for t in teachers], overwrite=overwrite)
    click.echo(f"wrote {out_dir}: {manifest['set']} with {len(manifest['teachers'])} teacher(s)")


@cli.group()
def catalog():
    """A team's index of distilled files: scan folders or URLs, list and filter, fetch verified."""


_CATALOG = click.option("--catalog", "catalog_path", default=None, type=click.Path(dir_okay=False),
                        help="the index file (default $DDKIT_CACHE/catalog.sqlite)")


@catalog.command("scan")
@click.argument("roots", nargs=-1, required=True)
@_CATALOG
def catalog_scan(roots, catalog_path):
    """Index the headers and result cards of every .ddk.h5 under ROOTS (folders, files or URLs)."""
    from ddkit.share.catalog import Catalog

    with Catalog(catalog_path) as cat:
        counts = cat.scan(list(roots))
    click.echo(", ".join(f"{n} {k}" for k, n in counts.items()))


@catalog.command("ls")
@_CATALOG
@click.option("--dataset", default=None)
@click.option("--method", default=None)
@click.option("--ipc", default=None, type=int)
@click.option("--protocol", default=None, help="show the result under this protocol")
@click.option("--sort", default="gain", show_default=True, type=click.Choice(["gain", "accuracy", "bytes", "created"]))
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def catalog_ls(catalog_path, dataset, method, ipc, protocol, sort, limit, as_json):
    """List indexed files (best first), with damaged and stale ones marked."""
    from ddkit.share.catalog import Catalog, format_rows

    with Catalog(catalog_path) as cat:
        rows = cat.ls(dataset=dataset, method=method, ipc=ipc, protocol=protocol, sort=sort, limit=limit)
    _print_json(rows) if as_json else click.echo(format_rows(rows))


@catalog.command("get")
@click.argument("entry_id")
@_CATALOG
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="also copy the verified file here")
def catalog_get(entry_id, catalog_path, out):
    """Fetch an indexed file (by id or content-hash prefix) and verify it against the index."""
    from ddkit.share.catalog import Catalog

    with Catalog(catalog_path) as cat:
        path = cat.get(entry_id, out)
    click.echo(str(path))


@cli.command()
@click.option("--workdir", default="runs/quickstart", show_default=True, type=click.Path(file_okay=False))
@click.option("--dataset", default=DEFAULT_DATASET, show_default=True)
@click.option("--ipc", default=10, show_default=True, type=COUNT)
@click.option("--epochs", default=5, show_default=True, type=COUNT, help="teacher epochs")
@click.option("--steps", default=None, type=COUNT, help="evaluation steps (default: the protocol's)")
@click.option("--seed", default=0, show_default=True)
@click.option("--iterations", default=300, show_default=True, type=COUNT, help="distribution-matching iterations")
def quickstart(workdir, dataset, ipc, epochs, steps, seed, iterations):
    """The main job end to end on the embedded dataset: teacher → distilled file → info → show → evaluate."""
    from ddkit.quickstart import run_quickstart

    run_quickstart(workdir, dataset, ipc, epochs, steps, seed, iterations, echo=click.echo)


def _exit_on_signal(signum, frame) -> None:
    """SIGTERM/SIGHUP end the command like an exception, so temporary files are removed on the way out."""
    raise SystemExit(128 + signum)


def main(argv=None) -> None:
    import signal
    import threading

    handled = (signal.SIGTERM, signal.SIGHUP) if threading.current_thread() is threading.main_thread() else ()
    previous = {signum: signal.signal(signum, _exit_on_signal) for signum in handled}
    try:
        _main(argv)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _main(argv=None) -> None:
    _ARGV[:] = list(sys.argv[1:] if argv is None else argv)
    try:
        code = cli.main(args=argv, prog_name="ddkit", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except DdkitError as exc:
        if os.environ.get("DDKIT_DEBUG"):
            raise
        click.echo(f"error: {exc.problem}", err=True)
        if exc.fix:
            click.echo(f"  fix: {exc.fix}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
