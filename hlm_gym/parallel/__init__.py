"""Where the jobs of a sweep run: in this process (:class:`SerialRunner`) or as Ray tasks on a
cluster (:class:`~hlm_gym.parallel.ray_runner.RayRunner`, the optional ``ray`` extra).

A bottom layer beside ``wireless`` and ``lm`` (it imports only ``errors``): it knows jobs and resources, nothing of the
environments or models whose work it runs.
"""

from hlm_gym.parallel.jobs import BACKENDS, Job, ProcessRunner, Runner, SerialRunner, run_job, shards

__all__ = ["BACKENDS", "Job", "ProcessRunner", "Runner", "SerialRunner", "run_job", "shards", "make_runner"]


def make_runner(backend: str, address: str | None = None, num_cpus: int | None = None):
    """A runner context for ``backend`` (``local``: this process; ``ray``: Ray tasks at ``address``)."""
    import contextlib

    if backend == "ray":
        from hlm_gym.parallel.ray_runner import RayRunner

        return RayRunner(address, num_cpus=num_cpus)
    return contextlib.nullcontext(SerialRunner())
