"""The contracts of docs/design.md, run over every registered synthesizer and selector on tiny
procedural data: a newly registered method is tested here without anyone writing a test for it.

A synthesizer's file must validate, load, name its method and carry its resolved config; a
selector's file must keep unique ids of the pool, at most the budget, under the pool's fingerprint.
"""

import dataclasses

import numpy as np
import pytest
from helpers import one_thread  # noqa: F401 (one_thread: autouse)

from ddkit.data import load_dataset
from ddkit.experts import ExpertTraining, train_experts
from ddkit.models import create_model
from ddkit.models.teacher import save_teacher
from ddkit.selectors import SELECTORS, run_selector
from ddkit.store import DistilledDataset, read_selection, validate_file
from ddkit.store.selection import pool_record
from ddkit.synth import SYNTHESIZERS, run_synthesizer

# The smallest settings that still run each method end to end; a method not named here runs with
# its defaults (give it an entry when they are slow).
TINY = {
    "infer": {"iterations": 3},
    "nrr-dd": {"mipc": 12, "num_crop": 3, "iterations": 4, "refine": True},  # stage 2 on (off by default)
    "kd3": {"epochs": 2, "batch_size": 32, "student": "convnet-bn", "student_width": 4, "augmentation": "none",
            "tau": 0.1},
    "dm": {"iterations": 2, "batch_real": 4, "net_options": "depth=2,width=4,norm=instance"},
    "mtt": {"iterations": 2, "syn_steps": 2, "max_start_epoch": 1, "expert_epochs": 1},  # + the experts file
}
ACTIVE = {"width": 4, "depth": 2, "steps_per_label": 0.5, "min_steps": 3, "batch_size": 16}
IPC = 2  # images per class of the synthesizers (INFER needs 2 to keep a real image per class)
BUDGET = 10  # samples kept by the selectors (a multiple of the 10 classes)


def _tiny(name: str) -> dict:
    if name in TINY:
        return TINY[name]
    config = SELECTORS.get(name).Config if name in SELECTORS else None
    fields = getattr(config, "__dataclass_fields__", {})
    return {k: v for k, v in ACTIVE.items() if k in fields}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """An untrained BatchNorm teacher with global average pooling: every method accepts it."""
    data = load_dataset("procedural", "train")
    path = tmp_path_factory.mktemp("contracts") / "teacher.safetensors"
    save_teacher(path, create_model("convnet-bn", 1, 16, 10, seed=0, width=8).eval(), data.info)
    return str(path)


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    """A tiny expert buffer for methods that match trajectories (mtt)."""
    out = tmp_path_factory.mktemp("contracts-experts") / "p.experts.h5"
    train_experts(out, "procedural", "convnet", {"width": 4, "depth": 2}, 1, ExpertTraining(epochs=2, batch_size=128))
    return str(out)


@pytest.mark.parametrize("name", SYNTHESIZERS.names())
def test_synthesizer_contract(name, teacher, tmp_path, request):
    out = tmp_path / f"{name}.ddk.h5"
    method, config = SYNTHESIZERS.get(name), dict(_tiny(name))
    if "experts" in {f.name for f in dataclasses.fields(method.Config)}:
        config["experts"] = request.getfixturevalue("experts")
    teachers = [teacher] if method.max_teachers is None or method.max_teachers >= 1 else []  # mtt takes none
    digest = run_synthesizer(name, "procedural", teachers, IPC, config, seed=0, out=out)
    report = validate_file(out, num_classes=10, image_shape=(1, 16, 16))
    assert report.ok, report.problems
    with DistilledDataset(out) as ds:
        assert ds.header.method == name and ds.content_sha256 == digest
        assert ds.header.budget.ipc_stored == IPC and len(ds) >= 10 * IPC
        assert set(_tiny(name)) <= set(ds.header.config), "the resolved config is stored whole"
        labels = np.asarray([int(ds[i][1]) for i in range(len(ds))])
        assert labels.min() >= 0 and labels.max() < 10
        image = ds[0][0]
        assert tuple(image.shape) == (1, 16, 16)


@pytest.mark.parametrize("name", SELECTORS.names())
def test_selector_contract(name, teacher, tmp_path):
    pool = load_dataset("procedural", "train")
    out = tmp_path / f"{name}.sel.h5"
    run_selector(name, "procedural", [teacher], BUDGET, _tiny(name), seed=0, out=out)
    sel = read_selection(out)
    assert sel.method == name
    assert 1 <= len(sel) <= BUDGET and len(np.unique(sel.ids)) == len(sel)
    assert np.isin(sel.ids, pool.ids.numpy()).all(), "ids are the pool's sample ids"
    assert sel.pool["fingerprint"] == pool_record(pool)["fingerprint"]
    assert len(sel.score) == len(sel.rank) == len(sel.round) == len(sel)
