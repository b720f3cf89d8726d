"""The command line end to end on tiny data, and bad input through it: one clear message on
stderr, a non-zero exit code, no traceback, nothing half-written."""

import json

import h5py
import numpy as np
import pytest
import torch
from helpers import edit, run_cli as run

from ddkit.evaluate import get_protocol
from ddkit.registries import all_registries
from ddkit.store import DistilledDataset, DistilledSet, LogitsLabels, read_results, write_distilled


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DDKIT_PROGRESS", "0")


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    from ddkit.teachers import train_teacher

    path = tmp_path_factory.mktemp("cli-teacher") / "t.safetensors"
    train_teacher(path, "procedural", "convnet-bn", {"width": 8}, epochs=3, batch_size=32)
    return path


def test_list_prints_every_registry(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    for kind, registry in all_registries().items():
        assert f"{kind}:" in out
        for name in registry.names():
            assert name in out


def test_list_protocols_shows_the_imagenet_hard_label_partner(capsys):
    code, out, _ = run(capsys, "list", "protocols")
    assert code == 0 and "hard-imagenet@1" in out and "hard-label partner of teacher-/stored-imagenet@1" in out


def test_flow_synthesize_info_validate_show_evaluate(tmp_path, capsys, teacher_path):
    out_file = tmp_path / "rr.ddk.h5"
    code, out, err = run(capsys, "synthesize", "--method", "random-real", "--dataset", "procedural", "--teacher",
                         str(teacher_path), "--ipc", "4", "--out", str(out_file))
    assert code == 0, err
    with DistilledDataset(out_file) as ds:
        assert len(ds) == 40 and ds.header.method == "random-real"
        digest = ds.content_sha256
    code, out, _ = run(capsys, "info", str(out_file))
    assert code == 0 and "random-real" in out and "budget" in out
    code, out, _ = run(capsys, "info", str(out_file), "--json")
    assert json.loads(out)["budget"]["ipc_stored"] == 4
    code, out, _ = run(capsys, "validate", str(out_file), "--teacher", str(teacher_path))
    assert code == 0 and "OK" in out
    png = tmp_path / "grid.png"
    code, _, _ = run(capsys, "show", str(out_file), "--out", str(png))
    assert code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, err = run(capsys, "evaluate", str(out_file), "--protocol", "hard-cpu", "--seeds", "2", "--steps", "5",
                         "--no-full", "--json")
    assert code == 0, err
    card = json.loads(out)
    assert card["content_sha256"] == digest and len(card["result"]["accuracies"]) == 2
    assert card["random_baseline"]["ipc"] == 4
    results = read_results(out_file)
    assert len(results) == 1 and next(iter(results.values()))["result"]["accuracies"] == card["result"]["accuracies"]
    with DistilledDataset(out_file) as ds:
        assert ds.content_sha256 == digest, "writing a result card must not change the content hash"


def test_select_then_evaluate_selection(tmp_path, capsys):
    sel = tmp_path / "r.sel.h5"
    code, _, err = run(capsys, "select", "--method", "random", "--pool", "procedural", "--budget", "30", "--out", str(sel))
    assert code == 0, err
    code, out, err = run(capsys, "evaluate", str(sel), "--steps", "3", "--seeds", "1", "--no-full", "--json")
    assert code == 0, err
    card = json.loads(out)
    assert card["instances"] == 30 and card["random_baseline"]["ipc"] == 3


def test_stored_protocol_with_logits_payload_and_matching_baseline(tmp_path, capsys, teacher_path):
    """A file with static logits trains under `stored-cpu`; its random baseline gets static logits
    from the same teacher, and a different teacher is refused."""
    from ddkit.data import load_dataset
    from ddkit.data.base import class_balanced_indices
    from ddkit.models.teacher import load_teacher
    from ddkit.training import predict_logits

    source = load_dataset("procedural")
    teacher = load_teacher(teacher_path)
    part = source.subset(class_balanced_indices(source, 3, 0))
    logits = predict_logits(teacher.model, part.normalized())
    dset = DistilledSet.from_source(source, method="static-logits-test", method_version="1", config={}, seed=0,
                                    images=part.images, labels=part.labels, ipc=3, teachers=[teacher.header.summary()],
                                    soft={"logits": LogitsLabels(logits.numpy())})
    path = tmp_path / "soft.ddk.h5"
    write_distilled(path, dset)
    code, out, err = run(capsys, "evaluate", str(path), "--protocol", "stored-cpu", "--teacher", str(teacher_path),
                         "--steps", "4", "--seeds", "2", "--no-full", "--json")
    assert code == 0, err
    card = json.loads(out)
    assert card["protocol"]["label_source"] == "stored" and card["random_baseline"]["accuracies"]
    # A hard-label file under a stored protocol is refused clearly.
    plain = tmp_path / "plain.ddk.h5"
    run(capsys, "synthesize", "--dataset", "procedural", "--ipc", "2", "--out", str(plain))
    code, _, err = run(capsys, "evaluate", str(plain), "--protocol", "stored-cpu", "--steps", "2", "--seeds", "1")
    assert code == 2 and "no stored label payload" in err


# -- bad input ------------------------------------------------------------------------------


def test_missing_dataset_offline(capsys, tmp_path, monkeypatch):
    import ddkit.data.fashion_mnist as fm

    monkeypatch.setattr(fm, "search_folders", lambda: [tmp_path / "nothing"])

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(fm, "download", offline)
    code, _, err = run(capsys, "synthesize", "--dataset", "fashion-mnist", "--ipc", "1", "--out", str(tmp_path / "x.ddk.h5"))
    assert code == 2
    assert "apt-get install dataset-fashion-mnist" in err and "DDKIT_DATA" in err and "Traceback" not in err
    assert not (tmp_path / "x.ddk.h5").exists()


@pytest.mark.parametrize("damage", ["truncated", "random-bytes", "foreign-hdf5", "newer-schema"])
def test_damaged_files_are_refused(capsys, tmp_path, damage):
    good = tmp_path / "good.ddk.h5"
    run(capsys, "synthesize", "--dataset", "procedural", "--ipc", "2", "--out", str(good))
    bad = tmp_path / "bad.ddk.h5"
    if damage == "truncated":
        data = good.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "random-bytes":
        bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif damage == "foreign-hdf5":
        with h5py.File(bad, "w") as f:
            f["x"] = np.zeros(3)
    else:
        bad.write_bytes(good.read_bytes())
        with edit(bad) as f:
            f.attrs["schema"] = 99
    for verb in (["info"], ["validate"], ["evaluate", "--steps", "1", "--seeds", "1"]):
        code, _, err = run(capsys, *verb, str(bad))
        assert code == 2 if verb != ["validate"] else code != 0, (verb, err)
        assert "Traceback" not in err
        if verb == ["info"]:
            expected = {"truncated": "HDF5", "random-bytes": "HDF5", "foreign-hdf5": "not a ddkit", "newer-schema": "schema 99"}
            assert expected[damage] in err, err


def test_existing_output_needs_overwrite(capsys, tmp_path):
    out = tmp_path / "x.ddk.h5"
    assert run(capsys, "synthesize", "--dataset", "procedural", "--ipc", "1", "--out", str(out))[0] == 0
    before = out.read_bytes()
    code, _, err = run(capsys, "synthesize", "--dataset", "procedural", "--ipc", "2", "--out", str(out))
    assert code == 2 and "--overwrite" in err and out.read_bytes() == before
    assert run(capsys, "synthesize", "--dataset", "procedural", "--ipc", "2", "--out", str(out), "--overwrite")[0] == 0


def test_teacher_of_other_dataset_refused(capsys, tmp_path, teacher_path):
    code, _, err = run(capsys, "synthesize", "--dataset", "fashion-mnist-mini", "--teacher", str(teacher_path),
                       "--ipc", "1", "--out", str(tmp_path / "x.ddk.h5"))
    assert code == 2 and "inputs of shape" in err and not (tmp_path / "x.ddk.h5").exists()


def test_unknown_names_and_options(capsys, tmp_path):
    code, _, err = run(capsys, "synthesize", "--method", "infr", "--ipc", "1", "--out", str(tmp_path / "x.ddk.h5"))
    assert code == 2 and "unknown synthesizer" in err
    code, _, err = run(capsys, "synthesize", "--dataset", "procedural", "--config", "nonsense=1", "--ipc", "1",
                       "--out", str(tmp_path / "x.ddk.h5"))
    assert code == 2 and "no option nonsense" in err
    code, _, err = run(capsys, "evaluate", "random:procedural:1", "--protocol", "nope")
    assert code == 2 and "unknown protocol" in err


def test_nan_images_refused_and_nothing_written(tmp_path):
    from ddkit.data import load_dataset
    from ddkit.errors import InvalidInput

    source = load_dataset("procedural")
    images = torch.rand(10, 1, 16, 16)
    images[3, 0, 2, 2] = float("nan")
    dset = DistilledSet.from_source(source, method="x", method_version="1", config={}, seed=0, images=images,
                                    labels=torch.arange(10), ipc=1)
    with pytest.raises(InvalidInput, match="NaN"):
        write_distilled(tmp_path / "nan.ddk.h5", dset)
    assert list(tmp_path.iterdir()) == []


def test_quickstart_runs_end_to_end(capsys, tmp_path):
    """The README's main job, shrunk: teacher → DM file → info → show → evaluate."""
    work = tmp_path / "qs"
    code, out, err = run(capsys, "quickstart", "--workdir", str(work), "--dataset", "procedural", "--ipc", "2",
                         "--epochs", "1", "--steps", "3", "--iterations", "2")
    assert code == 0, err
    for name in ("teacher.safetensors", "dm-ipc2.ddk.h5", "dm-ipc2.png"):
        assert (work / name).is_file()
    assert "gain over random" in out and "[5/5]" in out
    assert "--protocol hard-cpu@1" in out and "comparable only under the same NAME@VERSION" in out  # the version, stated


def test_evaluate_reports_dd_ranking_scores_and_writes_the_hard_label_card(tmp_path, capsys, teacher_path):
    """A soft-label evaluation also trains the set under its hard-label partner (HLR needs it), writes
    that card too, and prints HLR / IOR / LRS computed from the per-seed accuracies."""
    out_file = tmp_path / "rr.ddk.h5"
    code, _, err = run(capsys, "synthesize", "--method", "random-real", "--dataset", "procedural", "--teacher",
                       str(teacher_path), "--ipc", "3", "--out", str(out_file))
    assert code == 0, err
    code, out, err = run(capsys, "evaluate", str(out_file), "--protocol", "teacher-cpu@2", "--seeds", "2", "--steps", "3",
                         "--teacher", str(teacher_path), "--json")
    assert code == 0, err
    card = json.loads(out)
    ranking = card["ranking"]
    assert ranking["hard_protocol"] == "hard-cpu[epochs=0,steps=3]@2" and ranking["weight"] == 0.5
    results = read_results(out_file)
    hard = next(c for name, c in results.items() if name.startswith("hard-cpu"))
    expected_hlr = [f - s for f, s in zip(hard["full_data"]["accuracies"], hard["result"]["accuracies"])]
    assert ranking["hlr"]["per_seed"] == pytest.approx(expected_hlr)
    expected_ior = [s - r for s, r in zip(card["result"]["accuracies"], card["random_baseline"]["accuracies"])]
    assert ranking["ior"]["per_seed"] == pytest.approx(expected_ior)
    assert all(0.0 <= v <= 1.0 for v in ranking["lrs"]["per_seed"])
    code, out, _ = run(capsys, "evaluate", str(out_file), "--protocol", "teacher-cpu@2", "--seeds", "2", "--steps", "3",
                       "--teacher", str(teacher_path))
    assert code == 0 and "DD-Ranking: HLR" in out and "IOR" in out and "LRS" in out
    code, out, _ = run(capsys, "info", str(out_file))
    row = next(line for line in out.splitlines() if "teacher-cpu[epochs=0,steps=3]@2" in line)
    assert code == 0 and "HLR" in out and f"{100 * ranking['lrs']['mean']:.2f}" in row


def test_a_stored_hard_label_card_is_reused_for_hlr_only_when_it_matches(tmp_path, capsys, teacher_path):
    from ddkit.evaluate.api import _stored_hard_arms
    from ddkit.evaluate.sources import resolve_train_set
    from ddkit.store import add_result

    out_file = tmp_path / "rr.ddk.h5"
    code, _, err = run(capsys, "synthesize", "--method", "random-real", "--dataset", "procedural", "--ipc", "2",
                       "--out", str(out_file))
    assert code == 0, err
    source = resolve_train_set(str(out_file), get_protocol("hard-cpu@2"), [])
    assert _stored_hard_arms("hard-cpu@2", source, [0, 1]) is None
    card = {"content_sha256": source.content_sha256, "seeds": [1, 0, 2], "protocol": {"id": "hard-cpu@2"},
            "result": {"accuracies": [0.5, 0.4, 0.6]}, "full_data": {"accuracies": [0.9, 0.8, 0.7]}}
    add_result(out_file, "hard-cpu@2", card)
    assert _stored_hard_arms("hard-cpu@2", source, [0, 1]) == ([0.4, 0.5], [0.8, 0.9])
    assert _stored_hard_arms("hard-cpu@2", source, [0, 3]) is None  # seed 3 was never trained
    assert _stored_hard_arms("hard-cpu@1", source, [0, 1]) is None  # another version is never used
