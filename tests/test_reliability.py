"""Faults around the files: a write that runs out of space leaves the previous file intact and ends
in one clear message; several processes and DataLoader workers read one file at once."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

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
