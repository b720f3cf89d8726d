"""Faults around the files: a write that runs out of space leaves the previous file intact and ends
in one clear message; several processes and DataLoader workers read one file at once."""

import subprocess
import sys
import textwrap

import pytest

from ddkit.store import DistilledDataset


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    from ddkit.synth import run_synthesizer

    path = tmp_path_factory.mktemp("rel") / "d.ddk.h5"
    run_synthesizer("random-real", "procedural", [], 5, {}, 0, path)
    return path


def test_full_disk_keeps_previous_file_and_says_so(distilled, tmp_path):
    target = tmp_path / "out.ddk.h5"
    target.write_bytes(distilled.read_bytes())
    before = target.read_bytes()
    script = textwrap.dedent(f"""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
        from ddkit.cli import main
        main(["synthesize", "--dataset", "fashion-mnist-mini", "--ipc", "20", "--out", {str(target)!r}, "--overwrite"])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "no space left while writing" in proc.stderr and "unchanged" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ddk.h5"], "no temporary file is left behind"


def test_concurrent_readers_in_processes_and_workers(distilled):
    with DistilledDataset(distilled) as ds:
        expected = ds.pixels()
    script = textwrap.dedent(f"""
        import torch
        from ddkit.store import DistilledDataset
        ds = DistilledDataset({str(distilled)!r})
        loader = torch.utils.data.DataLoader(ds, batch_size=7, num_workers=2)
        xs = torch.cat([x for x, _ in loader])
        print(float(ds.info.normalization.invert(xs).sum()))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err
        assert float(out) == pytest.approx(float(expected.sum()), rel=1e-5)


@pytest.mark.parametrize("method,config", [("infer", ["iterations=300"]), ("nrr-dd", ["iterations=60", "mipc=12", "refine=true"])])
def test_kill_9_then_resume_equals_uninterrupted(tmp_path, method, config):
    """`kill -9` of a synthesize run once some work items are done, then `--resume`: the same data
    (content hash) as an uninterrupted run, and never a partial file under the final name."""
    import os
    import signal
    import time

    from ddkit.store import DistilledDataset
    from ddkit.teachers import train_teacher

    teacher = tmp_path / "t.safetensors"
    train_teacher(teacher, "procedural", "convnet-bn", {"width": 8}, epochs=2, batch_size=32)
    args = [sys.executable, "-m", "ddkit", "synthesize", "--method", method, "--dataset", "procedural",
            "--teacher", str(teacher), "--ipc", "3", *sum((["--config", c] for c in config), [])]
    env = {**os.environ, "DDKIT_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    whole = tmp_path / "whole.ddk.h5"
    assert subprocess.run(args + ["--out", str(whole)], env=env, capture_output=True).returncode == 0
    out = tmp_path / "killed.ddk.h5"
    work = tmp_path / "killed.ddk.h5.work"
    proc = subprocess.Popen(args + ["--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (work.exists() and list(work.glob("*.npz"))):
        assert proc.poll() is None, "the run ended before it could be killed; make it longer"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    resumed = subprocess.run(args + ["--out", str(out), "--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    with DistilledDataset(whole) as a, DistilledDataset(out) as b:
        assert a.content_sha256 == b.content_sha256
    assert not work.exists(), "the work folder is removed once the file is written"
