"""``hlm-gym train`` and ``hlm-gym compare``: learned agents and the learned-vs-analytic comparison.

Wired into :mod:`hlm_gym.cli.main` through :func:`add_train_commands`; also runnable as
``python -m hlm_gym.cli.train {train,compare} ...``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from hlm_gym.cli.argtypes import nonneg_float, positive_int, unit_float

__all__ = ["add_train_commands", "main"]


def _float_list(text: str) -> list[float]:
    if text.strip().lower() == "none":
        return []
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _hyper_override(text: str) -> tuple[str, Any]:
    import yaml

    key, eq, val = text.partition("=")
    if not eq or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), yaml.safe_load(val)


def _configure_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--algo", default="ppo", choices=("ppo", "a2c", "dqn"))
    p.add_argument("--env", default="hlm_gym/HybridLM-v0", help="environment id (default hlm_gym/HybridLM-v0)")
    p.add_argument("--scenario", default="pedestrian", help="scenario name or YAML path (default pedestrian)")
    p.add_argument("--lambda", dest="lambda_", type=nonneg_float, default=None,
                   help="risk weight of the reward (default: the environment's)")
    p.add_argument("--risk-target", type=unit_float, default=None,
                   help="the env's risk_target R: a skip costs lambda * (beta - R), the Lagrangian of 'mean "
                        "rejection probability of skipped tokens <= R' (default 0: prices the error rate)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (the networks, and the "
                   "environments with --env-backend torch)")
    p.add_argument("--env-backend", choices=["numpy", "torch"], default="numpy",
                   help="batched environment implementation: numpy on the CPU, or torch on --device "
                        "(default %(default)s)")
    p.add_argument("--n-envs", type=positive_int, default=None, help="parallel environments (default: YAML)")
    p.add_argument("--timesteps", type=positive_int, default=None, help="training steps (default: YAML n_timesteps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/train", help="output folder (default runs/train)")
    p.add_argument("--traces", default=None, help="trace folder/file (default: the shipped traces)")
    p.add_argument("--hyperparams", default=None, help="a zoo-style YAML (default: the shipped agents/<algo>.yml)")
    p.add_argument("--hp", dest="overrides", type=_hyper_override, action="append", default=[],
                   metavar="KEY=VALUE", help="override one hyperparameter (repeatable), e.g. --hp n_steps=64")
    p.add_argument("--eval-freq", type=positive_int, default=None,
                   help="timesteps between validation evaluations (default: 5 per run)")
    p.add_argument("--eval-episodes", type=positive_int, default=64)
    p.add_argument("--no-reference", action="store_true", help="do not log the U-HLM reference lines")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from hlm_gym.harness.training import TrainConfig, format_summary, train

    _threads(args.threads)
    cfg = TrainConfig(algo=args.algo, env_id=args.env, scenario=args.scenario, lambda_=args.lambda_,
                      risk_target=args.risk_target,
                      device=args.device, env_backend=args.env_backend, n_envs=args.n_envs, timesteps=args.timesteps, seed=args.seed, out=args.out,
                      traces=args.traces, hyperparams=args.hyperparams, overrides=dict(args.overrides),
                      eval_freq=args.eval_freq, eval_episodes=args.eval_episodes, reference=not args.no_reference,
                      progress_bar=not args.no_progress and sys.stderr.isatty())
    result = _guard(train, cfg)
    print(format_summary(result))
    return 0


def _configure_compare(p: argparse.ArgumentParser) -> None:
    from hlm_gym.harness.compare import DEFAULTS

    d = DEFAULTS
    p.add_argument("--scenarios", type=_str_list, default=list(d["scenarios"]),
                   help=f"comma-separated scenarios (default {','.join(d['scenarios'])})")
    p.add_argument("--lambdas", type=_float_list, default=None,
                   help=f"PPO risk weights of the error-rate runs, risk_target 0 (default "
                        f"{','.join(map(str, d['lambdas']))}; --full: {','.join(map(str, d['full_lambdas']))})")
    p.add_argument("--risk-targets", type=_float_list, default=None,
                   help=f"risk targets R of the matched-risk runs, at --target-lambda (default "
                        f"{','.join(map(str, d['risk_targets']))}; --full: "
                        f"{','.join(map(str, d['full_risk_targets']))}; 'none' for no such runs)")
    p.add_argument("--target-lambda", type=nonneg_float, default=d["target_lambda"],
                   help=f"risk weight of the risk-target runs (default {d['target_lambda']:g})")
    p.add_argument("--timesteps", type=positive_int, default=None,
                   help=f"PPO steps per run (default {d['timesteps']}; --full: {d['full_timesteps']})")
    p.add_argument("--full", action="store_true",
                   help="the large budget (more steps, lambdas and risk targets; use --jobs on a many-core machine)")
    p.add_argument("--thresholds", type=_float_list, default=None, help="U-HLM u_th sweep (comma-separated)")
    p.add_argument("--ltt-deltas", type=_float_list, default=None, help="Learn-then-Test risk levels delta")
    p.add_argument("--episodes", type=positive_int, default=None, help="test episodes per policy and scenario")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--env-backend", choices=["numpy", "torch"], default="numpy",
                   help="PPO training environments: numpy on the CPU, or torch on --device")
    p.add_argument("--n-envs", type=positive_int, default=None, help="PPO parallel environments (default: YAML)")
    p.add_argument("--traces", default=None, help="trace folder (default: the shipped traces)")
    p.add_argument("--hp", dest="overrides", type=_hyper_override, action="append", default=[],
                   metavar="KEY=VALUE", help="override one PPO hyperparameter of agents/ppo.yml (repeatable)")
    p.add_argument("--out", default="runs/compare", help="output folder (default runs/compare)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--jobs", type=int, default=0,
                   help="PPO runs trained at once, in worker processes of one torch thread each "
                        "(default 0: one per CPU core, at most 4)")
    p.add_argument("--resume", action="store_true",
                   help="reuse the training runs in --out that finished with the same settings "
                        "(their summary.json says so); train only the others")
    p.set_defaults(func=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from hlm_gym.harness.compare import CompareConfig, compare

    _threads(args.threads)
    cfg = CompareConfig(scenarios=tuple(args.scenarios), lambdas=None if args.lambdas is None else tuple(args.lambdas),
                        risk_targets=None if args.risk_targets is None else tuple(args.risk_targets),
                        target_lambda=args.target_lambda,
                        timesteps=args.timesteps, full=args.full,
                        thresholds=None if args.thresholds is None else tuple(args.thresholds),
                        ltt_deltas=None if args.ltt_deltas is None else tuple(args.ltt_deltas),
                        episodes=args.episodes, seed=args.seed, device=args.device,
                        env_backend=args.env_backend, n_envs=args.n_envs,
                        traces=args.traces, out=args.out, progress=True, overrides=dict(args.overrides),
                        jobs=args.jobs, resume=args.resume)
    _guard(compare, cfg)
    return 0


def _threads(n: int) -> None:
    if n and n > 0:
        import torch

        torch.set_num_threads(n)


class _CLIError(ValueError):
    pass


def _guard(fn, *a: Any) -> Any:
    """Run ``fn``; turn the project's ValueError subclasses (bad settings) into one-line errors."""
    from hlm_gym.environments.hybrid_lm.config import EnvConfigError
    from hlm_gym.harness.evaluation import EvaluationError
    from hlm_gym.harness.training import TrainingError

    try:
        return fn(*a)
    except (TrainingError, EnvConfigError, EvaluationError) as exc:
        raise _one_line(exc) from None
    except TypeError as exc:  # unknown environment option
        if "for the HybridLM environment" in str(exc):
            raise _one_line(exc) from None
        raise


def _one_line(exc: BaseException) -> BaseException:
    """A ValueError the lead's ``main`` reports in one line (PolicyError is one of its classes)."""
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return _TrainCLIError(msg)


def _train_cli_error_class():
    from hlm_gym.policies.base import PolicyError

    class TrainCLIError(PolicyError):
        """A bad setting of ``hlm-gym train``/``compare`` (reported in one line)."""

    return TrainCLIError


_TrainCLIError = _train_cli_error_class()


def add_train_commands(subparsers) -> None:
    """Add ``train`` and ``compare`` to the ``hlm-gym`` sub-parsers."""
    p = subparsers.add_parser("train", help="train an SB3 agent (PPO by default) on a HybridLM environment",
                              description="Train a Stable-Baselines3 agent with hyperparameters from agents/<algo>.yml; "
                                          "TensorBoard logs, validation evaluations, best and last checkpoints.")
    _configure_train(p)
    p = subparsers.add_parser("compare", help="the main job: learned PPO vs analytic thresholds on the test split",
                              description="Train PPO over sweeps of the reward (risk weights lambda; risk targets R), sweep the U-HLM, Learn-then-Test and "
                                          "channel-aware thresholds, evaluate all on the test split per scenario; "
                                          "write a table (terminal/Markdown/CSV), Pareto plots and TensorBoard logs.")
    _configure_compare(p)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hlm-gym")
    sub = p.add_subparsers(dest="command", required=True)
    add_train_commands(sub)
    args = p.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:
        print(f"hlm-gym: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
