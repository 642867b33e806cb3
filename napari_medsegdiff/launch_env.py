"""What the launcher (torchrun) told this process, from its environment alone (no torch).

The ground layer: progress bars and messages use it to stay on one process;
:mod:`napari_medsegdiff.distributed` builds process groups on top of it.
"""

from __future__ import annotations

import os


def launch_rank() -> int:
    """This process's rank as the launcher (torchrun) set it in ``RANK``; 0 without one.

    Valid before any process group exists: the CLI uses it to keep progress bars and
    messages to one process.
    """
    return int(os.environ.get("RANK", "0"))


def is_launch_main() -> bool:
    """True in the launcher's rank 0 (or without a launcher)."""
    return launch_rank() == 0


def launched_by_torchrun() -> bool:
    """True in a torchrun worker of a run with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
