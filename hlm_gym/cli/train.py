"""``hlm-gym train``: train a Stable-Baselines3 agent on any env the harness knows.

Every flag and hyperparameter is checked before any work (:func:`hlm_gym.harness.training.prepare`);
the output folder is locked for the run and its files replaced only when the run completes.

``--trainer population`` trains a whole sweep of PPO agents as one batched run
(:mod:`hlm_gym.harness.population`): the agents are the cross product of ``--risk-weights``,
``--risk-targets`` and ``--seeds`` (``--combine zip``: the lists side by side), each written to
``<out>/<agent-name>/``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from hlm_gym.cli.argtypes import (add_env_argument, add_risk_weight_argument, add_threads_argument, apply_threads,
                                  device, float_list, hyper_override, one_line_errors, positive_int, seed,
                                  str_list, unit_float)

__all__ = ["register"]


_POPULATION_FLAGS = (("risk_weights", "--risk-weights"), ("risk_targets", "--risk-targets"), ("seeds", "--seeds"),
                     ("combine", "--combine"), ("scenarios", "--scenarios"))


def seed_list(text: str) -> list[int]:
    """Comma-separated seeds (integers in [0, SEED_MAX])."""
    items = [x.strip() for x in text.split(",")]
    if not text.strip() or any(not x for x in items):
        raise argparse.ArgumentTypeError(f"expected comma-separated seeds, got {text!r}")
    return [seed(x) for x in items]


def _population_config(args: argparse.Namespace):
    """The population run of ``--trainer population`` (flags that do not apply refused in one line)."""
    from hlm_gym.harness.errors import TrainingError
    from hlm_gym.harness.population import PopulationConfig, population_agents

    if args.algo != "ppo":
        raise TrainingError(f"--trainer population trains PPO only, not --algo {args.algo}")
    for single, plural in (("risk_weight", "risk_weights"), ("risk_target", "risk_targets"), ("seed", "seeds")):
        if getattr(args, single) is not None and getattr(args, plural) is not None:
            raise TrainingError(f"--{single.replace('_', '-')} and --{plural.replace('_', '-')} both given; "
                                "use one of them")
    if args.eval_freq is not None:
        raise TrainingError("--eval-freq: the population trainer evaluates each agent once, at the end "
                            "(use --trainer sb3 for periodic evaluations)")
    if args.env_backend not in (None, "torch"):
        raise TrainingError(f"--env-backend {args.env_backend}: the population trainer steps the batched torch env "
                            "(omit --env-backend or give torch)")
    weights = args.risk_weights if args.risk_weights is not None else [args.risk_weight]
    targets = args.risk_targets if args.risk_targets is not None else [args.risk_target]
    seeds = args.seeds if args.seeds is not None else [args.seed if args.seed is not None else 0]
    if args.scenarios is not None and args.scenario_given:
        raise TrainingError("--scenario and --scenarios both given; use one of them")
    agents = population_agents(weights or [None], targets or [None], seeds, args.combine or "product",
                               scenarios=args.scenarios or [None])
    return PopulationConfig(agents=agents, env_id=args.env_id, scenario=args.scenario, device=args.device,
                            n_envs=args.n_envs, timesteps=args.timesteps, out=args.out, traces=args.traces,
                            hyperparams=args.hyperparams, overrides=dict(args.overrides),
                            eval_episodes=args.eval_episodes, verbose=0 if args.no_progress else 1)


def _run(args: argparse.Namespace) -> int:
    from hlm_gym.harness.errors import TrainingError
    from hlm_gym.harness.training import TrainConfig, format_summary, train

    from hlm_gym.harness.families import default_scenario

    args.scenario_given = args.scenario is not None
    if args.scenario is None:
        args.scenario = default_scenario(args.env_id, "pedestrian")
    if args.trainer == "population":
        from hlm_gym.harness.population import format_population_summary, train_population

        config = _population_config(args)
        apply_threads(args.threads)
        print(format_population_summary(train_population(config)))
        return 0
    for attr, flag in _POPULATION_FLAGS:
        if getattr(args, attr) is not None:
            raise TrainingError(f"{flag} defines a population: it needs --trainer population")
    if args.seed is None:
        args.seed = 0
    if args.env_backend is None:
        args.env_backend = "numpy"

    cfg = TrainConfig(algo=args.algo, env_id=args.env_id, scenario=args.scenario, risk_weight=args.risk_weight,
                      risk_target=args.risk_target, device=args.device, env_backend=args.env_backend,
                      n_envs=args.n_envs, timesteps=args.timesteps, seed=args.seed, out=args.out, traces=args.traces,
                      hyperparams=args.hyperparams, overrides=dict(args.overrides), eval_freq=args.eval_freq,
                      eval_episodes=args.eval_episodes, reference=not args.no_reference,
                      progress_bar=not args.no_progress and sys.stderr.isatty())
    apply_threads(args.threads)
    print(format_summary(train(cfg)))
    return 0


def register(subparsers: Any) -> None:
    """Add ``train`` to the ``hlm-gym`` sub-parsers."""
    p = one_line_errors(subparsers.add_parser(
        "train", help="train an SB3 agent (PPO by default) on an hlm-gym environment",
        description="Train a Stable-Baselines3 agent with hyperparameters from agents/<algo>.yml; TensorBoard logs, "
                    "validation evaluations, best and last checkpoints. The output folder is locked while the run "
                    "writes into it; its files are replaced only when the run completes."))
    p.add_argument("--algo", default="ppo", choices=("ppo", "a2c", "dqn"))
    p.add_argument("--trainer", choices=("sb3", "population"), default="sb3",
                   help="sb3: one Stable-Baselines3 run (default); population: a sweep of PPO agents (--risk-weights "
                        "x --risk-targets x --seeds) trained together as one batched run on --device, each agent's "
                        "files in <out>/<agent-name>/")
    add_env_argument(p)
    p.add_argument("--scenario", default=None, help="scenario name or YAML path (default pedestrian; hlm_gym/WDMoE-v0: close-static)")
    add_risk_weight_argument(p)
    p.add_argument("--risk-target", type=unit_float, default=None,
                   help="the env's risk_target R: a skip costs lambda * (beta - R), the Lagrangian of 'mean "
                        "rejection probability of skipped tokens <= R' (default 0: prices the error rate)")
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N or auto (the networks, and the "
                   "environments with --env-backend torch)")
    p.add_argument("--env-backend", choices=["numpy", "torch"], default=None,
                   help="batched environment implementation: numpy on the CPU, or torch on --device "
                        "(default numpy; the population trainer always steps the torch env)")
    p.add_argument("--n-envs", type=positive_int, default=None, help="parallel environments (default: YAML)")
    p.add_argument("--timesteps", type=positive_int, default=None, help="training steps (default: YAML n_timesteps)")
    p.add_argument("--seed", type=seed, default=None, help="random seed, an integer >= 0 (default 0)")
    p.add_argument("--risk-weights", type=float_list, default=None, metavar="L1,L2,...",
                   help="--trainer population: the agents' risk weights lambda")
    p.add_argument("--risk-targets", type=float_list, default=None, metavar="R1,R2,...",
                   help="--trainer population: the agents' risk targets R (each in [0, 1])")
    p.add_argument("--seeds", type=seed_list, default=None, metavar="S1,S2,...",
                   help="--trainer population: the agents' seeds (default 0)")
    p.add_argument("--scenarios", type=str_list, default=None, metavar="S1,S2,...",
                   help="--trainer population: train the agents on each of these scenarios (one env per scenario, "
                        "all agents in one batch; folders <out>/<scenario>/<agent-name>/)")
    p.add_argument("--combine", choices=("product", "zip"), default=None,
                   help="--trainer population: every combination of the three lists (product, default) or the "
                        "i-th of each list together (zip; a list of one value goes with every agent)")
    p.add_argument("--out", default="runs/train", help="output folder, locked for the run (default runs/train)")
    p.add_argument("--traces", default=None, help="trace folder/file (default: the shipped traces)")
    p.add_argument("--hyperparams", default=None, help="a zoo-style YAML (default: the shipped agents/<algo>.yml)")
    p.add_argument("--hp", dest="overrides", type=hyper_override, action="append", default=[],
                   metavar="KEY=VALUE", help="override one hyperparameter (repeatable), e.g. --hp n_steps=64")
    p.add_argument("--eval-freq", type=positive_int, default=None,
                   help="timesteps between validation evaluations (default: 5 per run)")
    p.add_argument("--eval-episodes", type=positive_int, default=64)
    p.add_argument("--no-reference", action="store_true",
                   help="do not log the env family's reference policy (U-HLM) as reference lines")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_threads_argument(p)
    p.set_defaults(func=_run)
