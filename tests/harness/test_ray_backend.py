"""``--backend ray``: sweeps and trace builds as Ray tasks on a local Ray cluster.

A Ray head is started by the module fixture on the loopback address with 2 CPUs (``ray start
--head`` with its own temp folder; stopped at the end without touching other Ray clusters of the
machine), and the commands connect to it with ``--address``: a tiny comparison gives the same
results files as the local backend (population and SB3 trainers); a worker killed in the middle
of a training task is retried and the sweep still gives those files; a task whose worker keeps
dying ends in one line; a tiny ``traces build`` on Ray equals the build in this process. Without
Ray, and for bad flags, the commands say so in one line before any work.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.harness.helpers import TINY, make_traces

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes() -> dict[int, tuple[str, int]]:
    """Every process: pid -> (command line, parent pid)."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            out[int(d.name)] = (cmd, ppid)
    return out


def _stop_cluster(temp_dir: str, port: int) -> None:
    """Stop this test's Ray cluster only (``ray stop`` would stop every Ray cluster of the machine):
    the processes whose command line names its temp folder or port, and their descendants."""
    procs = _processes()
    mine = {p for p, (cmd, _) in procs.items() if temp_dir in cmd or f":{port} " in cmd or cmd.endswith(f":{port}")}
    grown = True
    while grown:
        more = {p for p, (_, parent) in procs.items() if parent in mine} - mine
        grown, mine = bool(more), mine | more
    mine.discard(os.getpid())
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in mine:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and mine & set(_processes()):
            time.sleep(0.2)


@pytest.fixture(scope="module")
def address():
    """A 2-CPU Ray head on 127.0.0.1 (its own temp folder) whose workers can import this
    repository's ``tests``; stopped at the end without touching other Ray clusters."""
    import tempfile

    exe = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="hlmray-", dir="/tmp")  # short: Ray's socket paths live there
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # a throw-away cluster on the loopback: no token to share
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1")
    subprocess.run([exe, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                    "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
                   check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    yield f"127.0.0.1:{port}"
    _stop_cluster(temp_dir, port)
    shutil.rmtree(temp_dir, ignore_errors=True)
    if saved is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = saved


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    return make_traces(tmp_path_factory.mktemp("ray-traces"))


def _compare_argv(traces: Path, out: Path, trainer: str, seeds: str = "2", weights: str = "5,10") -> list[str]:
    return ["compare", "--scenarios", "vehicular", "--risk-weights", weights, "--risk-targets", "none",
            "--timesteps", "128", "--thresholds", "0,0.5,1", "--ltt-deltas", "0.1", "--bild-alphas", "0.6",
            "--calm-lambdas", "none", "--episodes", "4", "--n-envs", "4", "--seeds", seeds, "--trainer", trainer,
            "--traces", str(traces), "--out", str(out), *[f"--hp={k}={v}" for k, v in TINY.items()]]


def _results(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in ("results.csv", "dominance.csv")}


@pytest.fixture(scope="module")
def local_population(traces, tmp_path_factory):
    from hlm_gym.cli.main import main

    out = tmp_path_factory.mktemp("local-population")
    assert main(_compare_argv(traces, out, "population")) == 0
    return _results(out)


def test_population_sweep_on_ray_gives_the_local_results(traces, address, local_population, tmp_path, capsys,
                                                          monkeypatch):
    """4 agents in 2 population shards (one per CPU of the cluster), the rules as separate tasks;
    a relative --out from another folder than the workers' (they get its absolute path)."""
    from hlm_gym.cli.main import main

    monkeypatch.chdir(tmp_path)
    assert main([*_compare_argv(traces, Path("rel"), "population"), "--backend", "ray", "--address", address]) == 0
    capsys.readouterr()
    assert _results(tmp_path / "rel") == local_population
    assert "--backend ray" in (tmp_path / "rel" / "results.md").read_text()


def test_sb3_sweep_on_ray_gives_the_local_results(traces, address, tmp_path, capsys):
    from hlm_gym.cli.main import main

    argv = _compare_argv(traces, tmp_path / "local", "sb3", seeds="1", weights="5")
    assert main([*argv, "--jobs", "1"]) == 0
    argv = _compare_argv(traces, tmp_path / "ray", "sb3", seeds="1", weights="5")
    assert main([*argv, "--backend", "ray", "--address", address]) == 0
    capsys.readouterr()
    assert _results(tmp_path / "ray") == _results(tmp_path / "local")


def _ray_workers(title: str) -> list[int]:
    """PIDs of the processes whose command line (Ray's process title) contains ``title``."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith("ray::") and title in cmd:
                pids.append(int(d.name))
    return pids


def test_a_worker_killed_mid_training_is_retried_and_the_sweep_finishes(traces, address, local_population,
                                                                        tmp_path, capsys):
    """SIGKILL to the worker training the first population shard, once it has trained for a while:
    Ray retries the task, the retry trains the shard from its start (the killed attempt committed
    nothing), and the results equal the local backend's. Then, with one agent's run made unfinished,
    ``--resume`` on Ray reuses the three finished agents and trains only that one."""
    from hlm_gym.cli.main import main

    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            for pid in _ray_workers("shard 1/2"):  # the task has started (Ray titles its worker with it)
                time.sleep(0.3)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    assert main([*_compare_argv(traces, tmp_path, "population"), "--backend", "ray", "--address", address]) == 0
    thread.join(timeout=1)
    capsys.readouterr()
    assert killed, "no worker of the first shard was found to kill"
    assert _results(tmp_path) == local_population
    assert not list(tmp_path.rglob(".partial-*"))  # the killed attempt's staging folder is gone

    # an interrupted sweep (here: one agent left unfinished) resumes on Ray from the finished agents
    (tmp_path / "runs" / "vehicular" / "lambda10-seed1" / "summary.json").unlink()
    assert main([*_compare_argv(traces, tmp_path, "population"), "--backend", "ray", "--address", address,
                 "--resume"]) == 0
    text = capsys.readouterr()
    said = text.out + text.err
    assert said.count("resume: reuse") == 3 and "resume: retrain" in said and "lambda10-seed1" in said
    assert _results(tmp_path) == local_population


def die() -> None:
    """A job whose worker process dies (SIGKILL to itself)."""
    os.kill(os.getpid(), signal.SIGKILL)


def double(x: int) -> int:
    """A job: ``2 x``."""
    return 2 * x


def test_runner_keeps_job_order_and_gives_up_on_a_worker_that_keeps_dying(address):
    from hlm_gym.parallel import Job
    from hlm_gym.parallel.ray_runner import ClusterError, RayRunner

    seen = []
    with RayRunner(address, max_retries=1) as runner:
        assert runner.slots() == 2 and runner.slots(gpu=True) == 1
        assert runner.run([Job(double, (i,)) for i in range(5)], on_result=lambda i, r: seen.append((i, r))) == \
            [0, 2, 4, 6, 8]
        assert sorted(seen) == [(i, 2 * i) for i in range(5)]
        with pytest.raises(ClusterError, match=r"^doomed: the Ray task failed 2 times .*rerun the command"):
            runner.run([Job(die, label="doomed")])
        with pytest.raises(ClusterError, match="GPU jobs on a Ray cluster without GPUs"):
            runner.run([Job(double, (1,), gpus=1.0)])
        runner.check_shared([REPO])  # this machine's folders: the one node sees them
        with pytest.raises(ClusterError, match=r"/nowhere/at/all is not visible on the Ray node .* every node mounts"):
            runner.check_shared([REPO, "/nowhere/at/all"])


def test_trace_build_on_ray_equals_the_build_in_this_process(address, tmp_path):
    """The tiny pair, 12 prompts in 3 chunks traced by Ray workers: the same rows and metadata
    (but the build's timing) as the single-process build of the same seed."""
    import json

    import pyarrow.parquet as pq
    import torch

    from hlm_gym.lm.decoding import DecoderConfig
    from hlm_gym.parallel.ray_runner import RayRunner
    from hlm_gym.traces.builder import PairLoader, build_traces
    from hlm_gym.traces.store import META_KEY
    from tests.tiny_models import tiny_pair, tiny_prompts

    torch.set_num_threads(1)
    pair, cfg, prompts = tiny_pair(), DecoderConfig(mode="sample", max_new_tokens=24), tiny_prompts(12)
    kw = dict(k_choices=(4, 16), batch_size=4, measure=False)
    one = build_traces(pair, prompts, cfg, tmp_path / "one.parquet", **kw)
    with RayRunner(address) as runner:
        on_ray = build_traces(pair, prompts, cfg, tmp_path / "ray.parquet", runner=runner,
                              loader=PairLoader("tests.tiny_models:tiny_pair"), **kw)
    a, b = pq.read_table(one), pq.read_table(on_ray)
    assert a.num_rows > 100 and a.equals(b)
    meta_a, meta_b = (json.loads(t.schema.metadata[META_KEY]) for t in (a, b))
    timing = {"build_seconds", "created_unix"}
    assert {k: v for k, v in meta_a.items() if k not in timing} == {k: v for k, v in meta_b.items() if k not in timing}
    assert not (tmp_path / "ray.parquet.parts").exists()


# ------------------------------------------------------------------------------ one-line refusals
@pytest.mark.parametrize("extra, message", [
    (["--address", "10.0.0.1:6379"], "--address needs --backend ray"),
    (["--backend", "ray", "--address", "not an address"], "is not a Ray address: use auto, HOST:PORT"),
    (["--backend", "ray", "--jobs", "2"], "--jobs is for --backend local"),
    (["--backend", "ray", "--address", "10.0.0.1:99999"], "is not a Ray address"),
    (["--backend", "ray", "--device", "cuda:1"], "--device cuda:1 with --backend ray: use cpu or cuda"),
])
def test_bad_backend_flags_are_one_line_errors(traces, tmp_path, capsys, extra, message):
    from hlm_gym.cli.main import main

    assert main([*_compare_argv(traces, tmp_path / "out", "population"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["compare", "traces"])
def test_backend_ray_without_ray_says_how_to_install_it(traces, tmp_path, capsys, monkeypatch, command):
    from hlm_gym.cli.main import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    argv = (_compare_argv(traces, tmp_path / "out", "population") if command == "compare" else
            ["traces", "build", "--prompts", "2", "--out", str(tmp_path / "out" / "t.parquet")])
    assert main([*argv, "--backend", "ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--backend ray needs Ray, which is not installed: pip install \"hlm-gym[ray]\"" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_shards_cut_items_into_contiguous_runs_of_at_least_min_size():
    from hlm_gym.parallel import shards

    assert shards(list(range(7)), 2) == [[0, 1, 2, 3], [4, 5, 6]]
    assert shards(list(range(5)), 8, min_size=2) == [[0, 1, 2], [3, 4]]
    assert shards(list(range(72)), 3) == [list(range(24)), list(range(24, 48)), list(range(48, 72))]
    assert shards([0], 4, min_size=2) == [[0]]
    assert shards(list(range(3)), 1) == [[0, 1, 2]]


def test_wdmoe_sweep_on_ray_gives_the_local_results(address, tmp_path, capsys):
    """The other env family's comparison (WDMoE-v0 on its shipped traces) through the same backend."""
    from hlm_gym.cli.main import main

    argv = ["compare", "--env", "hlm_gym/WDMoE-v0", "--scenarios", "mixed-vehicular", "--risk-weights", "2,5",
            "--timesteps", "128", "--thresholds", "0,0.2,1", "--topk", "2,8", "--episodes", "2", "--n-envs", "2",
            "--seeds", "1", *[f"--hp={k}={v}" for k, v in TINY.items()]]
    assert main([*argv, "--out", str(tmp_path / "local")]) == 0
    assert main([*argv, "--out", str(tmp_path / "ray"), "--backend", "ray", "--address", address]) == 0
    capsys.readouterr()
    assert _results(tmp_path / "ray") == _results(tmp_path / "local")


def test_local_population_sweep_does_not_depend_on_jobs(traces, local_population, tmp_path, capsys):
    """``--jobs 1`` (one population in this process) and the default (the agents dealt into one
    population per core, in worker processes): the same results files."""
    from hlm_gym.cli.main import main

    assert main([*_compare_argv(traces, tmp_path, "population"), "--jobs", "1"]) == 0
    capsys.readouterr()
    assert _results(tmp_path) == local_population


@pytest.mark.slow
def test_trace_build_command_on_ray_equals_the_local_command(address, tmp_path, capsys):
    """``hlm-gym traces build --backend ray`` with the embedded pair (loaded by each worker from
    the command's --slm/--llm/--device): the same trace file as the command without Ray."""
    import json

    import pyarrow.parquet as pq

    from hlm_gym.cli.main import main
    from hlm_gym.traces.store import META_KEY

    argv = ["traces", "build", "--split", "test", "--prompts", "3", "--max-new-tokens", "6", "--batch-size", "2",
            "--k-choices", "4"]
    assert main([*argv, "--out", str(tmp_path / "local.parquet")]) == 0
    assert main([*argv, "--out", str(tmp_path / "ray.parquet"), "--backend", "ray", "--address", address]) == 0
    capsys.readouterr()
    a, b = pq.read_table(tmp_path / "local.parquet"), pq.read_table(tmp_path / "ray.parquet")
    assert a.num_rows == 18 and a.equals(b)
    timings = {k for k in json.loads(a.schema.metadata[META_KEY]) if k.endswith("_s")}  # measured step times
    volatile = {"build_seconds", "created_unix", "build_command"} | timings
    meta_a, meta_b = (json.loads(t.schema.metadata[META_KEY]) for t in (a, b))
    same = {k: v for k, v in meta_a.items() if k not in volatile}
    assert same == {k: v for k, v in meta_b.items() if k not in volatile}
