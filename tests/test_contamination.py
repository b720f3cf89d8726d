"""The contamination detector and `validate --against`: every perturbation of the suite is a seeded,
shape-keeping edit; planted copies of TEST images (exact, mirrored, shifted, brighter) are found with
the right source while distinct images are not; distilled files (stored images, composite bases and
recorded real sources), selections and pools are checked and the result recorded and shown by
`ddkit info`; bad input gets one clear error before any search."""

import numpy as np
import pytest
import torch
from helpers import one_thread, run_cli  # noqa: F401 (one_thread: autouse)

from ddkit.contamination import PERTURBATIONS, Detector, check_file, parse_against, perturb, suite_kinds, within
from ddkit.data import load_dataset
from ddkit.data.poolfile import load_pool, read_dedup_record
from ddkit.errors import FileFormatError, IncompatibleError, InvalidInput
from ddkit.pools.build import PoolPart, build_pool, dataset_part
from ddkit.pools.dedup import DROP_TEST, dedup_pool
from ddkit.store import AdditiveComposite, DistilledSet, info_dict, read_results, write_distilled

MINI = "fashion-mnist-mini"
PLANTED = ("exact", "flip", "shift", "brightness")  # the edits the calibrated detector catches ~always


@pytest.fixture(scope="module")
def mini():
    return load_dataset(MINI, "train"), load_dataset(MINI, "test")


@pytest.mark.parametrize("kind", PERTURBATIONS.names())
def test_every_perturbation_is_seeded_and_keeps_shape(kind, mini):
    x = mini[1].images[:6].numpy()
    a, b = perturb(x, kind, 3), perturb(x, kind, 3)
    assert a.dtype == np.uint8 and a.shape == x.shape
    np.testing.assert_array_equal(a, b)
    assert (np.array_equal(a, x)) == (kind == "exact"), "only `exact` leaves the pixels as they were"
    assert set(suite_kinds()) == set(PERTURBATIONS.names())


def test_planted_copies_are_found_with_their_source_and_distinct_images_are_not(mini):
    train, test = mini
    refs = test.images[:400].numpy()
    sources = np.arange(0, 400, 25)  # 16 test images
    copies = np.concatenate([perturb(refs[sources], kind, 0) for kind in PLANTED])
    clean = train.images[:300].numpy()
    m = Detector(refs).match(np.concatenate([copies, clean]))
    found = m.flagged[: len(copies)]
    assert found.all(), f"missed copies: {np.flatnonzero(~found)}"
    np.testing.assert_array_equal(m.reference[: len(copies)], np.tile(sources, len(PLANTED)))
    assert m.exact[: len(sources)].all() and not m.exact[len(sources):len(copies)].any()
    assert m.flipped[len(sources):2 * len(sources)].all(), "a mirrored copy matches its source's mirror image"
    assert m.flagged[len(copies):].mean() <= 0.02, "distinct train images are (nearly) never flagged"


def test_within_groups_copies_inside_one_set(mini):
    x = mini[0].images[:60].numpy()
    x = np.concatenate([x, x[[3, 7]], perturb(x[[5]], "shift", 0)])
    group, keep, _ = within(x)
    assert group[60] == 3 and group[61] == 7 and group[62] == 5 and not keep[60:].any()
    assert keep[:60].sum() >= 58


def _contaminated_distilled(path, train, test, composite=False):
    """A random-real-like file: 10 train images and 2 test images stored; real sources recorded."""
    images = torch.cat([train.images[:10], test.images[[4, 9]]])
    labels = torch.cat([train.labels[:10], test.labels[[4, 9]]])
    comp = AdditiveComposite(np.full((1, 1, 28, 28), 0.01, np.float32), np.array([[0, 11]])) if composite else None
    dset = DistilledSet.from_source(train, method="random-real", method_version="1", seed=0, images=images,
                                    labels=labels, ipc=2, composite=comp,
                                    config={"source_ids": train.ids[20:30].tolist()})
    write_distilled(path, dset)
    return path


def test_distilled_file_is_checked_recorded_and_shown(tmp_path, mini):
    train, test = mini
    path = _contaminated_distilled(tmp_path / "d.ddk.h5", train, test, composite=True)
    report = check_file(path, MINI)
    parts = {p.name: p for p in report.parts}
    stored = dict(zip(parts["stored images"].flagged_ids, parts["stored images"].matched_ids))
    # train image 6 of the mini set has a genuine near-duplicate in its test split (see BENCHMARKS contamination)
    assert stored[10] == int(test.ids[4]) and stored[11] == int(test.ids[9]) and set(stored) <= {6, 10, 11}
    assert parts["composed instances"].flagged_ids == [13], "the instance composed from base 11 is flagged"
    assert parts[f"real sources ({MINI}:train)"].checked == 10
    assert report.against == f"{MINI}:test" and report.detector.startswith("descriptor-2")  # the default
    card = read_results(path)["contamination"]
    assert card["flagged"] == report.flagged and card["parts"]["stored images"]["flagged_ids"] == list(stored)
    info = info_dict(path)
    assert info["contamination"]["detector"] == report.detector and "contamination" not in info["results"]


def test_real_sources_are_checked_by_their_pixels(tmp_path, mini):
    """A synthesized image far from any test image still counts when its recorded source copies one."""
    train, test = mini
    leaky = load_dataset(MINI, "train")
    leaky.images = leaky.images.clone()
    leaky.images[25] = test.images[7]  # the source dataset itself holds a test image
    from ddkit.contamination import check as check_module

    synthetic = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    dset = DistilledSet.from_source(train, method="dm", method_version="1", seed=0, images=synthetic,
                                    labels=train.labels[:4], ipc=1, config={"init_source_ids": train.ids[23:27].tolist()})
    path = tmp_path / "dm.ddk.h5"
    write_distilled(path, dset)
    real = check_module.load_dataset
    check_module.load_dataset = lambda name, split: leaky if (name, split) == (MINI, "train") else real(name, split)
    try:
        report = check_file(path, MINI, record=False)
    finally:
        check_module.load_dataset = real
    parts = {p.name: p for p in report.parts}
    assert parts["stored images"].flagged == 0
    assert parts[f"real sources ({MINI}:train)"].flagged_ids == [int(train.ids[25])]
    assert "contamination" not in read_results(path), "record=False writes nothing"


def test_cli_validate_against_pool_and_dedup_default(tmp_path, mini, capsys):
    train, test = mini
    path = tmp_path / "p.pool.h5"
    copies = torch.from_numpy(perturb(test.images[:5].numpy(), "shift", 1))
    build_pool(path, [dataset_part(train.subset(np.arange(7, 207)), "clean"), PoolPart("leak", copies)], train.info)
    code, out, err = run_cli(capsys, "validate", path, "--against", MINI)
    assert code == 1 and "5 of 205 flagged" in out, out + err
    code, out, err = run_cli(capsys, "info", path)
    assert code == 0 and "leakage     5 flagged against" in out, out + err
    from ddkit.store import Selection, pool_record, write_selection

    sel = tmp_path / "s.sel.h5"
    write_selection(sel, Selection("random", "1", {}, 0, pool_record(load_pool(path), f"pool:{path}"), [3, 202, 50, 204]))
    with pytest.raises(InvalidInput, match="path named inside the file"):  # issue 19: never opened from the file
        check_file(sel, MINI)
    report = check_file(sel, MINI, source=f"pool:{path}")
    assert report.parts[0].name == "selected samples" and sorted(report.parts[0].flagged_ids) == [202, 204]
    assert info_dict(sel)["contamination"]["flagged"] == 2
    clean = tmp_path / "c.pool.h5"
    report = dedup_pool(path, None, clean, test_dataset=MINI)
    record = read_dedup_record(clean)
    assert sorted(record["dropped_ids"][record["reason"] == DROP_TEST].tolist()) == list(range(200, 205))
    assert report["detector"].startswith("descriptor-2") and len(load_pool(clean)) == 200 - report["dropped_in_pool_duplicates"]
    code, out, err = run_cli(capsys, "validate", clean, "--against", MINI)
    assert code == 0 and "clean" in out, out + err


def test_bad_input_is_refused_before_any_search(tmp_path, mini):
    train, test = mini
    with pytest.raises(IncompatibleError, match="shape"):
        Detector(test.images[:50]).match(torch.zeros(2, 3, 28, 28, dtype=torch.uint8))
    proc = load_dataset("procedural", "train")
    path = tmp_path / "proc.pool.h5"
    build_pool(path, [dataset_part(proc)], proc.info)
    with pytest.raises(IncompatibleError, match="size or channel|sizes or channel"):
        check_file(path, MINI, record=False)
    damaged = _contaminated_distilled(tmp_path / "bad.ddk.h5", train, test)
    data = bytearray(damaged.read_bytes())
    data[-100] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(FileFormatError, match="damaged"):
        check_file(damaged, MINI)
    assert parse_against("pool:/x/y.pool.h5:train") == ("pool:/x/y.pool.h5", "train")
    assert parse_against("fashion-mnist") == ("fashion-mnist", "test")
    from ddkit.errors import DdkitError

    with pytest.raises(DdkitError, match="imagefolder"):
        check_file(path, f"imagefolder:{tmp_path / 'nothing'}", record=False)
