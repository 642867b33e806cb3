"""torchrun support: one process group per run, nccl on CUDA and gloo on CPU, chosen for you.

``torchrun --nproc_per_node N [--nnodes M ...] -m napari_medsegdiff train ...`` sets RANK /
WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; :func:`distributed_session` initialises
the group from them (``env://``) and yields the device this rank should use (``cuda:LOCAL_RANK``
on GPUs). Without torchrun it yields ``None`` and does nothing. When a process group already
exists (a caller set one up, e.g. with ``torch.multiprocessing.spawn``) it is used as is and
left open.

The small collective helpers below are no-ops in a single process, so callers need no
``if distributed`` branches.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from napari_medsegdiff.errors import InputError
from napari_medsegdiff.launch_env import launched_by_torchrun

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


def _dist():
    """``torch.distributed``, imported on first use (the CLI starts without torch)."""
    import torch.distributed as dist

    return dist


def is_distributed() -> bool:
    """True when a process group is initialised (this process is one rank of several)."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """Rank in the process group; 0 without one."""
    return _dist().get_rank() if is_distributed() else 0


def world_size() -> int:
    """Processes in the group; 1 without one."""
    return _dist().get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0 (or no process group): the one process that writes files and reports."""
    return rank() == 0


def backend_for(device: torch.device) -> str:
    """nccl for CUDA devices, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def local_device(device: str | torch.device = "auto") -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` when ``device`` resolves to CUDA."""
    import torch

    from napari_medsegdiff.devices import choose_device

    dev = choose_device(device)
    if dev.type != "cuda":
        return dev
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise InputError(
            f"LOCAL_RANK {local_rank} but this node has only {count} CUDA device(s): "
            f"use torchrun --nproc_per_node {count} (or fewer)"
        )
    return torch.device("cuda", local_rank)


@contextlib.contextmanager
def distributed_session(device: str | torch.device = "auto") -> Iterator[torch.device | None]:
    """Initialise the process group under torchrun; yield this rank's device (or None).

    The backend follows the device (nccl on CUDA, gloo on CPU/MPS). An existing process
    group is reused (and not destroyed); outside torchrun nothing happens and ``None`` is
    yielded, so the caller keeps its own device choice.
    """
    if is_distributed():
        yield local_device(device)
        return
    if not launched_by_torchrun():
        yield None
        return
    import torch

    dist = _dist()
    dev = local_device(device)
    kwargs: dict[str, Any] = {}
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        if "device_id" in inspect.signature(dist.init_process_group).parameters:  # torch >= 2.3
            kwargs["device_id"] = dev  # binds the communicator to this GPU
    dist.init_process_group(backend=backend_for(dev), **kwargs)
    try:
        yield dev
        # Every rank done with its collectives before any tears down: a rank that exited
        # while another was still destroying its group aborted at exit (SIGABRT, "terminate
        # called without an active exception"), failing a finished run ~1 in 8 on CPU/gloo.
        dist.barrier()
    finally:
        dist.destroy_process_group()
        gc.collect()  # free the group's backend while the interpreter is fully alive


def shard(items: Sequence[T], rank_: int | None = None, world: int | None = None) -> list[T]:
    """This rank's share of ``items`` (round robin), so each item is handled exactly once."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    return [item for i, item in enumerate(items) if i % w == r]


def _reduce_device() -> torch.device:
    """Where collective tensors must live: the current GPU for nccl, else the CPU."""
    import torch

    if _dist().get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(values: Sequence[float], op: str = "sum") -> list[float]:
    """Sum (or max) a few numbers over all ranks, in float64; identity in one process."""
    if not is_distributed():
        return [float(v) for v in values]
    import torch

    dist = _dist()
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_reduce_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor.cpu().tolist()


def all_gather_object(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in one process."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    _dist().all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank; a no-op in one process."""
    if is_distributed():
        _dist().barrier()
