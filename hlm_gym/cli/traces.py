"""``hlm-gym traces build`` and ``hlm-gym traces info``: record or inspect per-token traces.

The parser reads the trace store's constants (:mod:`hlm_gym.traces.store` imports only numpy);
models, torch and pyarrow load only when a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hlm_gym.cli.argtypes import add_backend_arguments

__all__ = ["register"]


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


#: Where ``traces build`` writes without ``--out`` (relative to the current folder); never the package.
DEFAULT_OUT = "runs/traces/embedded-{split}.parquet"


def _check_build_args(args: argparse.Namespace) -> None:
    """One-line errors for bad numbers, before any model is loaded."""
    from hlm_gym.traces.store import TraceError

    for flag, value, low in (("--prompts", args.prompts, 1), ("--batch-size", args.batch_size, 1),
                             ("--max-new-tokens", args.max_new_tokens, 1), ("--k", args.k, 1),
                             ("--threads", args.threads, 1), ("--offset", args.offset, 0)):
        if value < low:
            raise TraceError(f"{flag} must be an integer >= {low}, got {value}")
    if args.max_prompt_tokens is not None and args.max_prompt_tokens < 1:
        raise TraceError(f"--max-prompt-tokens must be an integer >= 1, got {args.max_prompt_tokens}")
    for flag, value in (("--temperature", args.temperature), ("--theta-max", args.theta_max)):
        if not value > 0 or value == float("inf"):
            raise TraceError(f"{flag} must be a finite number > 0, got {value}")
    bad = [k for k in args.k_choices if k < 1]
    if bad or not args.k_choices:
        raise TraceError(f"--k-choices must be positive integers, got {list(args.k_choices)}")
    from hlm_gym.parallel.ray_runner import check_backend

    check_backend(args.backend, args.address, args.device)


def _cmd_build(args: argparse.Namespace) -> int:
    from hlm_gym.traces.builder import check_output

    _check_build_args(args)
    out = check_output(args.out or DEFAULT_OUT.format(split=args.split), overwrite=args.overwrite, label="--out")

    import torch

    from hlm_gym.lm.decoding import DecoderConfig
    from hlm_gym.lm.models import load_pair
    from hlm_gym.parallel import make_runner
    from hlm_gym.traces.builder import PairLoader, build_traces, sharegpt_trace_prompts
    from hlm_gym.traces.store import TraceError

    torch.set_num_threads(args.threads)
    config = DecoderConfig(mode=args.mode, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                           k=args.k, theta_max=args.theta_max)
    with make_runner(args.backend, args.address) as runner:  # a Ray cluster is reached before models load
        pair = load_pair(slm=args.slm, llm=args.llm, device=args.device)
        vocab = pair.vocab_size
        k_choices = tuple(k for k in args.k_choices if k < vocab)
        prompts = sharegpt_trace_prompts(pair.tokenizer, args.split, args.prompts, args.seed, offset=args.offset,
                                         max_prompt_tokens=args.max_prompt_tokens)
        if not prompts:
            raise TraceError(f"no prompts in split {args.split!r} after offset {args.offset}")
        # decode prompts of similar length together (less padding); seeds stay tied to the prompt
        prompts = sorted(prompts, key=lambda p: len(p.ids))
        print(f"tracing {len(prompts)} {args.split} prompts with {pair.slm_name} / {pair.llm_name} -> {out}",
              flush=True)
        # the workers load the same pair; local model folders by their absolute path
        specs = (("slm", _absolute(args.slm)), ("llm", _absolute(args.llm)), ("device", args.device))
        build_traces(pair, prompts, config, out, k_choices=k_choices, batch_size=args.batch_size,
                     extra_meta={"slm_spec": args.slm or "embedded-slm", "llm_spec": args.llm or "embedded",
                                 "seed": args.seed, "split": args.split, "prompt_offset": args.offset,
                                 "max_prompt_tokens": args.max_prompt_tokens,
                                 "build_command": "hlm-gym traces " + " ".join(sys.argv[sys.argv.index("build"):])
                                 if "build" in sys.argv else " ".join(sys.argv)},
                     log=lambda msg: print(msg, flush=True), on_stop=_note_stop, overwrite=args.overwrite,
                     runner=runner if args.backend == "ray" else None,
                     loader=PairLoader("hlm_gym.lm.models:load_pair", specs), job_threads=args.threads)
    return 0


def _absolute(spec: str | None) -> str | None:
    """A model spec, with an existing local path made absolute (Ray workers start in other folders)."""
    import os

    return os.path.abspath(spec) if spec is not None and os.path.exists(spec) else spec


def _note_stop(msg: str) -> None:
    """What an interrupted or failed build leaves behind, to stderr."""
    print(f"hlm-gym: {msg}", file=sys.stderr, flush=True)


def _cmd_info(args: argparse.Namespace) -> int:
    from hlm_gym.traces.store import load_traces, summarize

    print(json.dumps(summarize(load_traces(args.path)), indent=2))
    return 0


def register(subparsers: Any) -> None:
    """Add ``traces build`` and ``traces info`` to the ``hlm-gym`` sub-parsers."""
    from hlm_gym.traces.store import DEFAULT_K_CHOICES, SPLITS

    tr = subparsers.add_parser("traces", help="record or inspect per-token traces of the hybrid loop")
    sub = tr.add_subparsers(dest="traces_command", required=True)
    b = sub.add_parser("build", help="run the always-send loop over prompts and record per-token traces")
    b.add_argument("--slm", default=None, help="SLM spec (default: embedded-slm)")
    b.add_argument("--llm", default=None, help="LLM spec (default: embedded)")
    b.add_argument("--split", choices=SPLITS, default="train")
    b.add_argument("--prompts", type=int, default=400, help="number of prompts (default %(default)s)")
    b.add_argument("--offset", type=int, default=0, help="skip this many prompts of the split first")
    b.add_argument("--max-new-tokens", type=int, default=128)
    b.add_argument("--max-prompt-tokens", type=int, default=None,
                   help="leave out prompts longer than this many tokens (chat template included)")
    b.add_argument("--mode", choices=("sample", "greedy"), default="sample")
    b.add_argument("--temperature", type=float, default=1.0)
    b.add_argument("--k", type=int, default=20, help="temperature samples of the uncertainty u")
    b.add_argument("--theta-max", type=float, default=2.0)
    b.add_argument("--k-choices", type=_int_tuple, default=DEFAULT_K_CHOICES,
                   help="CU-HLM top-k sizes to record (default %(default)s; V is always implied)")
    b.add_argument("--seed", type=int, default=0,
                   help="base seed; the i-th prompt of the split (file order) uses seed + i")
    b.add_argument("--batch-size", type=int, default=16, help="prompts decoded together")
    b.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    b.add_argument("--device", default="cpu")
    b.add_argument("--out", default=None,
                   help="output .parquet file (default: " + DEFAULT_OUT.replace("{split}", "SPLIT") + " in the "
                        "current folder; the shipped files of the package are replaced only when named here, "
                        "e.g. --out hlm_gym/data/traces/embedded-train.parquet --overwrite)")
    b.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out file (an interrupted build of the same settings resumes "
                        "from OUT.parts/ either way)")
    add_backend_arguments(b, "every chunk of --batch-size prompts (its worker loads the models once; --threads "
                             "CPU threads, or one GPU with --device cuda, per task)")
    b.set_defaults(func=_cmd_build)
    i = sub.add_parser("info", help="summarise a trace file")
    i.add_argument("path")
    i.set_defaults(func=_cmd_info)

