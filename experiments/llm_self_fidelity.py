"""How similar are two samples of the LLM itself? The scale for live mode's ``fidelity``.

    python experiments/llm_self_fidelity.py [--split test] [--seed-offset 1000003] [--json FILE]

Decodes every prompt of the shipped trace split always-send with the live pair (an exact LLM
sample, :class:`hlm_gym.lm.batch_decoding.BatchedSession`) but with other per-prompt seeds
(the trace's seed + ``--seed-offset``), and prints the fidelity (cosine similarity of the
MiniLM embeddings, :func:`hlm_gym.lm.fidelity.response_fidelity`) of these responses to the
trace's recorded LLM responses: what a policy that made *no* error but drew other random numbers
would score. Mean with a 95 % Student-t interval over prompts.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="test", choices=("train", "validation", "test"))
    ap.add_argument("--seed-offset", type=int, default=1_000_003)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = ap.parse_args()

    from hlm_gym.environments.hybrid_lm.live import live_decoder_config
    from hlm_gym.harness.results import t_interval
    from hlm_gym.lm.batch_decoding import BatchedSession
    from hlm_gym.lm.fidelity import response_fidelity
    from hlm_gym.lm.models import load_pair
    from hlm_gym.paths import atomic_write_text
    from hlm_gym.traces.store import default_trace_path, load_traces

    tr = load_traces(default_trace_path(args.split))
    meta = tr.meta
    pair = load_pair(slm=meta.get("slm_spec"), llm=meta.get("llm_spec"))
    cfg = live_decoder_config(meta)
    eos = meta.get("eos_token_id")
    decode = lambda ids: pair.tokenizer.decode([int(i) for i in ids if i != eos])  # noqa: E731
    n = tr.n_prompts
    t0 = time.perf_counter()
    outputs: list[list[int]] = []
    for start in range(0, n, args.batch_size):
        idx = range(start, min(n, start + args.batch_size))
        s = BatchedSession(pair, [tr.prompt_token_ids(i) for i in idx],
                           [int(meta["prompts"][i]["seed"]) + args.seed_offset for i in idx], cfg)
        while not s.done:
            s.commit(np.ones(len(s.drafts().rows), dtype=bool))
        outputs += s.outputs
    starts, stops = tr.offsets[:-1], tr.offsets[1:]
    token = tr.columns["token"]
    refs = [decode(token[starts[i]:stops[i]]) for i in range(n)]
    f = [float(x) for x in response_fidelity([decode(o) for o in outputs], refs)]
    mean, _, high, _ = t_interval(f)
    half = high - mean
    wall = time.perf_counter() - t0
    print(f"fidelity of another LLM sample to the trace's LLM sample ({args.split}, {n} prompts): "
          f"{mean:.3f} +- {half:.3f} (95% t over prompts); {wall:.0f} s")
    if args.json:
        atomic_write_text(args.json, json.dumps({"split": args.split, "prompts": n, "seed_offset": args.seed_offset,
                                                 "fidelity_mean": mean, "fidelity_ci95": half, "per_prompt": f,
                                                 "wall_s": round(wall, 1)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
