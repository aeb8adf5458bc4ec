"""Where the jobs of a sweep run: in this process (:class:`SerialRunner`), in worker processes of
this machine (:class:`ProcessRunner`) or as Ray tasks on a cluster
(:class:`~hlm_gym.parallel.ray_runner.RayRunner`, the optional ``ray`` extra).

A bottom layer beside ``wireless`` and ``lm`` (it imports only ``errors``): it knows jobs and
resources, nothing of the environments or models whose work it runs.
"""

from typing import Any

from hlm_gym.parallel.jobs import BACKENDS, Job, ProcessRunner, Runner, SerialRunner, run_job, shards

__all__ = ["BACKENDS", "Job", "ProcessRunner", "Runner", "SerialRunner", "run_job", "shards", "make_runner"]


def make_runner(backend: str, address: str | None = None) -> Any:
    """A context manager giving the runner of ``backend`` (``local``: this process; ``ray``: Ray
    tasks on the cluster at ``address``, or on a local Ray instance)."""
    import contextlib

    if backend == "ray":
        from hlm_gym.parallel.ray_runner import RayRunner

        return RayRunner(address)
    return contextlib.nullcontext(SerialRunner())
