"""``hlm-gym compare``: learned PPO policies against the analytic thresholds, the project's main job."""

from __future__ import annotations

import argparse
from typing import Any

from hlm_gym.cli.argtypes import (add_backend_arguments, add_env_argument, add_threads_argument, apply_threads, device,
                                  float_list, hyper_override, nonneg_float, nonneg_int, one_line_errors, positive_int,
                                  seed, str_list)

__all__ = ["register"]


def int_list(text: str) -> list[int]:
    """Comma-separated whole numbers (``1e2`` accepted), e.g. ``--topk 1,2,8``."""
    values = float_list(text)
    if not values or any(not float(v).is_integer() for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}")
    return [int(v) for v in values]


def _run(args: argparse.Namespace) -> int:
    from hlm_gym.harness.compare import CompareConfig, compare

    def opt(values):
        return None if values is None else tuple(values)

    cfg = CompareConfig(scenarios=opt(args.scenarios), risk_weights=opt(args.risk_weights),
                        risk_targets=opt(args.risk_targets), target_risk_weight=args.target_risk_weight,
                        timesteps=args.timesteps, full=args.full, thresholds=opt(args.thresholds),
                        ltt_deltas=opt(args.ltt_deltas), bild_alphas=opt(args.bild_alphas),
                        calm_lambdas=opt(args.calm_lambdas), episodes=args.episodes, seed=args.seed, seeds=args.seeds,
                        trainer=args.trainer, device=args.device,
                        env_backend=args.env_backend, n_envs=args.n_envs, traces=args.traces, out=args.out,
                        progress=True, overrides=dict(args.overrides), jobs=args.jobs, resume=args.resume,
                        env_id=args.env_id, topk=opt(args.topk), live=args.live, live_episodes=args.live_episodes,
                        backend=args.backend, address=args.address)
    apply_threads(args.threads)
    compare(cfg)
    return 0


def register(subparsers: Any) -> None:
    """Add ``compare`` to the ``hlm-gym`` sub-parsers."""
    from hlm_gym.harness.compare_defaults import DEFAULTS as d  # plain data, no heavy import

    def nums(key: str) -> str:
        return ",".join(f"{x:g}" for x in d[key])
    p = one_line_errors(subparsers.add_parser("compare", help="the main job: learned PPO vs analytic thresholds on the test split",
                              description="Train PPO over sweeps of the reward (risk weights lambda; risk targets R), "
                                          "sweep the env family's analytic rules (HybridLM: U-HLM, Learn-then-Test, "
                                          "BiLD, CALM and channel-aware thresholds; WDMoE: weight-to-latency ratio, "
                                          "gate top-k, myopic channel-aware), evaluate all "
                                          "on the test split per scenario; write a table (terminal/Markdown/CSV), "
                                          "Pareto plots and TensorBoard logs. Defaults below are the HybridLM "
                                          "family's; another --env uses its family's own scenarios and sweeps, and "
                                          "refuses sweep flags that do not apply to it. Every flag is checked before any "
                                          "work; --out is locked while the comparison runs and its results are "
                                          "replaced only when the whole comparison completes."))
    add_env_argument(p)
    p.add_argument("--scenarios", type=str_list, default=None,
                   help=f"comma-separated scenarios (default {','.join(d['scenarios'])}; other env families: "
                        f"theirs, e.g. WDMoE's fleets close-static,mixed-vehicular)")
    p.add_argument("--risk-weights", dest="risk_weights", type=float_list, default=None, metavar="L1,L2,...",
                   help=f"PPO risk weights lambda of the error-rate runs, risk_target 0 (default {nums('risk_weights')}; "
                        f"--full: {nums('full_risk_weights')}; 'none' for no such runs)")
    p.add_argument("--lambdas", dest="risk_weights", type=float_list, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--risk-targets", type=float_list, default=None,
                   help=f"risk targets R of the matched-risk runs, at --target-risk-weight (default "
                        f"{nums('risk_targets')}; --full: {nums('full_risk_targets')}; 'none' for no such runs)")
    p.add_argument("--target-risk-weight", dest="target_risk_weight", type=nonneg_float,
                   default=d["target_risk_weight"], metavar="L",
                   help=f"risk weight of the risk-target runs (default {d['target_risk_weight']:g})")
    p.add_argument("--target-lambda", dest="target_risk_weight", type=nonneg_float, default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)
    p.add_argument("--timesteps", type=positive_int, default=None,
                   help=f"PPO steps per run (default {d['timesteps']}; --full: {d['full_timesteps']})")
    p.add_argument("--full", action="store_true",
                   help="the large budget (more steps, risk weights and risk targets)")
    p.add_argument("--thresholds", type=float_list, default=None,
                   help="the reference rule's threshold sweep, comma-separated values in [0, 1]: HybridLM's U-HLM "
                        "u_th (default: 16 values from 0 to 1), WDMoE's weight-to-latency ratio T (default: its "
                        "family's)")
    p.add_argument("--ltt-deltas", type=float_list, default=None,
                   help=f"HybridLM only: Learn-then-Test risk levels delta, comma-separated values in (0, 1) (default {nums('ltt_deltas')})")
    p.add_argument("--bild-alphas", type=float_list, default=None,
                   help=f"HybridLM only: BiLD fallback sweep (send iff top-1 probability < alpha), values in [0, 1] (default "
                        f"{nums('bild_alphas')}; 'none' for no such rules)")
    p.add_argument("--calm-lambdas", type=float_list, default=None,
                   help=f"HybridLM only: CALM softmax-margin sweep (send iff margin < lambda(t)), values in [0, 1] (default "
                        f"{nums('calm_lambdas')}; 'none' for no such rules)")
    p.add_argument("--topk", type=int_list, default=None, metavar="K1,K2,...",
                   help="WDMoE only: the gate's top-K rules, whole numbers of experts (default: its family's)")
    p.add_argument("--live", action="store_true",
                   help="also run every policy in the env family's live mode on the test split and add its live "
                        "metrics to the rows (HybridLM: tokens/s, transmission rate, risk and error rate with the "
                        "real SLM-LLM pair, and fidelity; about 4 min per policy for the 60 test prompts on 2 CPU "
                        "cores, so keep the sweep small; WDMoE: perplexity of the real MoE with the policy's "
                        "selections)")
    p.add_argument("--live-episodes", type=positive_int, default=None,
                   help="--live: episodes per policy (default: --episodes)")
    p.add_argument("--episodes", type=positive_int, default=None, help="test episodes per policy and scenario")
    p.add_argument("--seed", type=seed, default=0, help="random seed, an integer >= 0 (default 0); the PPO runs "
                   "use seeds --seed .. --seed + --seeds - 1, the test episodes --seed + 20000")
    p.add_argument("--seeds", type=positive_int, default=d["seeds"],
                   help=f"training seeds per reward setting (default {d['seeds']}); each PPO point is the mean over "
                        "its seeds with a 95%% t interval over seeds")
    p.add_argument("--trainer", choices=("population", "sb3"), default=d["trainer"],
                   help=f"PPO trainer (default {d['trainer']}): population trains every run of the sweep as one "
                        "batched torch run on --device; sb3 trains one Stable-Baselines3 run per point (--jobs at a "
                        "time)")
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--env-backend", choices=["numpy", "torch"], default="numpy",
                   help="--trainer sb3: PPO training environments, numpy on the CPU or torch on --device (the "
                        "population trainer always steps the torch env)")
    p.add_argument("--n-envs", type=positive_int, default=None, help="PPO parallel environments (default: YAML)")
    p.add_argument("--traces", default=None, help="trace folder (default: the shipped traces)")
    p.add_argument("--hp", dest="overrides", type=hyper_override, action="append", default=[],
                   metavar="KEY=VALUE", help="override one PPO hyperparameter of agents/ppo.yml (repeatable)")
    p.add_argument("--out", default="runs/compare", help="output folder (default runs/compare)")
    add_threads_argument(p)
    p.add_argument("--jobs", type=nonneg_int, default=0,
                   help="--backend local: training and test-evaluation processes at once, one torch thread each "
                        "(--trainer sb3: one run each; population: the sweep's agents dealt into this many "
                        "populations, which gives the same models as one; evaluations: one policy each, the same "
                        "rows as in this process) (default 0: one per CPU core, at most 4; a CUDA --device trains "
                        "one population and evaluates in this process)")
    add_backend_arguments(p, "every training run (population trainer: every shard of the population, one per CPU, "
                             "or per GPU with --device cuda) and every evaluation")
    p.add_argument("--resume", action="store_true",
                   help="reuse the training runs in --out that finished with the same settings and whose files "
                        "match the sha256 their summary.json records; train only the others (one line each says why)")
    p.set_defaults(func=_run)
