"""A sweep of PPO agents trained by both trainers on the same machine, in one run: the SB3 trainer
(one ``hlm_gym.harness.training.train`` run per agent, as ``hlm-gym compare --trainer sb3`` does)
and the population trainer (the agents of every scenario as batched runs,
``hlm_gym.harness.population``).

    python experiments/bench_sweep.py [--scenarios pedestrian,vehicular,cell-edge-fast-fading] [--full]
                                      [--timesteps 100000] [--seeds 0,1,2]
                                      [--risk-weights 1,2,3,5] [--risk-targets 0.2,0.3,0.4,0.45]
                                      [--target-risk-weight 10] [--sb3-jobs N] [--threads 1]
                                      [--population-jobs N] [--device cpu] [--traces DIR]
                                      [--out DIR] [--json FILE]

Each trainer runs as ``hlm-gym compare`` runs it on this machine: SB3 one run per worker process,
``--sb3-jobs`` at a time (compare's ``--jobs``: one per CPU core, at most 4), each of one torch
thread; the population trainer's agents dealt into as many populations, each a worker process of
one torch thread. ``--sb3-jobs 1`` gives the SB3 baseline of one run after another.

The default sweep is ``hlm-gym compare``'s: 3 scenarios x its reward settings (error-rate runs at
each risk weight, risk-target runs at each target with the target risk weight) x 3 seeds, each
agent trained for ``--timesteps`` steps (compare's 100k) with agents/ppo.yml. Both trainers
evaluate each final model once, on the same validation episodes (``--eval-episodes``, seed +
10000): the SB3 runs through the evaluation harness at the end (no periodic evaluation, no
reference line), the population in one batch (so both do the same work besides training).
Prints the wall time of each trainer, the validation reward per step per setting (mean and
spread over seeds) under both with the parity check (is the population's mean within SB3's
seed range?), and a last line ``sweep speed-up: X.Yx`` (SB3 wall time / population wall time).

``--full`` benchmarks compare --full's sweep (17 reward settings x 3 scenarios x 3 seeds = 153
agents of 10^6 steps). On a GPU machine, the issue's check of the ``--full`` training in under 2
minutes is (one population on the GPU, as compare trains there; the SB3 side would take hours)::

    python experiments/bench_sweep.py --full --trainers population --device cuda --json FILE
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hlm_gym.harness.compare_defaults import DEFAULTS  # noqa: E402


def _floats(text: str) -> list[float]:
    return [] if text.strip().lower() == "none" else [float(x) for x in text.split(",")]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def _settings(args: argparse.Namespace) -> list[tuple[float, Optional[float]]]:
    """(risk weight, risk target) of every reward setting of the sweep, as compare builds them."""
    return ([(w, None) for w in args.risk_weights] + [(args.target_risk_weight, r) for r in args.risk_targets])


def _sb3_one(config: Any, threads: int) -> dict[str, Any]:
    import torch

    from hlm_gym.harness.training import train

    torch.set_num_threads(threads)
    return train(config).summary


def _run_sb3(args: argparse.Namespace, scenario: str, out: Path) -> tuple[float, dict]:
    from hlm_gym.harness.training import TrainConfig

    configs = []
    for w, r in _settings(args):
        for s in args.seeds:
            name = f"lambda{w:g}" + (f"-target{r:g}" if r else "") + f"-seed{s}"
            configs.append(((w, r, s), TrainConfig(scenario=scenario, risk_weight=w, risk_target=r, seed=s,
                                                   device=args.device, timesteps=args.timesteps,
                                                   out=str(out / "sb3" / scenario / name), traces=args.traces,
                                                   eval_freq=2**40, eval_episodes=args.eval_episodes,
                                                   reference=False)))
    t0 = time.perf_counter()
    if args.sb3_jobs <= 1:
        summaries = [_sb3_one(c, args.threads) for _, c in configs]
    else:
        with cf.ProcessPoolExecutor(args.sb3_jobs, mp_context=mp.get_context("spawn")) as pool:
            summaries = list(pool.map(_sb3_one, [c for _, c in configs], [args.threads] * len(configs)))
    wall = time.perf_counter() - t0
    return wall, {key: s["last"] for (key, _), s in zip(configs, summaries)}


def _run_population(args: argparse.Namespace, scenarios: list[str], out: Path) -> tuple[float, dict, int]:
    """Every agent of the sweep, all scenarios, trained as ``hlm-gym compare`` trains them: dealt into
    ``--population-jobs`` populations (contiguous runs of the scenario-ordered agents), each a worker
    process of one CPU thread; one population in this process when it is 1."""
    from dataclasses import replace

    from hlm_gym.harness.compare_population import train_shard
    from hlm_gym.harness.population import AgentSpec, PopulationConfig
    from hlm_gym.parallel import Job, ProcessRunner, shards

    agents = [AgentSpec(w, r, s, sc) for sc in scenarios for w, r in _settings(args) for s in args.seeds]
    config = PopulationConfig(agents=agents, scenario=scenarios[0], device=args.device, timesteps=args.timesteps,
                              out=str(out / "population"), traces=args.traces, eval_episodes=args.eval_episodes)
    groups = shards(list(range(len(agents))), args.population_jobs, min_size=2)
    jobs = [Job(train_shard, (replace(config, agents=[agents[i] for i in g]),)) for g in groups]
    t0 = time.perf_counter()
    results = ProcessRunner(len(groups)).run(jobs)
    wall = time.perf_counter() - t0
    summaries = {i: s for g, r in zip(groups, results) for i, s in zip(g, r.summaries)}
    return wall, {(a.scenario, a.risk_weight, a.risk_target, a.seed): summaries[i]["last"]
                  for i, a in enumerate(agents)}, int(summaries[0]["timesteps"])


def _warm_up(args: argparse.Namespace, scenario: str, out: Path) -> None:
    """A tiny run of each trainer first (imports, trace and scenario loading, caches), untimed, so
    that neither trainer pays the process's start-up costs in the timings."""
    from hlm_gym.harness.population import AgentSpec, PopulationConfig, train_population
    from hlm_gym.harness.training import TrainConfig, train

    tiny = {"n_steps": 8, "batch_size": 16, "n_epochs": 1}
    train_population(PopulationConfig(agents=[AgentSpec(1.0, None, 0)], scenario=scenario, device=args.device,
                                      n_envs=2, timesteps=16, out=str(out / "warm-up" / "population"),
                                      traces=args.traces, overrides=tiny, eval_episodes=2, tensorboard=False))
    train(TrainConfig(scenario=scenario, risk_weight=1.0, device=args.device, n_envs=2, timesteps=16,
                      out=str(out / "warm-up" / "sb3"), traces=args.traces, overrides=tiny, eval_episodes=2,
                      reference=False))


def _welch_p(a: list[float], b: list[float]) -> float:
    """Two-sided p-value of Welch's t-test that ``a`` and ``b`` have the same mean (NaN if undefined)."""
    from scipy.stats import ttest_ind

    if len(a) < 2 or len(b) < 2:
        return float("nan")
    return float(ttest_ind(a, b, equal_var=False).pvalue)


def _cell(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():+.4f} ({v.min():+.4f}..{v.max():+.4f})"


def _resolve(args: argparse.Namespace) -> argparse.Namespace:
    """The defaults that depend on other flags: compare's sweep (``--full``: compare --full's) where
    not given, and the jobs of each trainer as compare would run them (one per CPU core, at most 4;
    the population trainer one population on a CUDA device, as compare trains on a GPU)."""
    from hlm_gym.harness.compare import _gpus, auto_jobs

    pre = "full_" if args.full else ""
    if args.timesteps is None:
        args.timesteps = DEFAULTS[pre + "timesteps"]
    if args.risk_weights is None:
        args.risk_weights = list(DEFAULTS[pre + "risk_weights"])
    if args.risk_targets is None:
        args.risk_targets = list(DEFAULTS[pre + "risk_targets"])
    n_agents = _n_agents(args)
    if args.population_jobs is None:
        args.population_jobs = 1 if _gpus(args.device) else auto_jobs(n_agents)  # compare's rule for the device
    if args.sb3_jobs is None:
        args.sb3_jobs = auto_jobs(n_agents)
    return args


def _scenarios(args: argparse.Namespace) -> list[str]:
    """The sweep's scenario names."""
    return [s.strip() for s in args.scenarios.split(",")]


def _n_agents(args: argparse.Namespace) -> int:
    """Agents of the sweep: scenarios x reward settings x seeds."""
    return len(_scenarios(args)) * len(_settings(args)) * len(args.seeds)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scenarios", default=",".join(DEFAULTS["scenarios"]),
                   help=f"comma-separated scenarios (default {','.join(DEFAULTS['scenarios'])})")
    p.add_argument("--full", action="store_true",
                   help="compare --full's sweep: its risk weights, risk targets and steps per agent (flags given "
                        "explicitly win)")
    p.add_argument("--timesteps", type=int, default=None,
                   help=f"steps per agent (default {DEFAULTS['timesteps']}, compare's; {DEFAULTS['full_timesteps']} "
                        "with --full)")
    p.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="seeds per setting (default 0,1,2)")
    p.add_argument("--risk-weights", type=_floats, default=None, help="default: compare's (--full: compare --full's)")
    p.add_argument("--risk-targets", type=_floats, default=None, help="default: compare's (--full: compare --full's)")
    p.add_argument("--target-risk-weight", type=float, default=DEFAULTS["target_risk_weight"])
    p.add_argument("--eval-episodes", type=int, default=DEFAULTS["eval_episodes"])
    p.add_argument("--trainers", default="sb3,population", help="which trainers to run (default both)")
    p.add_argument("--sb3-jobs", type=int, default=None,
                   help="SB3 runs at a time, in worker processes of --threads torch threads (default: compare's, one "
                        "per CPU core, at most 4)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per SB3 process (default 1)")
    p.add_argument("--population-jobs", type=int, default=None,
                   help="population trainer: worker processes of one CPU thread, each training a contiguous share "
                        "of the agents, as hlm-gym compare does (default: compare's, one per CPU core, at most 4; "
                        "one population on a CUDA device)")
    p.add_argument("--device", default="cpu", help="device of both trainers (default cpu)")
    p.add_argument("--traces", default=None, help="trace folder (default: the shipped traces)")
    p.add_argument("--out", default=None, help="where the runs go (default: a temporary folder)")
    p.add_argument("--json", default=None, help="also write the timings and the parity table to this JSON file")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = _resolve(_parser().parse_args(argv))

    import torch

    torch.set_num_threads(args.threads)
    trainers = [t.strip() for t in args.trainers.split(",")]
    scenarios = _scenarios(args)
    tmp = None
    if args.out is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-sweep-")
        out = Path(tmp.name)
    else:
        out = Path(args.out)
    n_agents = _n_agents(args)
    print(f"sweep: {len(scenarios)} scenario(s) x {len(_settings(args))} reward settings x {len(args.seeds)} seeds "
          f"= {n_agents} agents, {args.timesteps} steps each; device {args.device}; SB3: {args.sb3_jobs} job(s) of "
          f"{args.threads} torch thread(s); population: {args.population_jobs} process(es) of one torch thread",
          flush=True)
    walls = {"sb3": 0.0, "population": 0.0}
    results: dict[str, dict] = {"sb3": {}, "population": {}}
    steps = None
    try:
        for scenario in scenarios:
            _warm_up(args, scenario, out)
        if "population" in trainers:
            wall, res, steps = _run_population(args, scenarios, out)
            walls["population"] = wall
            results["population"] = res
            print(f"population trainer: {wall:.1f} s ({n_agents} agents, {steps} steps each)", flush=True)
        if "sb3" in trainers:
            for scenario in scenarios:
                wall, res = _run_sb3(args, scenario, out)
                walls["sb3"] += wall
                results["sb3"].update({(scenario, *k): v for k, v in res.items()})
                print(f"[{scenario}] SB3 trainer: {wall:.1f} s ({n_agents // len(scenarios)} runs)", flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()

    print()
    print("validation reward/step per setting: mean over seeds (min..max); tokens/s and risk: means over seeds")
    head = f"{'scenario':<22} {'lambda':>6} {'R':>5}"
    for t in trainers:
        head += f" | {t + ' reward/step':<34} {'tok/s':>6} {'risk':>6}"
    both = "sb3" in trainers and "population" in trainers
    if both:
        head += " | population mean within SB3's seed range? | Welch p"
    print(head)
    n_within, n_differ, table = 0, 0, []
    for scenario in scenarios:
        for w, r in _settings(args):
            row = f"{scenario:<22} {w:>6g} {(r or 0):>5g}"
            cells = {}
            for t in trainers:
                ms = [results[t][(scenario, w, r, s)] for s in args.seeds]
                cells[t] = [m["reward_per_step"] for m in ms]
                row += (f" | {_cell(cells[t]):<34} "
                        f"{np.mean([m['tokens_per_s'] for m in ms]):>6.2f} {np.nanmean([m['risk'] for m in ms]):>6.3f}")
            extra = {}
            if both:
                within = bool(min(cells["sb3"]) <= np.mean(cells["population"]) <= max(cells["sb3"]))
                n_within += within
                p_value = _welch_p(cells["sb3"], cells["population"])
                n_differ += bool(p_value < 0.05)
                row += f" | {'yes' if within else 'no':<3} | {p_value:.3f}"
                extra = {"within_sb3_range": within, "welch_p": p_value}
            table.append({"scenario": scenario, "risk_weight": w, "risk_target": r,
                          **{f"{t}_reward_per_step": cells[t] for t in trainers}} | extra)
            print(row)
    for t in trainers:
        print(f"{t} trainer wall time: {walls[t]:.1f} s")
    if both:
        print(f"parity: the population's mean validation reward is within SB3's seed range in {n_within}/{len(table)} "
              f"settings; the two trainers' means differ at p < 0.05 (Welch's t over seeds) in {n_differ}/{len(table)} "
              f"(about {0.05 * len(table):.1f} expected by chance if they are the same)")
    if args.json:
        doc = {"command": "python experiments/bench_sweep.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "scenarios": scenarios, "settings": len(_settings(args)), "seeds": args.seeds,
               "timesteps": args.timesteps, "device": args.device, "sb3_jobs": args.sb3_jobs,
               "sb3_threads": args.threads, "population_jobs": args.population_jobs, "population_threads": 1,
               "wall_s": walls, "speed_up": walls["sb3"] / walls["population"] if both else None,
               "parity_within": n_within if both else None, "parity_differ_p05": n_differ if both else None,
               "validation": table}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    if both:
        print(f"sweep speed-up: {walls['sb3'] / walls['population']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
