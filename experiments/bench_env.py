"""Steps per second of the HybridLM environments against CartPole-v1, in one run.

    python experiments/bench_env.py [--trace PATH] [--seconds 3] [--num-envs 1024]

Prints CartPole-v1 single-env steps/s, HybridLM-v0 single-env steps/s and the ratio (target
>= 1), the numpy vector env's env-steps/s (num_envs x batch steps) and its ratio to CartPole
(target >= 20), and the torch vector env's env-steps/s on CPU (and CUDA when available).
Every environment is made through Gymnasium (``gym.make`` / ``gym.make_vec``), with random
actions drawn in advance.
"""

from __future__ import annotations

import argparse
import json
import time

import gymnasium as gym
import numpy as np

import hlm_gym  # noqa: F401  (registers the environments)


def _single(env, seconds: float, n_actions: int) -> float:
    if not hasattr(env, "_bench_started"):
        env.reset(seed=0)
        env._bench_started = True
    acts = np.random.default_rng(0).integers(0, n_actions, 1000).tolist()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for a in acts:
            _, _, term, trunc, _ = env.step(a)
            if term or trunc:
                env.reset()
        n += len(acts)
    return n / (time.perf_counter() - t0)


def _best_interleaved(fns: dict, seconds: float, rounds: int) -> dict:
    """Best-of-``rounds`` throughput of each benchmark, run in alternation (robust to a busy machine)."""
    best = {k: 0.0 for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            best[k] = max(best[k], fn(seconds / rounds))
    return best


def _vector(venv, seconds: float, n_actions: int, num_envs: int, to_action=lambda a: a, sync=lambda: None) -> float:
    if not getattr(venv, "_bench_started", False):
        venv.reset(seed=0)
        venv._bench_started = True
    rng = np.random.default_rng(0)
    acts = [to_action(rng.integers(0, n_actions, num_envs)) for _ in range(32)]
    for a in acts[:4]:  # warm-up
        venv.step(a)
    sync()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for a in acts:
            venv.step(a)
        n += len(acts)
    sync()
    return n * num_envs / (time.perf_counter() - t0)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", default=None, help="trace file (default: the shipped train split)")
    ap.add_argument("--scenario", default="pedestrian")
    ap.add_argument("--seconds", type=float, default=4.0, help="per benchmark, split over --rounds")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds; the best round counts")
    ap.add_argument("--num-envs", type=int, default=1024)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    kw = {"scenario": args.scenario}
    if args.trace:
        kw["trace"] = args.trace
    res: dict = {}
    cart = gym.make("CartPole-v1")
    env = gym.make("hlm_gym/HybridLM-v0", **kw)
    venv = gym.make_vec("hlm_gym/HybridLM-v0", num_envs=args.num_envs, vectorization_mode="vector_entry_point", **kw)
    best = _best_interleaved({
        "cartpole_single_steps_per_s": lambda s: _single(cart, s, 2),
        "hybridlm_single_steps_per_s": lambda s: _single(env, s, 2),
        "numpy_vector_env_steps_per_s": lambda s: _vector(venv, s, 2, args.num_envs),
    }, args.seconds, args.rounds)
    res.update(best)
    res["single_ratio"] = res["hybridlm_single_steps_per_s"] / res["cartpole_single_steps_per_s"]
    res["numpy_vector_ratio_to_cartpole"] = res["numpy_vector_env_steps_per_s"] / res["cartpole_single_steps_per_s"]
    if not args.no_torch:
        try:
            import torch

            from hlm_gym.environments.hybrid_lm.torch_vector import HybridLMTorchVectorEnv

            torch.set_num_threads(1)
            devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
            for dev in devices:
                tv = HybridLMTorchVectorEnv(num_envs=args.num_envs, device=dev, **kw)
                sync = (lambda: torch.cuda.synchronize()) if dev == "cuda" else (lambda: None)
                res[f"torch_vector_{dev}_env_steps_per_s"] = _vector(
                    tv, args.seconds, 2, args.num_envs, to_action=lambda a, d=dev: torch.as_tensor(a, device=d), sync=sync)
                if dev == "cuda":
                    n_big = 65536
                    tv = HybridLMTorchVectorEnv(num_envs=n_big, device=dev, **kw)
                    res[f"torch_vector_cuda_{n_big}_env_steps_per_s"] = _vector(
                        tv, args.seconds, 2, n_big, to_action=lambda a: torch.as_tensor(a, device="cuda"), sync=sync)
        except ImportError as exc:
            res["torch_vector"] = f"unavailable: {exc}"
    width = max(len(k) for k in res)
    for k, v in res.items():
        print(f"{k:<{width}}  {v:,.2f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    print(f"single env >= CartPole: {res['single_ratio'] >= 1.0}; numpy vector >= 20x CartPole: "
          f"{res['numpy_vector_ratio_to_cartpole'] >= 20.0}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)
    return res


if __name__ == "__main__":
    main()
