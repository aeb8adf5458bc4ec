"""``hlm-gym evaluate``: run a policy on held-out traces (or live) and report metrics with CIs.

Wired into :mod:`hlm_gym.cli.main` through :func:`add_evaluate_commands`; also runnable as
``python -m hlm_gym.cli.evaluate ...`` (same arguments).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from hlm_gym.cli.argtypes import nonneg_float, positive_int

__all__ = ["add_evaluate_commands", "main"]


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", required=True,
                   help="policy spec: always, never, random:R, threshold:U, uhlm[:prone], bild[:A], calm[:L], "
                        "ltt[:delta=D,eps=E], channel-aware[:lambda=L], ppo:PATH.zip")
    p.add_argument("--scenario", default="static-good", help="scenario name or YAML path (default static-good)")
    p.add_argument("--split", default="test", choices=("train", "validation", "test"))
    p.add_argument("--episodes", type=positive_int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", choices=("trace", "live"), default="trace")
    p.add_argument("--lambda", dest="lambda_", type=nonneg_float, default=None,
                   help="risk weight of the reward (default: the environment's)")
    p.add_argument("--traces", default=None, help="trace folder/file (default: the shipped traces)")
    p.add_argument("--num-envs", type=positive_int, default=16, help="parallel environments (trace mode)")
    p.add_argument("--reference", choices=("live", "trace"), default="live",
                   help="live mode: the LLM-alone response for fidelity, decoded live (default) or the trace's")
    p.add_argument("--out", default=None, help="folder for summary.csv, episodes.csv and result.json")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from hlm_gym.harness.evaluation import evaluate, format_table, write_outputs

    res = evaluate(args.policy, scenario=args.scenario, split=args.split, episodes=args.episodes, seed=args.seed,
                   mode=args.mode, lambda_=args.lambda_, num_envs=args.num_envs, traces=args.traces,
                   reference=args.reference)
    print(format_table(res))
    if args.out:
        paths = write_outputs(res, args.out)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def add_evaluate_commands(subparsers) -> None:
    """Add ``evaluate`` to the ``hlm-gym`` sub-parsers."""
    p = subparsers.add_parser("evaluate", help="evaluate a policy on held-out traces or live",
                              description=__doc__.splitlines()[0])
    _configure(p)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hlm-gym evaluate", description=__doc__.splitlines()[0])
    _configure(p)
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:  # PolicyError, ScenarioError, TraceError, EvaluationError
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"hlm-gym: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
