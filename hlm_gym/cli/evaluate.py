"""``hlm-gym evaluate``: run a policy on held-out traces (or live) and report metrics with CIs."""

from __future__ import annotations

import argparse
from typing import Any

from hlm_gym.cli.argtypes import (add_env_argument, add_risk_weight_argument, device, one_line_errors, positive_int,
                                  seed, unit_float)

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    from hlm_gym.harness.checks import check_device, check_out_dir
    from hlm_gym.harness.errors import EvaluationError
    from hlm_gym.harness.families import family_for
    from hlm_gym.harness.evaluation import check_evaluation, evaluate, format_table, write_outputs
    from hlm_gym.harness.families import default_scenario

    if args.scenario is None:
        args.scenario = default_scenario(args.env_id, "static-good")

    check_evaluation(args.policy, env_id=args.env_id, scenario=args.scenario, split=args.split, episodes=args.episodes,
                     seed=args.seed, mode=args.mode, num_envs=args.num_envs, reference=args.reference)
    env_kwargs, live_options = {}, None
    if args.mode == "live":
        live_options = {"progress": True} | ({"batch_size": args.batch_size} if args.batch_size else {})
        if family_for(args.env_id).name == "hybrid_lm":
            env_kwargs["device"] = check_device(args.device) if args.device != "auto" else _auto_device()
        elif args.device != "cpu":
            raise EvaluationError(f"--device is a live option of the HybridLM envs, not of {args.env_id}")
    elif args.device != "cpu" or args.batch_size is not None:
        raise EvaluationError("--device and --batch-size are live-mode options: add --mode live, or drop them")
    if args.out is not None:  # before the evaluation: a bad --out must not cost the work
        check_out_dir(args.out, "--out")
    res = evaluate(args.policy, env_id=args.env_id, scenario=args.scenario, split=args.split, episodes=args.episodes,
                   seed=args.seed, mode=args.mode, risk_weight=args.risk_weight, risk_target=args.risk_target,
                   num_envs=args.num_envs, traces=args.traces, reference=args.reference, env_kwargs=env_kwargs,
                   live_options=live_options)
    print(format_table(res))
    if args.mode == "live":
        c = res.config
        print(f"live: {c['episodes']} episodes in {c['wall_s']:.1f} s wall time"
              + (f" (batches of {c['batch_size']} responses on {c['device']})" if "batch_size" in c else ""))
    if args.out is not None:
        paths = write_outputs(res, args.out)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _auto_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def register(subparsers: Any) -> None:
    """Add ``evaluate`` to the ``hlm-gym`` sub-parsers."""
    p = one_line_errors(subparsers.add_parser("evaluate", help="evaluate a policy on held-out traces or live",
                                              description=__doc__.splitlines()[0].split(": ", 1)[1]))
    p.add_argument("--policy", required=True,
                   help="policy spec: always, never, random:R, threshold:U, uhlm[:prone], bild[:A], calm[:L], "
                        "ltt[:delta=D,eps=E], channel-aware[:lambda=L,target=R], ppo:PATH.zip; "
                        "hlm_gym/WDMoE-v0: topk:K, wlr:T[,k=K], myopic[:lambda=L], ppo:PATH.zip")
    add_env_argument(p)
    p.add_argument("--scenario", default=None,
                   help="scenario name or YAML path (default static-good; hlm_gym/WDMoE-v0: close-static)")
    p.add_argument("--split", default="test", choices=("train", "validation", "test"))
    p.add_argument("--episodes", type=positive_int, default=100)
    p.add_argument("--seed", type=seed, default=0, help="random seed, an integer >= 0 (default 0)")
    p.add_argument("--mode", choices=("trace", "live"), default="trace")
    add_risk_weight_argument(p)
    p.add_argument("--risk-target", type=unit_float, default=None,
                   help="the env's risk_target R (default: the environment's, 0)")
    p.add_argument("--traces", default=None, help="trace folder/file (default: the shipped traces)")
    p.add_argument("--num-envs", type=positive_int, default=16, help="parallel environments (trace mode)")
    p.add_argument("--reference", choices=("auto", "live", "trace"), default="auto",
                   help="live mode: the LLM-alone response for fidelity: the trace's recorded always-send response, "
                        "or decoded live (auto, the default: the trace's when it was recorded with the live pair)")
    p.add_argument("--device", type=device, default="cpu",
                   help="live mode: where the model pair runs (cpu, cuda, cuda:N or auto; default cpu)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="live mode: responses (HybridLM) or sequences (WDMoE) decoded together (default 64 / 32)")
    p.add_argument("--out", default=None, help="folder for summary.csv, episodes.csv and result.json")
    p.set_defaults(func=_run)
