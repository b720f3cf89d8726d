"""Teacher files: training writes a complete header, loading never unpickles and checks the hash,
and a teacher that does not fit a dataset is refused with a clear message."""

import json

import pytest
import torch
from safetensors.torch import save_file

from ddkit.data import dataset_info, load_dataset
from ddkit.errors import FileFormatError, IncompatibleError, OutputExists
from ddkit.models import create_model
from ddkit.models.teacher import load_teacher, read_teacher_header, save_teacher
from ddkit.teachers import evaluate_teacher, train_teacher


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "t.safetensors"
    result = train_teacher(path, "procedural", "convnet-bn", {"width": 8}, epochs=3, batch_size=32, seed=0)
    return path, result


def test_train_writes_header_with_accuracies(trained):
    path, result = trained
    h = read_teacher_header(path)
    assert h.arch == "convnet-bn" and h.arch_kwargs == {"width": 8}
    assert h.dataset == "procedural" and h.num_classes == 10 and h.input_shape == (1, 16, 16)
    assert h.normalization == load_dataset("procedural").info.normalization.to_dict()
    assert 0.0 <= h.val_accuracy <= 1.0 and 0.0 <= h.test_accuracy <= 1.0
    assert h.test_accuracy > 0.3, "a tiny net should learn the procedural set well above chance"
    assert len(h.tensors_sha256) == 64 and h.train["epochs"] == 3


def test_load_rebuilds_same_predictions(trained):
    path, _ = trained
    teacher = load_teacher(path)
    result = evaluate_teacher(path)
    assert result["accuracy"] == pytest.approx(read_teacher_header(path).test_accuracy)
    assert not teacher.model.training
    assert all(not p.requires_grad for p in teacher.model.parameters())


def test_training_is_deterministic(tmp_path, trained):
    path, _ = trained
    again = tmp_path / "again.safetensors"
    train_teacher(again, "procedural", "convnet-bn", {"width": 8}, epochs=3, batch_size=32, seed=0)
    assert read_teacher_header(again).tensors_sha256 == read_teacher_header(path).tensors_sha256


def test_existing_output_refused(trained):
    path, _ = trained
    with pytest.raises(OutputExists, match="--overwrite"):
        train_teacher(path, "procedural", "convnet-bn", {"width": 8}, epochs=1)


def test_mismatched_teacher_refused(tmp_path):
    info = dataset_info("procedural")
    model = create_model("convnet-bn", 1, 16, 5, width=8)  # 5 classes, the dataset has 10
    fake = type(info)(info.name, info.class_names[:5], info.image_shape, info.normalization)
    path = tmp_path / "five.safetensors"
    save_teacher(path, model, fake)
    with pytest.raises(IncompatibleError, match="predicts 5 classes but dataset procedural has 10"):
        load_teacher(path).check_fits(info)
    rgb = load_dataset("procedural:3").info
    model3 = create_model("convnet-bn", 1, 16, 10, width=8)
    path3 = tmp_path / "gray.safetensors"
    save_teacher(path3, model3, info)
    with pytest.raises(IncompatibleError, match="inputs of shape"):
        load_teacher(path3).check_fits(rgb)


def test_teacher_without_batchnorm_refused_where_needed(tmp_path):
    info = dataset_info("procedural")
    path = tmp_path / "in.safetensors"
    save_teacher(path, create_model("convnet", 1, 16, 10, width=8), info)
    with pytest.raises(IncompatibleError, match="no BatchNorm"):
        load_teacher(path).require_batchnorm()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no-header", "tensor-bytes", "newer-schema", "edited-header"])
def test_damaged_teacher_files_refused(tmp_path, trained, damage):
    src, _ = trained
    path = tmp_path / "bad.safetensors"
    data = src.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00\x01not a safetensors file" * 10)
    elif damage == "no-header":
        save_file({"w": torch.zeros(3)}, str(path))
    elif damage == "tensor-bytes":
        blob = bytearray(data)
        blob[-5] ^= 0xFF
        path.write_bytes(bytes(blob))
    elif damage == "edited-header":
        assert b"procedural" in data
        path.write_bytes(data.replace(b"procedural", b"procedurax", 1))
    else:
        state = load_teacher(src).model.state_dict()
        header = json.loads(__import__("safetensors").safe_open(str(src), "pt").metadata()["ddkit"])
        header["schema"] = 99
        text = json.dumps(header)
        save_file({k: v.contiguous() for k, v in state.items()}, str(path),
                  metadata={"ddkit": text, "ddkit_sha256": __import__("hashlib").sha256(text.encode()).hexdigest()})
    with pytest.raises(FileFormatError) as err:
        load_teacher(path)
    assert str(path) in str(err.value)


class _Boom:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_import_foreign_checkpoint_weights_only(tmp_path, trained):
    src, _ = trained
    model = load_teacher(src).model
    ckpt = tmp_path / "foreign.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    from ddkit.teachers import import_teacher

    out = tmp_path / "imported.safetensors"
    h = import_teacher(ckpt, out, "procedural", "convnet-bn", {"width": 8})
    assert h.train["loader"] == "torch.load(weights_only=True)"
    assert h.tensors_sha256 == read_teacher_header(src).tensors_sha256
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": _Boom()}, evil)
    with pytest.raises(FileFormatError, match="weights_only=True"):
        import_teacher(evil, tmp_path / "x.safetensors", "procedural", "convnet-bn", {"width": 8})
    assert not (tmp_path / "x.safetensors").exists()


# -- ImageNet-style teachers: torchvision checkpoints as released, through `ddkit teacher import` ----
TV_BUILDERS = {"tv-resnet18": "resnet18", "tv-mobilenet-v2": "mobilenet_v2", "tv-efficientnet-b0": "efficientnet_b0"}
CLASSES = ["zebra", "apple", "mango"]


@pytest.fixture(scope="module")
def folder32(tmp_path_factory, make_imagefolder):
    """A 3-class RGB image folder at 32×32 (ImageNet-style nets need no more to run)."""
    from ddkit.data.imagefolder import write_class_map

    root = make_imagefolder(tmp_path_factory.mktemp("folder32"), CLASSES, {"train": 2, "test": 2}, size=(32, 32))
    write_class_map(root, CLASSES)
    return f"imagefolder:{root}"


def _torchvision(name, num_classes=3, seed=0):
    import torchvision

    torch.manual_seed(seed)
    return getattr(torchvision.models, TV_BUILDERS[name])(weights=None, num_classes=num_classes).eval()


def _import(capsys, *args):
    from helpers import run_cli

    return run_cli(capsys, "teacher", "import", *args)


@pytest.mark.parametrize("name", sorted(TV_BUILDERS))
def test_torchvision_checkpoint_imports_as_released(tmp_path, capsys, folder32, name):
    """A randomly initialised torchvision net saved the way the released weights are (a plain state
    dict) imports with its source and sha256 recorded, and the teacher is that net exactly."""
    import hashlib

    net = _torchvision(name)
    ckpt = tmp_path / f"{name}.pth"
    torch.save(net.state_dict(), ckpt)
    out = tmp_path / "t.safetensors"
    url = f"https://example.org/weights/{name}.pth"
    code, stdout, stderr = _import(capsys, ckpt, "--model", name, "--dataset", folder32, "--source", url, "--out", out)
    assert code == 0, stderr
    h = read_teacher_header(out)
    assert h.train["source"] == url and h.train["imported_from"] == ckpt.name
    assert h.train["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest() in stdout
    assert h.train["loader"] == "torch.load(weights_only=True)" and h.arch == name and h.input_shape == (3, 32, 32)
    teacher = load_teacher(out)
    for key, value in net.state_dict().items():
        assert torch.equal(teacher.model.state_dict()[key], value), key
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(teacher.model(x), net(x))


def test_training_checkpoint_wrappers_and_ema_load(tmp_path, capsys, folder32):
    """A training script's checkpoint: weights under "model" behind DDP's `module.`, the script's argparse
    args beside them, and EMA weights (AveragedModel: `module.` + `n_averaged`) taken when named."""
    import argparse

    plain, ema = _torchvision("tv-mobilenet-v2", seed=1), _torchvision("tv-mobilenet-v2", seed=2)
    ckpt = tmp_path / "checkpoint.pth"
    torch.save({"model": {f"module.{k}": v for k, v in plain.state_dict().items()}, "epoch": 89,
                "args": argparse.Namespace(lr=0.1, model="mobilenet_v2"),
                "model_ema": {"n_averaged": torch.tensor(5), **{f"module.{k}": v for k, v in ema.state_dict().items()}}}, ckpt)
    for key, expected in ((None, plain), ("model_ema", ema)):
        out = tmp_path / f"{key}.safetensors"
        code, _, stderr = _import(capsys, ckpt, "--model", "tv-mobilenet-v2", "--dataset", folder32, "--out", out,
                                  *(["--checkpoint-key", key] if key else []))
        assert code == 0, stderr
        h = read_teacher_header(out)
        assert (h.train["entry"], h.train["prefix_removed"], h.train["source"]) == (key or "model", "module.", ckpt.name)
        got = load_teacher(out).model.state_dict()
        assert all(torch.equal(got[k], v) for k, v in expected.state_dict().items())


def test_checkpoint_classes_keep_the_dataset_rows(tmp_path, capsys, folder32):
    """A 10-class checkpoint for a 3-class dataset: refused with the fix named, then imported with the
    checkpoint's class names, keeping the rows of the dataset's classes in the dataset's order."""
    net = _torchvision("tv-resnet18", num_classes=10)
    ckpt = tmp_path / "ten.pth"
    torch.save(net.state_dict(), ckpt)
    out = tmp_path / "t.safetensors"
    code, _, stderr = _import(capsys, ckpt, "--model", "tv-resnet18", "--dataset", folder32, "--out", out)
    assert code == 2 and "predicts 10 classes but the dataset has 3" in stderr and "--checkpoint-classes" in stderr
    assert not out.exists()
    names = [f"c{i}" for i in range(10)]
    names[7], names[2], names[4] = CLASSES
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    code, _, stderr = _import(capsys, ckpt, "--model", "tv-resnet18", "--dataset", folder32, "--out", out,
                              "--checkpoint-classes", tmp_path / "names.txt")
    assert code == 0, stderr
    fc = load_teacher(out).model.state_dict()
    torch.testing.assert_close(fc["fc.weight"], net.fc.weight[[7, 2, 4]])
    torch.testing.assert_close(fc["fc.bias"], net.fc.bias[[7, 2, 4]])
    (tmp_path / "other.json").write_text(json.dumps([f"c{i}" for i in range(10)]))
    code, _, stderr = _import(capsys, ckpt, "--model", "tv-resnet18", "--dataset", folder32, "--out", tmp_path / "x.safetensors",
                              "--checkpoint-classes", tmp_path / "other.json")
    assert code == 2 and "3 of the dataset's classes are not among the checkpoint's: zebra, apple, mango" in stderr


class _Marker:
    """A pickle whose loading would create a file: proof that nothing in a checkpoint runs."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_misfit_checkpoints_give_one_clear_error(tmp_path, capsys, folder32):
    resnet = tmp_path / "resnet.pth"
    torch.save(_torchvision("tv-resnet18").state_dict(), resnet)
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": _torchvision("tv-mobilenet-v2").state_dict(), "hook": _Marker(tmp_path / "ran")}, evil)
    cases = [
        (resnet, "tv-mobilenet-v2", "is not a tv-mobilenet-v2 state dict", "--model"),
        (evil, "tv-mobilenet-v2", "cannot be loaded with torch.load(weights_only=True)", "nothing in a checkpoint is executed"),
    ]
    for ckpt, model, problem, fix in cases:
        out = tmp_path / "t.safetensors"
        code, _, stderr = _import(capsys, ckpt, "--model", model, "--dataset", folder32, "--out", out)
        assert code == 2 and problem in stderr and fix in stderr and "Traceback" not in stderr, stderr
        assert not out.exists()
    assert not (tmp_path / "ran").exists()
    gray = load_dataset("procedural").info  # one input channel: the stem's shape says so
    code, _, stderr = _import(capsys, resnet, "--model", "tv-resnet18", "--dataset", "procedural", "--out", tmp_path / "g.safetensors")
    assert code == 2 and "conv1.weight: checkpoint (64, 3, 7, 7) vs model (64, 1, 7, 7)" in stderr and gray.image_shape[0] == 1


@pytest.mark.parametrize("protocol", ["teacher-imagenet", "stored-imagenet"])
def test_imported_teacher_teaches_a_torchvision_student_on_an_image_folder(tmp_path, capsys, folder32, protocol):
    """The ImageNet-style protocols run end to end on an image folder: a torchvision teacher imported
    as released labels (on the fly, or as stored logits) a torchvision ResNet-18 student."""
    from ddkit.evaluate import evaluate, get_protocol

    ckpt, teacher = tmp_path / "t.pth", tmp_path / "t.safetensors"
    torch.save(_torchvision("tv-mobilenet-v2").state_dict(), ckpt)
    assert _import(capsys, ckpt, "--model", "tv-mobilenet-v2", "--dataset", folder32, "--out", teacher)[0] == 0
    card = evaluate(f"random:{folder32}:1", protocol, seeds=[0], teachers=[str(teacher)], steps=2, baseline=False,
                    full_reference=False, write_card=False, ranking=False)
    assert card.protocol["student"] == get_protocol(protocol).student == "tv-resnet18"
    assert card.protocol["augmentation"] == get_protocol(protocol).augmentation and len(card.result.accuracies) == 1
    assert 0.0 <= card.result.accuracies[0] <= 1.0
