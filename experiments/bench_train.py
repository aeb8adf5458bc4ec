"""PPO training throughput (steps/s) of ``hlm-gym train`` by device and environment backend, in one run.

    python experiments/bench_train.py [--timesteps 65536] [--n-envs 256] [--devices cpu,cuda]
                                      [--scenario vehicular] [--hp batch_size=4096] [--out runs/bench_train]

For every device in ``--devices`` (``cuda`` is skipped with a note when torch sees no GPU)
and both environment backends (``numpy``: the batched numpy env on the CPU; ``torch``: the
batched torch env on the device), it trains PPO with the shipped ``agents/ppo.yml``
hyperparameters (``--hp KEY=VALUE`` overrides one) at ``--n-envs`` environments for ``--timesteps`` steps, with one evaluation
at the end (after one short untimed warm-up run), and prints the steps/s of each run and its ratio to the CPU/numpy run. The runs
are the same code path as ``hlm-gym train`` (``hlm_gym.harness.training.train``); steps/s is
``summary.json``'s (timesteps over the whole run's wall time, evaluation included).
Writes ``bench_train.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml

from hlm_gym.paths import atomic_write_text
from hlm_gym.harness.training import TrainConfig, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timesteps", type=int, default=65536)
    ap.add_argument("--n-envs", type=int, default=256)
    ap.add_argument("--devices", default="cpu,cuda")
    ap.add_argument("--scenario", default="vehicular")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE",
                    help="override one PPO hyperparameter of agents/ppo.yml (repeatable)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_train"))
    args = ap.parse_args()
    overrides = {}
    for item in args.hp:
        key, eq, val = item.partition("=")
        if not eq:
            ap.error(f"--hp expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(val)
    if args.threads:
        torch.set_num_threads(args.threads)
    # one short untimed run first: imports, allocator and SB3 set-up would otherwise count
    # against whichever configuration runs first
    train(TrainConfig(algo="ppo", scenario=args.scenario, risk_weight=5.0, device="cpu", n_envs=args.n_envs,
                      timesteps=4096, seed=0, out=str(args.out / "warmup"), eval_freq=4096, eval_episodes=8,
                      reference=False))
    rows = []
    for device in [d.strip() for d in args.devices.split(",") if d.strip()]:
        if device.startswith("cuda") and not torch.cuda.is_available():
            print(f"{device}: skipped (torch sees no CUDA device)")
            continue
        for backend in ("numpy", "torch"):
            cfg = TrainConfig(algo="ppo", scenario=args.scenario, risk_weight=5.0, device=device, env_backend=backend,
                              n_envs=args.n_envs, timesteps=args.timesteps, seed=0,
                              out=str(args.out / f"{device}-{backend}"), eval_freq=args.timesteps,
                              eval_episodes=32, reference=False, overrides=dict(overrides))
            s = train(cfg).summary
            rows.append({"device": device, "env_backend": backend, "n_envs": args.n_envs, "overrides": overrides,
                         "timesteps": s["timesteps"], "wall_s": s["wall_s"], "steps_per_s": s["steps_per_s"]})
            print(f"{device:>6} {backend:>6}: {s['steps_per_s']:>10,.0f} steps/s ({s['timesteps']} steps, "
                  f"{s['wall_s']:.1f} s)", flush=True)
    base = next((r["steps_per_s"] for r in rows if r["device"] == "cpu" and r["env_backend"] == "numpy"), None)
    for r in rows:
        r["ratio_to_cpu_numpy"] = None if not base else round(r["steps_per_s"] / base, 3)
    if base:
        print("ratio to cpu/numpy: " + ", ".join(f"{r['device']}/{r['env_backend']} {r['ratio_to_cpu_numpy']}x"
                                                  for r in rows))
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "bench_train.json", json.dumps(
        {"torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
         "cpu_threads": torch.get_num_threads(), "runs": rows}, indent=2) + "\n")
    print(f"wrote {args.out / 'bench_train.json'}")


if __name__ == "__main__":
    main()
