"""The index's backend follows the run's device, not what is installed: a fake "faiss-gpu" module and
a monkeypatched `torch.cuda.is_available` stand in for a GPU machine (there is none here)."""

import sys
import types

import numpy as np
import pytest
import torch

from ddkit import index
from ddkit.errors import InvalidInput
from ddkit.index import device as backend_module, search as search_module


@pytest.fixture
def data():
    rng = np.random.default_rng(3)
    return rng.standard_normal((400, 12)).astype(np.float32), rng.standard_normal((30, 12)).astype(np.float32)


def fake_gpu_machine(monkeypatch, gpus: int) -> dict:
    """A machine with a GPU and a faiss build that reports `gpus` GPUs; `knn_gpu` counts its calls
    and answers with CPU FAISS (so a search through it still returns the right neighbours)."""
    import faiss

    calls = {"knn_gpu": 0, "resources": 0}

    def knn_gpu(res, queries, database, k):
        calls["knn_gpu"] += 1
        return faiss.knn(queries, database, k)

    def resources():
        calls["resources"] += 1
        return object()

    fake = types.SimpleNamespace(__version__="fake-gpu", knn=faiss.knn, omp_get_max_threads=faiss.omp_get_max_threads,
                                 omp_set_num_threads=faiss.omp_set_num_threads, get_num_gpus=lambda: gpus,
                                 knn_gpu=knn_gpu, StandardGpuResources=resources)
    monkeypatch.setitem(sys.modules, "faiss", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    monkeypatch.setattr(search_module, "_gpu_resources", None)
    monkeypatch.delenv("DDKIT_INDEX_ENGINE", raising=False)
    backend_module.reset_backend()
    return calls


@pytest.fixture(autouse=True)
def fresh_backends():
    backend_module.reset_backend()
    yield
    backend_module.reset_backend()


def test_device_cpu_never_touches_the_gpu_path(monkeypatch, data):
    x, q = data
    expected = index.knn(q, x, 5, device="cpu")  # before the fake GPU: the plain CPU answer
    calls = fake_gpu_machine(monkeypatch, gpus=1)
    b = index.backend("cpu")
    assert (b.device, b.library) == ("cpu", "faiss-cpu") and "GPU is present" in b.reason
    for engine in ("auto", "faiss", "torch"):
        d, i = index.knn(q, x, 5, device="cpu", engine=engine)
        np.testing.assert_array_equal(i, expected[1])
        np.testing.assert_allclose(d, expected[0], rtol=1e-5, atol=1e-5)
    index.kmeans(x, 4, seed=0, iterations=3, init="kmeans++", device="cpu")
    assert index.kcenter(x, 5, seed=1, device="cpu").kernel.endswith("on the CPU")
    index.near_duplicates(x, threshold=0.0, device=torch.device("cpu"))
    assert calls == {"knn_gpu": 0, "resources": 0}
    assert index.backend(None).library == "faiss-gpu"  # while "auto" means the GPU there


def test_device_cuda_uses_faiss_gpu_when_installed(monkeypatch, data):
    x, q = data
    expected = index.knn(q, x, 5, device="cpu")
    calls = fake_gpu_machine(monkeypatch, gpus=1)
    b = index.backend("cuda")
    assert (b.device, b.library) == ("cuda", "faiss-gpu") and b is index.backend(torch.device("cuda", 0))
    d, i = index.knn(q, x, 5, device="cuda")
    assert calls == {"knn_gpu": 1, "resources": 1}
    np.testing.assert_array_equal(i, expected[1])


def test_device_cuda_without_faiss_gpu_falls_back_to_torch_with_one_line(monkeypatch, capsys):
    fake_gpu_machine(monkeypatch, gpus=0)
    b = index.backend("cuda")
    assert (b.device, b.library, b.pinned_engine) == ("cuda", "torch-cuda", "torch")
    assert search_module.choose_engine(16, 5, 1 << 40, device="cuda") == "torch"
    index.backend("cuda")  # detected once: the message is not repeated
    err = capsys.readouterr().err
    assert err.count("faiss-gpu is not installed") == 1 and "pip install" in err and "Fake GPU" in err


def test_device_cuda_without_a_gpu_is_refused():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(InvalidInput, match="no GPU"):
        index.backend("cuda")
    with pytest.raises(InvalidInput, match="cpu or cuda"):
        index.backend("meta")


def test_callers_thread_the_run_device(monkeypatch, data):
    """The selectors, coresets and the contamination detector hand their device to the index: with a
    GPU 'present', device cpu keeps every pass on the CPU (a pass sent to the GPU would fail here)."""
    from ddkit.contamination import within
    from ddkit.selectors.acquisition import RULES, RoundState
    from ddkit.synth.coresets import KCenter

    x, _ = data
    calls = fake_gpu_machine(monkeypatch, gpus=1)
    with pytest.raises((AssertionError, RuntimeError)):  # the fake GPU cannot hold a tensor
        index.kcenter(x, 3, seed=0)
    probs = torch.softmax(torch.from_numpy(x[:, :4]), 1).numpy()
    state = RoundState(len(x), 4, np.arange(4), np.arange(4), 1, probs=probs, device=torch.device("cpu"))
    assert len(RULES.get("pcoreset").acquire(state, 6, seed=0).positions) == 6
    assert len(KCenter().choose(torch.from_numpy(x), 5, 0, device=torch.device("cpu"))) == 5
    images = np.random.default_rng(0).integers(0, 255, (12, 1, 16, 16), dtype=np.uint8)
    images[5] = images[2]
    group, keep, _ = within(images, device="cpu")
    assert group[5] == 2 and not keep[5]
    assert calls == {"knn_gpu": 0, "resources": 0}
