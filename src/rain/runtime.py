"""What every stage shares about where it runs: the device, the precision, TF32, and the process's rank."""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from rain.errors import RainError


@dataclass
class Ranks:
    """This process's place among the `torchrun` processes (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_type: str) -> "Ranks":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        return cls(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(name: str, local_rank: int = 0, option: str = "train.device") -> torch.device:
    """`auto` is the GPU when there is one, else the CPU. `option` names the setting in errors."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RainError(f"{option} = {name!r} but no CUDA GPU is visible; use {option}=cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise RainError(f"{option} = {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None


def computes_bf16(device: torch.device, precision: str) -> bool:
    """Whether training at train.precision `precision` computes in bf16 on `device`: bf16 and bf16-master do, and
    auto does on a GPU."""
    return precision in ("bf16", "bf16-master") or (precision == "auto" and device.type == "cuda")


def autocast_for(device: torch.device, precision: str):
    """The context a forward pass runs in at train.precision `precision`: bf16 autocast for `bf16`, and for `auto`
    on a GPU; none for fp32, and none for bf16-master, whose weights are bf16 themselves (rain.train.precision)."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def enable_tf32(device: torch.device) -> None:
    """fp32 matmuls outside autocast (the optimizer, fp32 runs) use TF32 tensor cores on Ampere and later."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
