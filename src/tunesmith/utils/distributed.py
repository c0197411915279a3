"""Which process this is, as torchrun tells it (RANK, WORLD_SIZE, LOCAL_WORLD_SIZE), and the rule
that only rank 0 writes a run's files. Read from the environment, so it holds before (and without)
a process group; a plain `python` run is rank 0 of 1."""

import os


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_world_size() -> int:
    """Processes of this run on this machine."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size())))


def is_main_process() -> bool:
    """True on rank 0, the one process that writes checkpoints, metrics, plots and the adapter."""
    return rank() == 0


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
