"""torch.distributed helpers for runs launched by torchrun (no home-made process manager).

A process learns its rank and world size from torchrun's environment; work is sharded by item
(`shard`), every item's randomness comes from (root seed, item id) only, and results meet through
collectives or shard files. With no torchrun environment everything is a world of one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ddkit.errors import DdkitError, InvalidInput


@dataclass(frozen=True)
class World:
    rank: int
    size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """This process's rank and the world size (0 and 1 outside torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))


def init(device: torch.device | None = None) -> World:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on CUDA); idempotent."""
    w = world()
    if w.size > 1 and not dist.is_initialized():
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        if device is not None and device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return world()


def shard(items: list, w: World | None = None) -> list:
    """This rank's share of `items` (round robin), the same split on every rank."""
    w = w or world()
    return list(items)[w.rank :: w.size]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks, in place (a no-op in a world of one).

    NCCL (the backend on CUDA) reduces only CUDA tensors: a CPU tensor goes through this rank's
    GPU and back, so callers may keep their small tables on the CPU whatever the backend.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
            on_gpu = tensor.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
            tensor.copy_(on_gpu.cpu())
        else:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def share_rows(tensor: torch.Tensor, owners: list[torch.Tensor]) -> torch.Tensor:
    """Give every rank the rows each rank computed, in place: rank r's rows `owners[r]` (indices
    along dim 0) are broadcast from rank r. The bytes are copied, never summed, so the result is
    exactly what the owners hold (a sum with zeros would turn -0.0 into 0.0). A no-op in a world
    of one; on NCCL a CPU tensor goes through this rank's GPU, as in `all_reduce_sum`."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return tensor
    via_gpu = dist.get_backend() == "nccl" and tensor.device.type != "cuda"
    for rank, rows in enumerate(owners):
        part = tensor[rows].contiguous()
        if via_gpu:
            part = part.to(torch.device("cuda", torch.cuda.current_device()))
        dist.broadcast(part, src=rank)
        tensor[rows] = part.to(tensor.device)
    return tensor


def launch(nproc: int, argv: list[str]) -> int:
    """Re-run `ddkit ARGV` under torchrun with `nproc` processes on this machine; returns its exit code."""
    if nproc < 1:
        raise InvalidInput(f"--nproc must be ≥ 1, got {nproc}")
    torchrun = shutil.which("torchrun")
    cmd = ([torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]) + [
        "--standalone", f"--nproc-per-node={nproc}", "-m", "ddkit", *argv]
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise DdkitError(f"the distributed run exited with code {proc.returncode}", "see the messages of the ranks above")
    return 0
