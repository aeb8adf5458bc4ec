"""Shared pieces of the harness and CLI tests: a small synthetic trace set, tiny PPO budgets, the
``hlm-gym train`` command line of a tiny run, and snapshots of a folder's files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.harness.test_evaluation import write_synthetic_trace

#: PPO hyperparameters small enough for a run of a few hundred steps.
TINY = {"n_steps": 32, "batch_size": 64, "n_epochs": 2}


def make_traces(folder: Path) -> Path:
    """Train/validation/test traces of the real schema in ``folder`` (a few prompts each)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (split, n) in enumerate((("train", 24), ("validation", 8), ("test", 8))):
        write_synthetic_trace(folder / f"embedded-{split}.parquet", n_prompts=n, split=split, seed=i)
    return folder


def train_argv(traces: Path, out: Path, *, timesteps: int = 256, seed: int = 3, eval_freq: int = 128) -> list[str]:
    """``hlm-gym train`` arguments of a tiny PPO run (4 envs, 8 validation episodes, no reference line)."""
    return ["train", "--scenario", "pedestrian", "--risk-weight", "5", "--n-envs", "4", "--timesteps", str(timesteps),
            "--eval-freq", str(eval_freq), "--eval-episodes", "8", "--seed", str(seed), "--no-progress",
            "--no-reference", "--threads", "1", "--traces", str(traces), "--out", str(out),
            *[f"--hp={k}={v}" for k, v in TINY.items()]]


def start_cli(argv: list[str]) -> subprocess.Popen:
    """``hlm-gym ARGV`` in a subprocess (one torch thread), stdout and stderr captured."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    # SIGINT with its default action in the child even if this process ignores it (a background job of a
    # non-interactive shell does), so that Python installs its KeyboardInterrupt handler there
    return subprocess.Popen([sys.executable, "-m", "hlm_gym.cli.main", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes); empty if the folder does not exist."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
