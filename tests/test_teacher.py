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
