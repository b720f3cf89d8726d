"""`ddkit teacher` and `ddkit experts`: the trained networks other verbs learn from."""

from __future__ import annotations

import click

from ddkit.cli.common import COUNT, NONNEGATIVE, OUT_FILE, POSITIVE, argv_without, device_option, print_json
from ddkit.datainfo import DEFAULT_DATASET


@click.group()
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
@device_option()
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
@device_option()
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
@device_option()
@click.option("--json", "as_json", is_flag=True)
def teacher_eval(path, dataset, split, device, as_json):
    """Accuracy of a teacher file on a dataset split."""
    from ddkit.teachers import evaluate_teacher

    result = evaluate_teacher(path, dataset, split, device)
    if as_json:
        print_json(result)
    else:
        click.echo(f"{result['arch']} on {result['dataset']}/{result['split']}: {100 * result['accuracy']:.2f}% "
                   f"({result['samples']} samples)")


@click.group()
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
@device_option()
@click.option("--out", required=True, type=OUT_FILE, help="output .experts.h5 file")
@click.option("--resume", is_flag=True, help="reuse finished experts and epochs of an interrupted run (OUT.work/)")
@click.option("--overwrite", is_flag=True, help="replace an existing output file, and start over from an interrupted run's OUT.work/")
@click.option("--nproc", default=1, show_default=True, type=COUNT, help="processes (torchrun): the experts are shared out, rank 0 writes")
def experts_train(dataset, model, model_opt, num_experts, epochs, lr, momentum, weight_decay, batch_size, augmentation,
                  seed, device, out, resume, overwrite, nproc):
    """Train N experts on DATASET and record their parameters after every epoch."""
    from ddkit import distributed
    from ddkit.experts import ExpertTraining, train_experts
    from ddkit.models import parse_model_options

    if nproc > 1 and distributed.world().size == 1:
        distributed.launch(nproc, argv_without("--nproc"))
        click.echo(f"wrote {out} ({nproc} processes)")
        return
    training = ExpertTraining(epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay, batch_size=batch_size,
                              augmentation=augmentation)
    r = train_experts(out, dataset, model, parse_model_options(model_opt), num_experts, training, seed=seed, device=device,
                      overwrite=overwrite, resume=resume, log=lambda m: click.echo(m, err=True))
    if not distributed.world().is_main:
        return
    click.echo(f"wrote {out}: {num_experts} experts × {epochs} epochs of {model} on {dataset} "
               f"({r.header.num_params} parameters), {r.wall_seconds:.1f}s ({r.seconds_per_epoch:.2f}s per expert-epoch)")


@experts.command("info")
@click.argument("path", type=click.Path())
def experts_info(path):
    """Check an experts file (seal, header, params hash) and describe it."""
    from ddkit.experts import describe_experts

    click.echo(describe_experts(path))
