# ruff: noqa: E402, E702, I001  -- ddranking is imported after the environment it needs is set, and patched from outside
"""Cross-check ddkit's LRS against the official ddranking 0.2.0 LabelRobustScoreHard
on Fashion-MNIST (not supported upstream), by monkeypatching ddranking from outside
the package (nothing in site-packages is edited).

Patches (all in this script):
  * hard_label.get_dataset   -> Fashion-MNIST train/test as ddranking TensorDatasets,
                                normalized with mean 0.2860 / std 0.3530, 1x28x28.
  * hard_label.build_model   -> ddranking's own get_convnet(..., channel=1, im_size=(28,28))
                                (upstream build_model hard-codes channel=3); width 128, instancenorm,
                                avgpool: ddranking's ConvNet-3 exactly, except the input channel count.
  * LabelRobustScoreHard._get_class_to_samples -> no-op (only used for ImageFolder random data;
                                it raises for tensor datasets when the name is not CIFAR).
  * hard_label.set_seed      -> deterministic seeds 0,1,... (upstream seeds from the clock).
  * hard_label.save_results  -> JSON (upstream appends LRS twice per eval, so the pandas
                                DataFrame has unequal column lengths and raises).
  * REAL_DATA_ACC_CACHE['FashionMNIST-ConvNet-3'] = ddkit full-data accuracy (percent).
  * metric.test_interval     -> set from --test-interval (upstream 10 epochs).
  * metric.aug_func output re-packed to standard strides (1-channel DSA crop breaks .view()).
"""
import argparse
import gzip
import json
import os
import time

import numpy as np
import torch

p = argparse.ArgumentParser()
p.add_argument("--h5", default="runs/matching/files/dm-ipc10.ddk.h5")
p.add_argument("--fmnist", default="/usr/share/datasets/fashion-mnist")
p.add_argument("--epochs", type=int, default=150)
p.add_argument("--step-size", type=int, default=None, help="default epochs//2 (demo config: 1000/500)")
p.add_argument("--test-interval", type=int, default=None, help="default = step size")
p.add_argument("--num-eval", type=int, default=1)
p.add_argument("--syn-lr", type=float, default=0.01, help="<=0 -> ddranking's lr search for the syn set too")
p.add_argument("--aug", default="dsa", choices=["dsa", "cutmix", "none"])
p.add_argument("--full-acc", type=float, default=83.24, help="percent, put in REAL_DATA_ACC_CACHE")
p.add_argument("--test-subset", type=int, default=0, help="debug only: use first N test images")
p.add_argument("--out", default="/tmp/ddr/work/result.json")
args = p.parse_args()

torch.set_num_threads(1)

import ddranking.metrics.hard_label as hl
from ddranking.utils import REAL_DATA_ACC_CACHE, TensorDataset
from ddranking.utils.model import get_convnet, parse_model_name

MEAN, STD = 0.2860, 0.3530
DATASET = "FashionMNIST"
MODEL = "ConvNet-3"


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fmnist_get_dataset(dataset, data_path, im_size, use_zca, custom_val_trans, device):
    assert dataset == DATASET and not use_zca

    def load(prefix):
        x = read_idx(os.path.join(args.fmnist, f"{prefix}-images-idx3-ubyte.gz"))
        y = read_idx(os.path.join(args.fmnist, f"{prefix}-labels-idx1-ubyte.gz"))
        x = (torch.from_numpy(x.copy()).float().div_(255.0).unsqueeze(1) - MEAN) / STD
        return x, torch.from_numpy(y.astype(np.int64))

    xtr, ytr = load("train")
    xte, yte = load("t10k")
    if args.test_subset:
        xte, yte = xte[: args.test_subset], yte[: args.test_subset]
    # labels as python ints, like torchvision's CIFAR datasets (ddranking indexes class_map[label])
    dst_train = TensorDataset(xtr, ytr.tolist())
    dst_test = TensorDataset(xte, yte.tolist())
    cmap = {c: c for c in range(10)}
    return 1, (28, 28), [MEAN], [STD], 10, dst_train, dst_test, dst_test, cmap, dict(cmap)


def fmnist_build_model(model_name, num_classes, im_size, pretrained=False, model_path=None,
                       use_torchvision=False, device="cuda"):
    assert model_name.startswith("ConvNet") and not pretrained
    depth, bn = parse_model_name(model_name)
    m = get_convnet(model_name, im_size=im_size, channel=1, num_classes=num_classes, net_depth=depth,
                    net_norm="batchnorm" if bn else "instancenorm")
    return m.to(device)


_seed = [0]


def det_set_seed(seed=None):
    s = _seed[0] if seed is None else seed
    _seed[0] += 1
    torch.manual_seed(s); np.random.seed(s)
    import random; random.seed(s)
    print(f"[crosscheck] set_seed({s})", flush=True)


raw_saved = {}


def save_json(results, path):
    raw_saved.update({k: [float(v) for v in vs] for k, vs in results.items()})
    with open(path, "w") as f:
        json.dump(raw_saved, f, indent=1)


runs = []
_orig_compute = hl.LabelRobustScoreHard._compute_hard_label_metrics


def logged_compute(self, model, image_tensor, image_path, lr, hard_labels, mode="real"):
    t, c = time.time(), time.process_time()
    acc = _orig_compute(self, model, image_tensor, image_path, lr, hard_labels, mode)
    n = None if image_tensor is None else int(image_tensor.shape[0])
    rec = dict(mode=mode, n=n, lr=lr, best_acc=float(acc), wall_s=round(time.time() - t, 1),
               cpu_s=round(time.process_time() - c, 1))
    runs.append(rec)
    print("[crosscheck] training:", rec, flush=True)
    return acc


hl.get_dataset = fmnist_get_dataset
hl.build_model = fmnist_build_model
hl.set_seed = det_set_seed
hl.save_results = save_json
hl.LabelRobustScoreHard._get_class_to_samples = lambda self, *a, **k: None
hl.LabelRobustScoreHard._compute_hard_label_metrics = logged_compute
REAL_DATA_ACC_CACHE[f"{DATASET}-{MODEL}"] = args.full_acc

# distilled set: float16 pixel space [0,1], labels int64
import h5py

with h5py.File(args.h5, "r") as f:
    imgs = torch.from_numpy(f["images"][()].astype(np.float32))
    labels = torch.from_numpy(f["labels"][()].astype(np.int64))
assert imgs.shape == (100, 1, 28, 28) and 0.0 <= imgs.min() and imgs.max() <= 1.0
imgs = (imgs - MEAN) / STD

step = args.step_size or max(1, args.epochs // 2)
if args.aug == "dsa":  # ddranking configs/Demo_LRS_Hard_Label.yaml
    aug_params = dict(flip=0.5, rotate=15.0, saturation=2.0, brightness=1.0, contrast=0.5,
                      scale=1.2, crop=0.125, cutout=0.5)
elif args.aug == "cutmix":  # constructor default {'cutmix_p': 1.0} raises KeyError('beta')
    aug_params = dict(beta=1.0)
else:
    aug_params = {}
os.makedirs(os.path.dirname(args.out), exist_ok=True)
metric = hl.LabelRobustScoreHard(
    dataset=DATASET, real_data_path="/nonexistent", ipc=10, model_name=MODEL,
    data_aug_func=args.aug, aug_params=aug_params, optimizer="sgd", lr_scheduler="step",
    step_size=step, weight_decay=5e-4, momentum=0.9, num_eval=args.num_eval, im_size=(28, 28),
    num_epochs=args.epochs, real_batch_size=256, syn_batch_size=256, num_workers=0,
    save_path=os.path.join(os.path.dirname(args.out), "ddranking_scores.json"), device="cpu",
    random_data_format="tensor", random_data_path=os.path.join(os.path.dirname(args.out), "random_data"),
    eval_full_data=False)
metric.test_interval = args.test_interval or step
if metric.aug_func is not None:
    # DSA's crop returns a permuted tensor; with 1 channel its strides are ambiguous, torch's conv then
    # emits channels_last and ConvNet.forward's .view() raises. Re-pack to standard strides (values unchanged).
    _aug = metric.aug_func
    metric.aug_func = lambda x: _aug(x).clone(memory_format=torch.contiguous_format)

t0, c0 = time.time(), time.process_time()
res = metric.compute_metrics(image_tensor=imgs, hard_labels=labels,
                             syn_lr=(args.syn_lr if args.syn_lr > 0 else None), lrs_lambda=0.5)
out = dict(args=vars(args), step_size=step, test_interval=metric.test_interval,
           result={k: float(v) for k, v in res.items()}, per_eval_raw=raw_saved, trainings=runs,
           wall_s=round(time.time() - t0, 1), cpu_s=round(time.process_time() - c0, 1))
with open(args.out, "w") as f:
    json.dump(out, f, indent=1)
print(json.dumps(out, indent=1))
