"""Benchmark the live hybrid loop against the cost of its two model steps.

Prints, on the embedded pair (or any ``--slm``/``--llm``):

* the median time of one KV-cached SLM step and one LLM step (single token);
* the median per-token time of the always-send loop, and its ratio to the sum of the two
  steps (target <= 1.3: the loop adds little beyond the model forwards);
* the median per-token time around token 64 and around token 256, and their ratio
  (target <= 1.5: KV caching keeps the per-token cost nearly flat as the response grows).

Usage::

    python experiments/bench_loop.py [--slm SPEC] [--threads N] [--tokens 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hlm_gym.lm.decoding import DecoderConfig, HybridSession
from hlm_gym.lm.models import load_pair
from hlm_gym.lm.prompts import chat_input_ids, sharegpt_prompts


def median_step_s(model, context: torch.Tensor, n: int) -> float:
    """Median time of a single-token KV-cached forward after ``context``."""
    times = []
    with torch.inference_mode():
        cache = model(context[None], use_cache=True).cache
        token = context[-1:][None]
        for _ in range(n):
            t0 = time.perf_counter()
            out = model(token, cache=cache, use_cache=True)
            times.append(time.perf_counter() - t0)
            cache = out.cache
    return statistics.median(times)


def loop_token_times(pair, prompt_ids: torch.Tensor, n_tokens: int, seed: int) -> list[float]:
    """Wall time of each draft+verify step of an always-send response of ``n_tokens``."""
    config = DecoderConfig(mode="sample", max_new_tokens=n_tokens, stop_at_eos=False)
    session = HybridSession(pair, prompt_ids, config, seed=seed)
    times = []
    while not session.done:
        t0 = time.perf_counter()
        session.draft()
        session.commit(True)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slm", default=None, help="SLM spec (default: the shipped SLM)")
    parser.add_argument("--llm", default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pair = load_pair(slm=args.slm, llm=args.llm)
    prompt = sharegpt_prompts("test", limit=1)[0]
    ids = chat_input_ids(pair.tokenizer, prompt.text)
    print(f"SLM {pair.slm_name} | LLM {pair.llm_name} | torch threads {torch.get_num_threads()} | "
          f"prompt {ids.numel()} tokens")

    loop_runs = [loop_token_times(pair, ids, args.tokens, seed) for seed in range(args.repeats)]
    window = 16
    at64 = statistics.median(t for run in loop_runs for t in run[64 - window:64])
    at_end = statistics.median(t for run in loop_runs for t in run[args.tokens - window:args.tokens])
    per_token = statistics.median(t for run in loop_runs for t in run[1:])
    # Model steps measured at the response's middle context length, same process and threads.
    context = torch.cat([ids, torch.full((args.tokens // 2,), 13)]).long()
    slm_s = median_step_s(pair.slm, context, 64)
    llm_s = median_step_s(pair.llm, context, 64)

    print(f"one SLM step            {slm_s * 1e3:8.2f} ms")
    print(f"one LLM step            {llm_s * 1e3:8.2f} ms")
    print(f"SLM + LLM steps         {(slm_s + llm_s) * 1e3:8.2f} ms")
    print(f"always-send loop        {per_token * 1e3:8.2f} ms/token  ({1 / per_token:.1f} tokens/s)")
    print(f"loop / (SLM + LLM)      {per_token / (slm_s + llm_s):8.2f}x   (target <= 1.3)")
    print(f"per-token at 64         {at64 * 1e3:8.2f} ms")
    print(f"per-token at {args.tokens:<3d}        {at_end * 1e3:8.2f} ms")
    print(f"{args.tokens} / 64 ratio          {at_end / at64:8.2f}x   (target <= 1.5)")


if __name__ == "__main__":
    main()
