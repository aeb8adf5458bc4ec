"""Units of work and the runners that execute them.

A :class:`Job` is a call of a module-level function (importable by a worker process on any
node) with its arguments, the resources it needs and a label for the progress bar. A runner
executes a list of jobs and returns their results in the order of the list: :class:`SerialRunner`
one after another in this process, :class:`ProcessRunner` in worker processes of this machine,
:class:`~hlm_gym.parallel.ray_runner.RayRunner` as Ray tasks on a cluster. Callers build the same
jobs for every runner, so results do not depend on where they run.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence

__all__ = ["Job", "Runner", "SerialRunner", "ProcessRunner", "BACKENDS", "run_job", "torch_threads", "shards",
           "optional_label"]

#: The ``--backend`` choices of the commands that run sweeps.
BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class Job:
    """One call ``fn(*args, **kwargs)``, with ``cpus`` CPU threads and ``gpus`` GPUs, shown as
    ``label``; ``weight`` is how many progress-bar units it completes."""

    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    cpus: int = 1
    gpus: float = 0.0
    weight: int = 1


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch at ``threads`` CPU threads inside the block (``threads`` <= 0: as they are), restored after."""
    if threads <= 0:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_job(fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any], threads: int) -> Any:
    """Call ``fn`` with torch at ``threads`` CPU threads (:func:`torch_threads`); what a worker (or
    this process) runs for each job."""
    with torch_threads(threads):
        return fn(*args, **kwargs)


class Runner(Protocol):
    """Executes jobs; results in the order of ``jobs``."""

    def run(self, jobs: Sequence[Job], bar: Any = None,
            on_result: Optional[Callable[[int, Any], None]] = None) -> list[Any]:
        """Run every job; ``bar`` (a tqdm bar or ``None``) advances by each job's weight;
        ``on_result(i, result)`` is called here as each job ``i`` finishes."""
        ...

    def slots(self, gpu: bool = False) -> int:
        """How many jobs of one CPU (``gpu``: one GPU) can run at once."""
        ...


class SerialRunner:
    """Every job in this process, one after another (torch threads as they are)."""

    def run(self, jobs: Sequence[Job], bar: Any = None,
            on_result: Optional[Callable[[int, Any], None]] = None) -> list[Any]:
        """Run ``jobs`` in order; results in order."""
        out = []
        for i, job in enumerate(jobs):
            if bar is not None and job.label:
                bar.set_description(job.label)
            out.append(job.fn(*job.args, **job.kwargs))
            if on_result is not None:
                on_result(i, out[-1])
            if bar is not None:
                bar.update(job.weight)
        return out

    def slots(self, gpu: bool = False) -> int:
        """One job at a time."""
        return 1


def shards(items: Sequence[Any], n: int, min_size: int = 1) -> list[list[Any]]:
    """``items`` cut into at most ``n`` non-empty shards of at least ``min_size`` items each (fewer
    shards when there are too few items): contiguous runs in the items' order, the first ones one
    item longer when ``n'`` (the number of shards) does not divide the count. Contiguous, so that
    the agents of a sweep (ordered by scenario) give each shard as few scenarios as possible."""
    n = max(1, min(int(n), len(items) // max(1, min_size) or 1))
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for j in range(n):
        stop = start + size + (1 if j < extra else 0)
        if stop > start:
            out.append(list(items[start:stop]))
        start = stop
    return out


def optional_label(job: Job, index: int) -> str:
    """A job's label, or ``job <index>``."""
    return job.label or f"job {index}"


def _ignore_sigint() -> None:
    """Pool workers' initializer: SIGINT is ignored between jobs (the parent stops idle workers)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _process_job(fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any], threads: int) -> Any:
    """A pool worker's job: Ctrl-C (SIGINT) reaches it only while the job runs."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run_job(fn, args, kwargs, threads)
    finally:
        signal.signal(signal.SIGINT, old)


class ProcessRunner:
    """Jobs in ``jobs`` spawned worker processes of this machine (``jobs`` 1, or a single job: in
    this process), each job with its ``cpus`` torch threads. On an error or Ctrl-C the queued jobs
    are cancelled and the running ones interrupted (SIGINT: they clean up; terminated after
    ``grace_s``), then the error is raised."""

    def __init__(self, jobs: int, grace_s: float = 30.0) -> None:
        self.jobs = max(1, int(jobs))
        self.grace_s = grace_s

    def slots(self, gpu: bool = False) -> int:
        """The worker processes (one job each at a time; GPUs are not counted)."""
        return self.jobs

    def run(self, jobs: Sequence[Job], bar: Any = None,
            on_result: Optional[Callable[[int, Any], None]] = None) -> list[Any]:
        """Run ``jobs`` in the pool (a single job: in this process, with its thread count);
        results in the order of ``jobs``."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        if len(jobs) <= 1 or self.jobs == 1:
            return [self._run_here(job, i, bar, on_result) for i, job in enumerate(jobs)]
        results: list[Any] = [None] * len(jobs)
        workers = min(self.jobs, len(jobs))
        pool = ProcessPoolExecutor(max_workers=workers,
                                   mp_context=multiprocessing.get_context("spawn"), initializer=_ignore_sigint)
        futures = {pool.submit(_process_job, job.fn, job.args, job.kwargs, job.cpus): i for i, job in enumerate(jobs)}
        try:
            for fut in as_completed(futures):
                i = futures[fut]
                results[i] = fut.result()
                if on_result is not None:
                    on_result(i, results[i])
                if bar is not None:
                    if jobs[i].label:
                        bar.set_description(f"{jobs[i].label}: done ({workers} processes)")
                    bar.update(jobs[i].weight)
        except BaseException:
            self._stop(pool, list(futures))
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return results

    @staticmethod
    def _run_here(job: Job, i: int, bar: Any, on_result: Optional[Callable[[int, Any], None]]) -> Any:
        """``job`` in this process with torch at its ``cpus`` threads (restored afterwards)."""
        if bar is not None and job.label:
            bar.set_description(job.label)
        result = run_job(job.fn, job.args, job.kwargs, job.cpus)
        if on_result is not None:
            on_result(i, result)
        if bar is not None:
            bar.update(job.weight)
        return result

    def _stop(self, pool: Any, futures: list[Any]) -> None:
        """Cancel queued jobs, interrupt running ones, terminate any left after ``grace_s``."""
        import multiprocessing
        from concurrent.futures import wait

        pool.shutdown(wait=False, cancel_futures=True)
        workers = multiprocessing.active_children()
        for p in workers:
            with contextlib.suppress(OSError):
                os.kill(p.pid, signal.SIGINT)
        wait(futures, timeout=self.grace_s)
        for p in workers:
            if p.is_alive():
                p.terminate()
