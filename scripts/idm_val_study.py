"""IDM's additions to DM, measured on the validation split only (never the test split): multi-formation
with factor n ∈ {1, 2, 3} at equal bytes, and the trained model pool (with or without the class-aware
regularizer), against synthesis time.

The source is Fashion-MNIST's training split minus the deterministic 10% val split
(`ddkit.data.train_val_split`, seed 0). Every variant stores the same `--ipc` images per class, so
all of them cost the same bytes (a factor-n formation decodes them into ipc·n² instances per class).
One DM run (seed 0) per variant is scored at iteration milestones: one student per seed is trained
on the (decoded) instances under each protocol — by default `hard-cpu@2`, the cheap screen, and
`hard-paper@2`, the field's recipe as BENCHMARKS `field` measures it (`--protocols` takes any, e.g.
`hard-paper@1`) — and scored on the val split, beside random real images at the same bytes (ipc
real images per class of the same part). Each record holds the val accuracies, the
synthesis wall and CPU seconds up to that milestone (CPU: `time.process_time`, all threads of the
process), the student training seconds, and the mean matching loss of the last 10 iterations.
Records go to `--out` (default runs/field/idm_val_study.json), merged under a lock so several
lanes can share the file, keyed "VARIANT ipcK itM PROTOCOL"; a key already there is not redone.

Variants are names joined by "+": `dm` (plain DM), `fN` (formation=N), `poolN` (a trained pool of N
networks; `pool` = 10), `regX` (class_reg=X, needs a pool), e.g. `f2+pool+reg10`. `--config KEY=VALUE`
applies DM options to every variant (e.g. lr_img, batch_real, pool_warmup_steps).

    flock /tmp/ddkit-cpu.lock nice -n 10 env OMP_NUM_THREADS=1 python scripts/idm_val_study.py --ipc 10 \\
        --variants dm,f2,f3,pool,f2+pool,f2+pool+reg10 --milestones 0,100,300,1000 --seeds 3
    python scripts/idm_val_study.py --ipc 1 --variants f2+pool --milestones 0,2 --steps 5 --seeds 1 \\
        --config batch_real=8 --out /tmp/idm_smoke.json          # a smoke run (minutes)

Wall and CPU times are upper bounds on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import record_state  # noqa: E402
from dm_val_study import val_accuracy  # noqa: E402

from ddkit.config import build_config  # noqa: E402
from ddkit.data import load_dataset  # noqa: E402
from ddkit.data.base import class_balanced_indices, train_val_split  # noqa: E402
from ddkit.errors import InvalidInput  # noqa: E402
from ddkit.evaluate import get_protocol  # noqa: E402
from ddkit.evaluate.card import mean_std  # noqa: E402
from ddkit.models import parse_model_options  # noqa: E402
from ddkit.synth.dm import DMConfig, initial_state, optimize  # noqa: E402

DEFAULT_POOL = 10
_PART = re.compile(r"^(dm|f(\d+)|pool(\d*)|reg([0-9.eE+-]+))$")


def variant_options(name: str) -> dict:
    """DM options of a variant name such as `f2+pool+reg10` (see the module docstring)."""
    options: dict = {}
    for part in name.split("+"):
        m = _PART.match(part)
        if not m:
            raise InvalidInput(f"variant {name!r}: {part!r} is not dm, fN, poolN or regX")
        if m.group(2):
            options["formation"] = int(m.group(2))
        elif part.startswith("pool"):
            options["pool_size"] = int(m.group(3) or DEFAULT_POOL)
        elif m.group(4):
            options["class_reg"] = float(m.group(4))
    return options


def decoded(config: DMConfig, images: torch.Tensor) -> torch.Tensor:
    """The instances students train on: the stored (normalized) images, decoded when there is a formation."""
    decoder = config.decoder()
    return images if decoder is None else decoder.decode(images)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--ipc", type=int, default=10, help="stored images per class (the same bytes for every variant)")
    parser.add_argument("--variants", default="dm,f2,f3,pool,f2+pool")
    parser.add_argument("--milestones", default="0,100,300,1000", help="iterations at which the images are scored")
    parser.add_argument("--protocols", default="hard-cpu@2,hard-paper@2", help="the screen first, the field's recipe second")
    parser.add_argument("--seeds", type=int, default=3, help="students per protocol and milestone (and random subsets)")
    parser.add_argument("--steps", type=int, default=None, help="student steps instead of the protocol's (smoke runs)")
    parser.add_argument("--config", action="append", default=[], metavar="KEY=VALUE", help="DM option for every variant")
    parser.add_argument("--out", type=Path, default=Path("runs/field/idm_val_study.json"))
    args = parser.parse_args(argv)

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    common = parse_model_options(args.config)
    milestones = sorted({int(m) for m in args.milestones.split(",")})
    configs = {v: build_config(DMConfig, {**common, **variant_options(v), "iterations": milestones[-1]}, owner="dm")
               for v in variants}  # every bad option is refused here, before any work
    protocols = [get_protocol(p) for p in args.protocols.split(",") if p.strip()]
    if args.steps is not None:
        protocols = [p.with_overrides(steps=args.steps, epochs=0) for p in protocols]
    seeds = list(range(args.seeds))
    device = torch.device("cpu")
    train, val = train_val_split(load_dataset(args.dataset, "train"), 0.1, seed=0)
    info = train.info
    for config in configs.values():
        if config.decoder() is not None:
            config.decoder().check(info.image_shape)
    done = json.loads(args.out.read_text()) if args.out.exists() else {}
    suffix = "".join(f" {k}={v}" for k, v in sorted(common.items()))

    for protocol in protocols:
        key = f"random-real ipc{args.ipc} {protocol.id}"
        if key in done:
            continue
        accs, start = [], time.perf_counter()
        for s in seeds:  # one random subset per seed, as the evaluator's baseline does
            part = train.subset(class_balanced_indices(train, args.ipc, s, salt="evaluation-baseline"))
            accs += val_accuracy(protocol, part.normalized(), part.labels, [s], info, val)
        entry = {"val_accuracies": accs, "mean": mean_std(accs)[0], "std": mean_std(accs)[1],
                 "eval_seconds": time.perf_counter() - start, "bytes_as": f"ipc {args.ipc} plain images"}
        record_state(args.out, key, entry)
        print(key, entry, flush=True)

    for variant, config in configs.items():
        state, picked = initial_state(train, args.ipc, config, 0, device)
        per_image = 1 if config.decoder() is None else config.decoder().per_image
        labels = picked.labels  # class-major, each stored image's n² sources in a row: the instances' labels
        wall = cpu = 0.0
        losses: list[float] = []
        for milestone in milestones:
            w0, c0 = time.perf_counter(), time.process_time()
            losses += [float(t.sum()) for t in optimize(train, state, config, 0, device, stop=milestone)]
            wall, cpu = wall + time.perf_counter() - w0, cpu + time.process_time() - c0
            instances = decoded(config, state.images).detach().clone()
            for protocol in protocols:
                key = f"{variant}{suffix} ipc{args.ipc} it{milestone} {protocol.id}"
                if key in done:
                    continue
                start = time.perf_counter()
                accs = val_accuracy(protocol, instances, labels, seeds, info, val)
                entry = {"val_accuracies": accs, "mean": mean_std(accs)[0], "std": mean_std(accs)[1],
                         "synthesis_wall_seconds": wall, "synthesis_cpu_seconds": cpu,
                         "synthesis_minutes": wall / 60, "eval_seconds": time.perf_counter() - start,
                         "iterations": milestone, "instances_per_class": args.ipc * per_image,
                         "loss_last10": sum(losses[-10:]) / max(1, len(losses[-10:])),
                         "config": {k: v for k, v in vars(config).items() if k != "iterations"}}
                record_state(args.out, key, entry)
                print(key, {k: entry[k] for k in ("mean", "std", "synthesis_wall_seconds", "synthesis_cpu_seconds")},
                      flush=True)


if __name__ == "__main__":
    main()
