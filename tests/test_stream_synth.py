"""Every synthesizer on a streamed source: the same file as from the in-memory source, under a memory
limit smaller than the train split (so no pass may hold the whole split), and the same expert
trajectories for MTT.

The contract of the streamed path is equality, not closeness: the same ids are picked and the same
pixels are decoded, so the written file's content hash must not change with the data mode.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from ddkit.data import load_dataset
from ddkit.data.imagefolder import write_class_map
from ddkit.data.stream import StreamedImageDataset
from ddkit.errors import InvalidInput
from ddkit.experts import ExpertTraining, load_experts, train_experts
from ddkit.models import create_model
from ddkit.models.teacher import save_teacher
from ddkit.synth import SYNTHESIZERS, run_synthesizer

CLASSES = ["zebra", "apple", "mango"]
PER_CLASS = 12  # train images per class: 36 images of 3×8×8 = 6912 bytes
IMAGE_BYTES = 3 * 8 * 8
LIMIT = 8 * IMAGE_BYTES  # under one class: a pass that holds the split, or a whole class, is refused


@pytest.fixture(scope="module")
def folder(tmp_path_factory, make_imagefolder):
    root = make_imagefolder(tmp_path_factory.mktemp("stream-synth"), CLASSES, per_split={"train": PER_CLASS, "test": 2})
    write_class_map(root, CLASSES)
    return root


@pytest.fixture(autouse=True)
def env(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("DDKIT_PROGRESS", "0")
    monkeypatch.setenv("DDKIT_WORKERS", "1")  # one decoding process: the worker path, without the CPU cost
    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path_factory.getbasetemp() / "stream-synth-cache"))


def _mode(monkeypatch, mode: str) -> None:
    monkeypatch.setenv("DDKIT_DATA_MODE", mode)
    if mode == "stream":
        monkeypatch.setenv("DDKIT_MEMORY_LIMIT", str(LIMIT))
    else:
        monkeypatch.delenv("DDKIT_MEMORY_LIMIT", raising=False)


@pytest.fixture(scope="module")
def teacher(folder, tmp_path_factory):
    """A small BN ConvNet for the folder (untrained weights, non-trivial BN running statistics)."""
    info = load_dataset(f"imagefolder:{folder}", "train").info
    model = create_model("convnet-bn", 3, 8, len(CLASSES), seed=1, width=8, depth=2)
    with torch.no_grad():
        for i, bn in enumerate(m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.2, 0.2, generator=torch.Generator().manual_seed(i))
            bn.running_var.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(i + 100))
    path = tmp_path_factory.mktemp("stream-synth-teacher") / "t.safetensors"
    save_teacher(path, model.eval(), info)
    return str(path)


def _train_experts(folder, out, monkeypatch, mode):
    _mode(monkeypatch, mode)
    train_experts(out, f"imagefolder:{folder}", "convnet", {"width": 4, "depth": 2}, 1,
                  ExpertTraining(epochs=2, batch_size=8), seed=0)
    return out


@pytest.fixture(scope="module")
def experts(folder, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DDKIT_PROGRESS", "0")
        return str(_train_experts(folder, tmp_path_factory.mktemp("stream-experts") / "e.experts.h5", mp, "memory"))


TINY = {  # each method's smallest run that still makes every pass it makes over the source
    "random-real": {},
    "herding": {"batch_size": 8},
    "kcenter": {"batch_size": 8},
    "infer": {"iterations": 2, "jitter": 1},
    "nrr-dd": {"mipc": 6, "num_crop": 2, "iterations": 2, "jitter": 1, "transfer": "teacher"},
    "dm": {"iterations": 3, "batch_real": 5, "checkpoint_every": 2},
    "mtt": {"iterations": 2, "syn_steps": 2, "max_start_epoch": 1, "expert_epochs": 1},
}


@pytest.mark.parametrize("method", SYNTHESIZERS.names())
def test_streamed_source_gives_the_same_file(method, folder, teacher, experts, tmp_path, monkeypatch):
    if method not in TINY:
        pytest.fail(f"synthesizer {method} has no tiny config in TINY: add one so its streamed path is tested")
    teachers, config = ([], {**TINY[method], "experts": experts}) if method == "mtt" else ([teacher], TINY[method])
    digests = {}
    for mode in ("memory", "stream"):
        _mode(monkeypatch, mode)
        source = load_dataset(f"imagefolder:{folder}", "train")
        assert isinstance(source, StreamedImageDataset) == (mode == "stream")
        if mode == "stream":
            with pytest.raises(InvalidInput, match="does not stream"):
                source.pixels()  # the limit is below the whole split
        digests[mode] = run_synthesizer(method, f"imagefolder:{folder}", teachers, 2, config, seed=3,
                                        out=tmp_path / f"{mode}.ddk.h5")
    assert digests["stream"] == digests["memory"]


def test_streamed_expert_trajectories_equal_the_in_memory_ones(folder, experts, tmp_path, monkeypatch):
    streamed = _train_experts(folder, tmp_path / "s.experts.h5", monkeypatch, "stream")
    with load_experts(experts) as a, load_experts(streamed) as b:
        assert a.header.params_sha256 == b.header.params_sha256
        assert all(torch.equal(a.params.trajectory(i), b.params.trajectory(i)) for i in range(a.num_experts))


@pytest.mark.slow
def test_two_ranks_on_a_streamed_source_equal_one_process_in_memory(folder, teacher, tmp_path):
    """Work items (herding's classes; NRR-DD's and INFER's shard the same way) over 2 gloo ranks, each
    streaming its own classes under the memory limit: rank 0 writes the same file as one process
    holding the split in memory."""
    from ddkit.store import DistilledDataset

    method, env = "herding", {**os.environ, "DDKIT_PROGRESS": "0", "OMP_NUM_THREADS": "1", "DDKIT_WORKERS": "1"}
    base = [sys.executable, "-m", "ddkit", "synthesize", "--method", method, "--dataset", f"imagefolder:{folder}",
            "--teacher", teacher, "--ipc", "2", "--seed", "3", *sum((["--config", f"{k}={v}"]
                                                                      for k, v in TINY[method].items()), [])]
    one, two = tmp_path / "one.ddk.h5", tmp_path / "two.ddk.h5"
    single = subprocess.run(base + ["--out", str(one)], env={**env, "DDKIT_DATA_MODE": "memory"},
                            capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    multi = subprocess.run(base + ["--out", str(two), "--nproc", "2"], capture_output=True, text=True,
                           env={**env, "DDKIT_DATA_MODE": "stream", "DDKIT_MEMORY_LIMIT": str(LIMIT)})
    assert multi.returncode == 0, multi.stderr
    with DistilledDataset(one) as a, DistilledDataset(two) as b:
        assert a.content_sha256 == b.content_sha256


def test_real_picks_beyond_the_memory_limit_are_refused_before_any_output(folder, tmp_path, monkeypatch):
    _mode(monkeypatch, "stream")  # 3 classes × ipc 3 = 9 images, over the limit of 8
    out = tmp_path / "r.ddk.h5"
    with pytest.raises(InvalidInput, match="memory limit"):
        run_synthesizer("random-real", f"imagefolder:{folder}", [], 3, {}, seed=0, out=out)
    assert not out.exists()
