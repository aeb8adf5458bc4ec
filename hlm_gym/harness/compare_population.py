"""The PPO runs of ``hlm-gym compare --trainer population``: every (scenario, reward setting,
seed) of the sweep as one agent of ONE population run (:mod:`hlm_gym.harness.population`).

Agent folders are ``<out>/runs/<scenario>/<lambda...>-seed<S>/`` (the SB3 trainer's run folders'
names). With ``resume`` an agent is reused when its ``summary.json`` records the same run
settings and reward setting and its files match the sha256 it records; the others are trained
together as one (smaller) population.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from hlm_gym.harness.population import AgentSpec, PopulationConfig, population_config_dict
from hlm_gym.harness.run_folder import moved_path, read_run_summary, verify_artifacts

__all__ = ["SweepRun", "population_config", "finished_agent", "train_sweep"]

#: One PPO run of a sweep: (scenario, risk weight, risk target (0: none), seed).
SweepRun = tuple[str, float, float, int]


def population_config(config: Any, rc: dict[str, Any], out: Path, runs: Sequence[SweepRun]) -> PopulationConfig:
    """The population run of ``runs`` for the comparison ``config`` (a ``CompareConfig``) with
    resolved settings ``rc``, writing into ``<out>/runs``."""
    agents = [AgentSpec(float(w), float(t) or None, int(s), sc) for sc, w, t, s in runs]
    return PopulationConfig(agents=agents, env_id=config.env_id, scenario=runs[0][0] if runs else rc["scenarios"][0],
                            device=config.device, n_envs=config.n_envs, timesteps=rc["timesteps"],
                            out=str(out / "runs"), traces=config.traces, overrides=dict(config.overrides or {}),
                            eval_episodes=config.eval_episodes)


def _info(folder: Path, summary: dict[str, Any], reused: bool, recorded_folder: Optional[Path] = None) -> dict[str, Any]:
    """A run's info from its summary; ``recorded_folder``: where the summary was written, when the run
    has since been copied to ``folder`` (its recorded paths are moved there)."""
    tensorboard = moved_path((summary.get("files") or {}).get("tensorboard", ""), recorded_folder or folder, folder)
    return {"model": str(folder / "model_last.zip"), "wall_s": summary.get("wall_s"),
            "steps_per_s": summary.get("steps_per_s"), "tensorboard": tensorboard, "reused": reused}


def finished_agent(pop: PopulationConfig, agent: AgentSpec) -> tuple[Optional[dict[str, Any]], str]:
    """``(info, why)``: the run info of ``agent`` from its folder when it finished with the same
    settings (run settings, reward setting, seed, scenario) and intact files; else ``(None, why not)``."""
    folder = Path(pop.out) / agent.folder
    s, why = read_run_summary(folder)
    if s is None:
        return None, why
    if s.get("trainer") != "population":
        return None, "not a population agent's summary (trained by another trainer)"
    current = population_config_dict(pop)
    recorded = s.get("config") if isinstance(s.get("config"), dict) else {}
    # not compared: the run's default scenario (each agent records its own) and the output folder
    # (a finished run copied into another --out is reused there; its files are checked by hash below)
    changed = [k for k in dict.fromkeys([*current, *recorded]) if recorded.get(k) != current.get(k)
               and k not in ("scenario", "out")]
    mine = {"risk_weight": agent.risk_weight, "risk_target": agent.risk_target, "seed": agent.seed,
            "scenario": pop.scenario_of(agent)}
    changed += [k for k, v in mine.items() if s.get(k) != v]
    if changed:
        return None, f"settings differ: {', '.join(changed[:3])}" + (f" and {len(changed) - 3} more"
                                                                      if len(changed) > 3 else "")
    problem = verify_artifacts(folder, s.get("artifacts"))
    if problem:
        return None, problem
    recorded_folder = Path(recorded.get("out", pop.out)) / agent.folder
    return _info(folder, s, True, recorded_folder), "finished with the same settings, files match their sha256"


def train_sweep(config: Any, rc: dict[str, Any], out: Path, runs: Sequence[SweepRun], resume: bool,
                say: Callable[[str], None], on_iteration: Optional[Callable[[int, int], None]] = None,
                runner: Any = None) -> list[dict[str, Any]]:
    """Train ``runs`` (those not reusable when ``resume``); each run's info (``model``, ``wall_s``,
    ``steps_per_s``, ``tensorboard``, ``reused``), in the order of ``runs``.

    Without a ``runner`` the agents train as one population in this process. With one (worker
    processes of this machine, or ``--backend ray``) they are cut into one population per slot
    of the runner (GPUs with a CUDA device, else CPUs; contiguous runs of the scenario-ordered
    agents, :func:`hlm_gym.parallel.shards`; at least two agents each, as a population of one
    agent rounds differently), each a job of one CPU thread (or one GPU). Every population
    trains on one CPU thread (:func:`train_shard`), and an agent's training does not depend on
    the other agents of its population, so the models do not depend on how the agents are dealt
    (tested)."""
    from hlm_gym.parallel import Job, shards

    pop = population_config(config, rc, out, runs)
    infos: list[Optional[dict[str, Any]]] = [None] * len(runs)
    if resume:
        for i, agent in enumerate(pop.agents):
            infos[i], why = finished_agent(pop, agent)
            say(f"resume: {'reuse' if infos[i] else 'retrain'} {Path(pop.out) / agent.folder}: {why}")
    todo = [i for i, info in enumerate(infos) if info is None]
    if not todo:
        return infos  # type: ignore[return-value]
    gpu = str(pop.device).startswith("cuda")
    if runner is None:
        groups = [todo]
        results = [train_shard(replace(pop, agents=[pop.agents[i] for i in todo], on_iteration=on_iteration))]
    else:
        groups = shards(todo, runner.slots(gpu=gpu), min_size=2)
        jobs = [Job(train_shard, (replace(pop, agents=[pop.agents[i] for i in group]),),
                    label=f"train population shard {k + 1}/{len(groups)} ({len(group)} agents)",
                    gpus=1.0 if gpu else 0.0, weight=0) for k, group in enumerate(groups)]
        results = runner.run(jobs)
    for group, result in zip(groups, results):
        for i, agent, summary in zip(group, result.agents, result.summaries):
            infos[i] = _info(Path(pop.out) / agent.folder, summary, False)
    return infos  # type: ignore[return-value]


def train_shard(pop: PopulationConfig) -> Any:
    """A job: train the population ``pop`` (a shard of a sweep's agents) on one CPU thread; its
    result. On the CPU, float results depend on torch's thread count (its parallel reductions
    split differently), so every population of a comparison uses one thread: the models then do
    not depend on the machine's cores, on ``--jobs`` or on the backend."""
    from hlm_gym.harness.population import train_population
    from hlm_gym.parallel.jobs import torch_threads

    with torch_threads(1):
        return train_population(pop)
