"""Units of work and the runner that executes them in this process.

A :class:`Job` is a call of a module-level function (importable by a worker process on any
node) with its arguments, the resources it needs and a label for the progress bar. A runner
executes a list of jobs and returns their results in the order of the list; this module's
:class:`SerialRunner` runs them one after another here, :class:`~hlm_gym.parallel.ray_runner.RayRunner`
as Ray tasks on a cluster. Callers build the same jobs for both, so results do not depend on
the backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence

__all__ = ["Job", "Runner", "SerialRunner", "BACKENDS", "run_job", "shards", "optional_label"]

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


def run_job(fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any], threads: int) -> Any:
    """Call ``fn`` with torch limited to ``threads`` CPU threads (when torch is already imported or
    ``threads`` is set); what a worker runs for each job."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
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
    """``items`` dealt into at most ``n`` non-empty shards of at least ``min_size`` items each
    (fewer shards when there are too few items), keeping the items' order within each shard;
    shard ``j`` gets items ``j, j + n', ...`` for the number of shards ``n'``."""
    n = max(1, min(int(n), len(items) // max(1, min_size) or 1))
    return [list(items[j::n]) for j in range(n) if items[j::n]]


def optional_label(job: Job, index: int) -> str:
    """A job's label, or ``job <index>``."""
    return job.label or f"job {index}"

