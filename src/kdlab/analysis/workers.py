"""The analysis' worker pool: tasks run in ``--jobs`` spawned processes (one BLAS thread
each, so N workers use N cores, not N x cores), or inline in this process for ``--jobs 1``.

A task is a tuple ``(key, function, *args)``; :func:`run_all` yields ``(key, result)`` as
tasks finish. Functions and arguments must be picklable (module-level functions).
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed

from ..run.errors import UserError


def resolve_jobs(jobs: int) -> int:
    """``--jobs`` to a number of worker processes (0: every core)."""
    if jobs < 0:
        raise UserError(f"--jobs {jobs}: expected 0 (all cores) or a positive number")
    return jobs or os.cpu_count() or 1


def _init_worker() -> None:
    """One BLAS/OpenMP thread per worker process: the pool already uses every core."""
    import matplotlib

    matplotlib.use("Agg")
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)


class InlineExecutor:
    """``--jobs 1``: tasks run one after the other in this process (plain tracebacks)."""

    def shutdown(self, wait: bool = True) -> None:
        del wait


def executor(jobs: int):
    """A process pool of ``jobs`` workers, or an :class:`InlineExecutor` for one."""
    if jobs == 1:
        return InlineExecutor()
    import multiprocessing

    # spawn: workers start clean (no copied BLAS thread pools or torch state from the parent)
    return ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker)


def run_all(pool, tasks: list[tuple], description: str, show_progress: bool):
    """Run (key, function, *args) tasks on ``pool``; yield (key, result) as they finish."""
    if isinstance(pool, InlineExecutor):
        done = ((key, function(*args)) for key, function, *args in tasks)
    else:
        futures = {pool.submit(function, *args): key for key, function, *args in tasks}
        done = ((futures[future], future.result()) for future in as_completed(futures))
    if show_progress and tasks:
        from tqdm import tqdm

        done = tqdm(done, total=len(tasks), desc=description, file=sys.stderr, leave=False)
    yield from done
