"""Distributed paths on CPU with the gloo backend and 2 processes (torchrun)."""

import json
import os
import subprocess
import sys

import pytest
from helpers import kill_at_call

from ddkit.distributed import World, shard


def test_shard_is_a_partition():
    items = list(range(7))
    parts = [shard(items, World(r, 3)) for r in range(3)]
    assert sorted(sum(parts, [])) == items and parts[0] == [0, 3, 6]


@pytest.mark.slow
def test_evaluate_nproc_2_equals_single_process(tmp_path):
    """`ddkit evaluate --nproc 2` (one seed per rank, gloo) gives the same card numbers as one process."""
    env = {**os.environ, "DDKIT_CACHE": str(tmp_path / "cache1"), "DDKIT_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    args = ["evaluate", "random:procedural:3", "--steps", "5", "--seeds", "2", "--no-full", "--json", "--sequential"]
    single = subprocess.run([sys.executable, "-m", "ddkit", *args], capture_output=True, text=True, env=env)
    assert single.returncode == 0, single.stderr
    env["DDKIT_CACHE"] = str(tmp_path / "cache2")
    multi = subprocess.run([sys.executable, "-m", "ddkit", *args, "--nproc", "2"], capture_output=True, text=True, env=env)
    assert multi.returncode == 0, multi.stderr
    a = json.loads(single.stdout)
    b = json.loads(multi.stdout[multi.stdout.index("{"):])
    assert b["world_size"] == 2 and a["world_size"] == 1
    assert b["result"]["accuracies"] == pytest.approx(a["result"]["accuracies"], abs=1e-6)
    assert b["random_baseline"]["accuracies"] == pytest.approx(a["random_baseline"]["accuracies"], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("method,config", [("infer", ["iterations=20"]), ("nrr-dd", ["iterations=10", "mipc=10", "refine=true"])])
def test_synthesize_nproc_2_equals_world_size_1(tmp_path, method, config):
    """Work items sharded over 2 gloo ranks, rank 0 writes: the same content hash as one process
    (both with one thread per process, so float reductions run in the same order)."""
    from ddkit.store import DistilledDataset
    from ddkit.teachers import train_teacher

    teacher = tmp_path / "t.safetensors"
    train_teacher(teacher, "procedural", "convnet-bn", {"width": 8}, epochs=1, batch_size=64)
    env = {**os.environ, "DDKIT_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "ddkit", "synthesize", "--method", method, "--dataset", "procedural",
            "--teacher", str(teacher), "--ipc", "3", *sum((["--config", c] for c in config), [])]
    one, two = tmp_path / "one.ddk.h5", tmp_path / "two.ddk.h5"
    single = subprocess.run(base + ["--out", str(one)], env=env, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    multi = subprocess.run(base + ["--out", str(two), "--nproc", "2"], env=env, capture_output=True, text=True)
    assert multi.returncode == 0, multi.stderr
    with DistilledDataset(one) as a, DistilledDataset(two) as b:
        assert a.content_sha256 == b.content_sha256
    assert not (tmp_path / "two.ddk.h5.work").exists()


def _run(args, env):
    proc = subprocess.run([sys.executable, "-m", "ddkit", *args], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.slow
def test_dm_nproc_2_equals_world_size_1_and_resumes_across_world_sizes(tmp_path, monkeypatch):
    import torch

    """DM's classes shared over 2 gloo ranks: the same images, labels and final loss as one process
    (one thread each); a run killed after its first checkpoint in one process resumes under 2 ranks
    to the same file."""
    from ddkit.store import DistilledDataset
    from ddkit.synth import run_synthesizer
    from ddkit.workitems import WorkItemStore

    env = {**os.environ, "DDKIT_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    config = {"iterations": 4, "batch_real": 8, "net_options": "depth=2,width=8,norm=instance", "checkpoint_every": 2}
    base = ["synthesize", "--method", "dm", "--dataset", "procedural", "--ipc", "3",
            *sum((["--config", f"{k}={v}"] for k, v in config.items()), [])]
    one, two, resumed = tmp_path / "one.ddk.h5", tmp_path / "two.ddk.h5", tmp_path / "resumed.ddk.h5"
    _run(base + ["--out", str(one)], env)
    _run(base + ["--out", str(two), "--nproc", "2"], env)

    kill_at_call(monkeypatch, WorkItemStore, "save", 1, after=True)  # killed right after the first checkpoint
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks run: float reductions in the same order
    try:
        with pytest.raises(KeyboardInterrupt):
            run_synthesizer("dm", "procedural", [], 3, config, seed=0, out=resumed)
    finally:
        torch.set_num_threads(threads)
        monkeypatch.undo()
    assert [p.name for p in (tmp_path / "resumed.ddk.h5.work").glob("*.npz")] == ["iter-0000002.npz"]
    multi = _run(base + ["--out", str(resumed), "--nproc", "2", "--resume"], env)
    assert "resuming at iteration 2 of 4" in multi.stderr
    with DistilledDataset(one) as a, DistilledDataset(two) as b, DistilledDataset(resumed) as c:
        assert a.content_sha256 == b.content_sha256 == c.content_sha256
        assert a.header.config["final_loss"] == b.header.config["final_loss"] is not None
    assert not (tmp_path / "two.ddk.h5.work").exists() and not (tmp_path / "resumed.ddk.h5.work").exists()


@pytest.mark.slow
def test_experts_nproc_2_equal_world_size_1_and_resume_across_world_sizes(tmp_path, monkeypatch):
    """3 experts over 2 gloo ranks (rank 0 trains experts 0 and 2, rank 1 expert 1): the same trajectories
    as one process; a one-process run killed with expert 0 done and expert 1 half-way resumes under
    2 ranks (rank 1 continues expert 1 from its finished epoch) to the same trajectories."""
    import torch

    import ddkit.experts as experts_mod
    from ddkit.experts import ExpertTraining, load_experts, train_experts

    env = {**os.environ, "DDKIT_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    base = ["experts", "train", "--dataset", "procedural", "--model-opt", "width=4", "--model-opt", "depth=2",
            "--experts", "3", "--epochs", "2", "--batch-size", "128"]
    one, two, resumed = tmp_path / "one.experts.h5", tmp_path / "two.experts.h5", tmp_path / "resumed.experts.h5"
    _run(base + ["--out", str(one)], env)
    multi = _run(base + ["--out", str(two), "--nproc", "2"], env)
    assert "wrote" in multi.stdout

    kill_at_call(monkeypatch, experts_mod, "train_epoch", 4)  # expert 0 finished (2 epochs), expert 1 at 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks run
    try:
        with pytest.raises(KeyboardInterrupt):
            train_experts(resumed, "procedural", "convnet", {"width": 4, "depth": 2}, 3,
                          ExpertTraining(epochs=2, batch_size=128), seed=0)
    finally:
        torch.set_num_threads(threads)
        monkeypatch.undo()
    work = tmp_path / "resumed.experts.h5.work"
    assert sorted(p.name for p in work.glob("*.npz")) == ["expert000.npz", "expert001-partial.npz"]
    _run(base + ["--out", str(resumed), "--nproc", "2", "--resume"], env)
    assert not work.exists() and not (tmp_path / "two.experts.h5.work").exists()
    with load_experts(one) as a, load_experts(two) as b, load_experts(resumed) as c:
        assert a.header.params_sha256 == b.header.params_sha256 == c.header.params_sha256
        for i in range(3):
            assert torch.equal(a.params.trajectory(i), b.params.trajectory(i))
        strip = ("created",)
        assert {k: v for k, v in vars(a.header).items() if k not in strip} == \
            {k: v for k, v in vars(b.header).items() if k not in strip}


@pytest.mark.slow
def test_dm_nproc_2_with_formation_pool_and_class_reg_matches_world_size_1(tmp_path):
    """IDM's additions under class sharing: every rank trains the same seeded pool, decodes only its
    classes' stored images, and weighs its share of the class-aware term by its share of the classes,
    so 2 gloo ranks give one process's images up to float rounding."""
    from ddkit.store import DistilledDataset

    env = {**os.environ, "DDKIT_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    config = {"iterations": 3, "batch_real": 8, "net_options": "depth=2,width=8,norm=instance", "formation": 2,
              "pool_size": 2, "pool_warmup_steps": 1, "pool_batch": 16, "pool_refresh_every": 2, "class_reg": 1.0}
    base = ["synthesize", "--method", "dm", "--dataset", "procedural", "--ipc", "2",
            *sum((["--config", f"{k}={v}"] for k, v in config.items()), [])]
    one, two = tmp_path / "one.ddk.h5", tmp_path / "two.ddk.h5"
    _run(base + ["--out", str(one)], env)
    _run(base + ["--out", str(two), "--nproc", "2"], env)
    with DistilledDataset(one) as a, DistilledDataset(two) as b:
        assert a.formation.factor == b.formation.factor == 2 and len(a) == len(b) == 80
        assert torch_allclose(a.stored_pixels(), b.stored_pixels())
        assert a.header.config["final_loss"] == pytest.approx(b.header.config["final_loss"], rel=1e-4)


def torch_allclose(a, b) -> bool:
    import torch

    return torch.allclose(a, b, atol=2e-3)  # float16 storage: one step of rounding at most
