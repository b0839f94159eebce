"""CPU threads of a training job: the cores it was given, applied to torch, OpenMP and BLAS.

Left to themselves torch, OpenMP and BLAS each start one thread per core of the machine. A
job given 2 of a node's 64 cores then runs 64 threads on 2 cores, and every barrier waits
for descheduled threads (two hand-started runs on 2 cores ran about 25x slower than one).
The default is therefore the job's own share: ``$SLURM_CPUS_PER_TASK`` under Slurm,
``$NCPUS`` under PBS, else an ``$OMP_NUM_THREADS`` the user set (torch's own default
honours it, so kdlab keeps doing so), else the CPUs this process may run on (its affinity
mask).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

from ..run import catalog

# Environment variables that name the cores the job was given, in order of trust: the
# scheduler backends' own (kdlab.run.catalog.BACKEND_FACTS), then the user's OpenMP setting.
SCHEDULER_CPU_VARIABLES = (*(facts.cpu_variable for facts in catalog.BACKEND_FACTS.values()
                             if facts.cpu_variable), "OMP_NUM_THREADS")


def default_threads(environ: dict | None = None) -> tuple[int, str]:
    """(threads, where the number came from): the first positive integer among
    :data:`SCHEDULER_CPU_VARIABLES`, else the size of the CPU affinity mask."""
    environ = os.environ if environ is None else environ
    for name in SCHEDULER_CPU_VARIABLES:
        text = str(environ.get(name, "")).strip()
        if text.isdigit() and int(text) > 0:
            return int(text), name
    try:
        return len(os.sched_getaffinity(0)), "cpu affinity"
    except AttributeError:  # no affinity call on this platform (macOS)
        return os.cpu_count() or 1, "cpu count"


@contextlib.contextmanager
def thread_limits(requested: int | None) -> Iterator[dict]:
    """Run the body with ``requested`` threads (None: :func:`default_threads`); yields the
    record for status.json and restores torch's and the libraries' limits afterwards.

    torch: ``set_num_threads``, and ``set_num_interop_threads`` where torch still allows it
    (once per process, before any inter-op work). OpenMP and BLAS: threadpoolctl (installed
    with scikit-learn) limits the libraries already loaded; without it they keep their own
    count, because ``OMP_NUM_THREADS`` and friends are read when a library loads, which
    has happened by now.
    """
    threads, source = (requested, "--threads") if requested else default_threads()
    previous = torch.get_num_threads()
    try:
        with contextlib.ExitStack() as stack:
            # threadpoolctl first: on leaving it restores the OpenMP count it found, which
            # must not undo torch's own restore below.
            libraries = _limit_libraries(stack, threads)
            torch.set_num_threads(threads)
            yield {"count": threads, "source": source, "torch": torch.get_num_threads(),
                   "interop": _set_interop_threads(threads), "openmp_blas": libraries}
    finally:
        torch.set_num_threads(previous)


def _limit_libraries(stack: contextlib.ExitStack, threads: int) -> str:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return ("not limited: threadpoolctl is not installed and OMP_NUM_THREADS is read "
                "only when a library loads")
    stack.enter_context(threadpool_limits(limits=threads))
    return "limited through threadpoolctl"


def _set_interop_threads(threads: int) -> str:
    try:
        torch.set_num_interop_threads(threads)
        return f"{threads}"
    except RuntimeError:  # already set, or inter-op work already ran in this process
        return f"{torch.get_num_interop_threads()} (torch allows setting it only once)"
