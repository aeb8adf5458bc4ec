"""Jobs as Ray tasks: ``--backend ray [--address ADDRESS]`` of the commands that run sweeps.

:class:`RayRunner` connects to a Ray cluster (``--address``: ``auto``, ``HOST:PORT`` or
``ray://HOST:PORT``) or, without an address, starts a local Ray instance for the command's
lifetime. Each :class:`~hlm_gym.parallel.jobs.Job` becomes one task with the job's CPU/GPU
request; a task whose worker process or node dies is retried (``max_retries``, Ray's
system-failure retries; an exception raised by the job itself is not retried). Results come
back in the order of the jobs, whatever order the tasks finish in. Every node must have
hlm-gym installed, and the jobs' output folders must be on storage that every node and the
driver see (docs/cluster.md).

Ray is an optional extra (``pip install "hlm-gym[ray]"``); this module imports it only when a
runner starts, and :func:`require_ray` says how to install it.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Callable, Optional, Sequence

from hlm_gym.errors import HLMGymError
from hlm_gym.parallel.jobs import Job, optional_label, run_job

__all__ = ["ClusterError", "RayRunner", "require_ray", "check_address", "check_backend", "INSTALL_HINT"]

INSTALL_HINT = "pip install \"hlm-gym[ray]\" (or pip install \"ray>=2.40\")"
_ADDRESS = re.compile(r"(auto|(ray://)?[A-Za-z0-9_.\-\[\]:]+:(\d{1,5}))")


class ClusterError(HLMGymError):
    """A cluster backend cannot run: Ray missing, a bad or unreachable address, a task that
    kept failing."""


def require_ray(flag: str = "--backend ray") -> Any:
    """The ``ray`` module, or a one-line :class:`ClusterError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ClusterError(f"{flag} needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def check_address(address: Optional[str], flag: str = "--address") -> Optional[str]:
    """``address`` when it is ``None``, ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT`` (port <= 65535)."""
    if address is None:
        return None
    m = _ADDRESS.fullmatch(address.strip()) if isinstance(address, str) else None
    if m is None or (m.group(3) is not None and not 0 < int(m.group(3)) <= 65535):
        raise ClusterError(f"{flag} {address!r} is not a Ray address: use auto, HOST:PORT (e.g. 10.0.0.1:6379) "
                           "or ray://HOST:PORT")
    return address.strip()


def check_backend(backend: str, address: Optional[str], device: str = "cpu") -> None:
    """The ``--backend``/``--address``/``--device`` combination of a command, before any work:
    ``--address`` only with ``ray``; with ``ray``, a valid address, Ray installed, and a device of
    ``cpu`` or ``cuda`` (Ray gives each GPU task its own GPU as ``cuda``)."""
    from hlm_gym.parallel.jobs import BACKENDS

    if backend not in BACKENDS:
        raise ClusterError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend != "ray":
        if address is not None:
            raise ClusterError("--address needs --backend ray")
        return
    check_address(address)
    if device not in ("cpu", "cuda"):
        raise ClusterError(f"--device {device} with --backend ray: use cpu or cuda (Ray gives each GPU task its "
                           "own GPU, seen as cuda)")
    require_ray()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class RayRunner:
    """Runs jobs as Ray tasks on the cluster at ``address`` (``None``: a local instance with
    ``num_cpus`` CPUs, default all of this machine's), each retried up to ``max_retries`` times
    when its worker dies. Use as a context manager: the local instance it started is shut down
    on exit; a cluster it connected to keeps running."""

    def __init__(self, address: Optional[str] = None, num_cpus: Optional[int] = None, max_retries: int = 3) -> None:
        self.address = check_address(address)
        self.num_cpus = num_cpus
        self.max_retries = int(max_retries)
        self._started = False
        self._ray: Any = None

    def __enter__(self) -> "RayRunner":
        ray = self._ray = require_ray()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "configure_logging": True, "logging_level": "warning"}
            if self.address is None:
                kwargs["num_cpus"] = self.num_cpus
            try:
                ray.init(address=self.address, **kwargs)
            except Exception as exc:  # ConnectionError, RuntimeError: the cluster is not there
                where = "a local Ray instance" if self.address is None else f"the Ray cluster at {self.address}"
                raise ClusterError(f"--backend ray: cannot start or reach {where}: {_first_line(exc)}") from None
            self._started = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False

    def check_shared(self, folders: Sequence[Any]) -> None:
        """Every alive node of the cluster sees ``folders`` (paths as this machine names them): a
        probe file written into the first one here, and each of the others, must be visible to one
        task pinned to each node; else a one-line :class:`ClusterError` before any work."""
        import os
        import uuid
        from pathlib import Path

        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray = self._ray
        first = Path(folders[0])
        probe = first / f".hlm-gym-probe-{uuid.uuid4().hex}"
        probe.write_text("hlm-gym")
        try:
            paths = [str(probe), *(str(Path(f)) for f in folders[1:])]
            remote = ray.remote(_missing_paths)
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            refs = [remote.options(num_cpus=0,
                                   scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                    .remote(paths) for n in nodes]
            for node, missing in zip(nodes, ray.get(refs)):
                if missing:
                    shown = str(first) if missing[0] == str(probe) else missing[0]
                    raise ClusterError(f"--backend ray: {shown} is not visible on the Ray node "
                                       f"{node.get('NodeManagerAddress', '?')}: the output and data folders must be "
                                       "on storage every node mounts at the same path (docs/cluster.md)")
        finally:
            with contextlib.suppress(OSError):
                os.unlink(probe)

    def slots(self, gpu: bool = False) -> int:
        """The cluster's CPUs (``gpu``: GPUs), at least 1."""
        resources = self._ray.cluster_resources()
        return max(1, int(resources.get("GPU" if gpu else "CPU", 1)))

    def run(self, jobs: Sequence[Job], bar: Any = None,
            on_result: Optional[Callable[[int, Any], None]] = None) -> list[Any]:
        """Submit every job, collect the results as tasks finish; results in the order of ``jobs``;
        ``on_result(i, result)`` is called in this process as each job ``i`` finishes.

        A job's :class:`~hlm_gym.errors.HLMGymError` is raised as it is; a task whose worker died
        more than ``max_retries`` times raises :class:`ClusterError`. Either way, and on Ctrl-C, the
        tasks still queued or running are cancelled first."""
        ray = self._ray
        from ray.exceptions import RayTaskError, RayError

        if any(job.gpus for job in jobs) and not self._ray.cluster_resources().get("GPU"):
            raise ClusterError("GPU jobs on a Ray cluster without GPUs (ray status lists its resources): use the "
                               "CPU or add GPU nodes")
        # a GPU job gets a fresh worker (a reused one would keep its first CUDA device and cached models)
        remote, remote_gpu = ray.remote(run_job), ray.remote(max_calls=1)(run_job)
        refs = [(remote_gpu if job.gpus else remote)
                .options(num_cpus=job.cpus, num_gpus=job.gpus, max_retries=self.max_retries, retry_exceptions=False,
                         name=optional_label(job, i)[:100])
                .remote(job.fn, job.args, job.kwargs, job.cpus)
                for i, job in enumerate(jobs)]
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(jobs)
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                i = index[done[0]]
                try:
                    results[i] = ray.get(done[0])
                except RayTaskError as exc:
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, HLMGymError):
                        raise cause from None
                    raise
                except RayError as exc:  # the worker or its node died more often than retried
                    raise ClusterError(f"{optional_label(jobs[i], i)}: the Ray task failed "
                                       f"{self.max_retries + 1} times ({_first_line(exc)}); finished work is kept: "
                                       "rerun the command (compare: with --resume) to continue") from None
                if on_result is not None:
                    on_result(i, results[i])
                if bar is not None:
                    bar.set_description(f"ray: {len(jobs) - len(pending)}/{len(jobs)} done, last "
                                        f"{optional_label(jobs[i], i)}")
                    bar.update(jobs[i].weight)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return results


def _missing_paths(paths: Sequence[str]) -> list[str]:
    """A probe task: the ``paths`` that do not exist on this node."""
    import os

    return [p for p in paths if not os.path.exists(p)]
