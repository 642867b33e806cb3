"""torchrun support: one process group per run, nccl on CUDA and gloo on CPU, chosen for you.

``torchrun --nproc_per_node N -m napari_medsegdiff train ...`` sets RANK / WORLD_SIZE /
LOCAL_RANK; :func:`distributed_session` initialises the group from them and yields the
device this rank should use. Without torchrun it yields ``None`` and does nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

from napari_medsegdiff.devices import choose_device

T = TypeVar("T")


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def backend_for(device: torch.device) -> str:
    """nccl for CUDA devices, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


@contextlib.contextmanager
def distributed_session(device: str = "auto") -> Iterator[torch.device | None]:
    """Initialise the process group under torchrun; yield this rank's device (or None)."""
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        yield None
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = choose_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend_for(dev))
    try:
        yield dev
    finally:
        dist.destroy_process_group()


def shard(items: Sequence[T], rank_: int | None = None, world: int | None = None) -> list[T]:
    """This rank's share of ``items`` (round robin), so each item is handled exactly once."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    return [item for i, item in enumerate(items) if i % w == r]
