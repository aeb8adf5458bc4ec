"""``hlm-gym moe build|report|info|traces``: make the MoE of the embedded model, measure it, trace it.

``moe build`` runs the MoEfication recipe (:mod:`hlm_gym.lm.moefication`) and writes the spec
(``moe.json`` + ``moe.safetensors``) to ``--out`` (pass ``hlm_gym/data/moe`` to replace the
shipped one); ``moe report`` prints the held-out perplexity table of :mod:`hlm_gym.lm.moe_report`;
``moe info`` summarises a spec; ``moe traces`` records one WDMoE trace file
(:mod:`hlm_gym.traces.wdmoe_builder`). torch and the models load only when a command runs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from hlm_gym.cli.argtypes import add_threads_argument, apply_threads, positive_int, seed

__all__ = ["register"]

_SPLITS = ("train", "validation", "test")
#: Prompts per split of the shipped WDMoE trace files (``moe traces`` without ``--prompts``).
TRACE_PROMPTS = {"train": 48, "validation": 16, "test": 32}


def register(subparsers: Any) -> None:
    """Add ``moe build``, ``moe report``, ``moe info`` and ``moe traces`` to the ``hlm-gym`` sub-parsers."""
    moe = subparsers.add_parser("moe", help="build, measure or describe the mixture of experts made from the LLM")
    sub = moe.add_subparsers(dest="moe_command", required=True)

    b = sub.add_parser("build", help="split the embedded LLM's MLPs into experts and train routers (MoEfication)")
    b.add_argument("--out", type=Path, default=Path("runs/moe"),
                   help="folder for moe.json and moe.safetensors (default %(default)s; hlm_gym/data/moe "
                        "replaces the shipped spec)")
    b.add_argument("--experts", type=positive_int, default=8, help="experts per layer (default %(default)s)")
    b.add_argument("--tokens", type=positive_int, default=24576,
                   help="ShareGPT train tokens to run (default %(default)s)")
    b.add_argument("--seed", type=seed, default=0, help="seed of the data order, clustering and routers")
    b.add_argument("--seq-len", type=positive_int, default=256, help="tokens per conversation (default %(default)s)")
    b.add_argument("--router-hidden", type=positive_int, default=32, help="router MLP width (default %(default)s)")
    b.add_argument("--router-epochs", type=positive_int, default=30, help="router epochs (default %(default)s)")
    add_threads_argument(b)
    b.add_argument("--no-progress", action="store_true", help="no progress bars")
    b.set_defaults(func=_build)

    r = sub.add_parser("report", help="held-out perplexity of the dense model and of the MoE's top-k, k = 1..E")
    r.add_argument("--spec", type=Path, default=None, help="spec folder (default: the shipped one)")
    r.add_argument("--split", choices=_SPLITS, default="test", help="ShareGPT split (default %(default)s)")
    r.add_argument("--prompts", type=positive_int, default=24, help="conversations (default %(default)s)")
    r.add_argument("--max-tokens", type=positive_int, default=160,
                   help="tokens per conversation, prompt + reply (default %(default)s)")
    r.add_argument("--batch-size", type=positive_int, default=8)
    r.add_argument("--no-oracle", action="store_true", help="skip the oracle top-k column (7 fewer passes)")
    r.add_argument("--out", type=Path, default=Path("runs/moe_report"),
                   help="folder for report.json and report.md (default %(default)s)")
    add_threads_argument(r)
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=_report)

    i = sub.add_parser("info", help="summarise an MoE spec")
    i.add_argument("--spec", type=Path, default=None, help="spec folder (default: the shipped one)")
    i.set_defaults(func=_info)

    t = sub.add_parser("traces", help="record WDMoE traces (router scores, expert Gram matrices) on ShareGPT replies")
    t.add_argument("--split", choices=_SPLITS, required=True, help="ShareGPT split")
    t.add_argument("--out", type=Path, required=True, help="trace file to write (.parquet)")
    t.add_argument("--prompts", type=positive_int, default=None,
                   help="conversations (default: " + ", ".join(f"{k} {v}" for k, v in TRACE_PROMPTS.items()) + ")")
    t.add_argument("--max-tokens", type=positive_int, default=48, help="reply tokens per conversation (default %(default)s)")
    t.add_argument("--max-prompt-tokens", type=positive_int, default=128,
                   help="skip conversations whose templated prompt is longer (default %(default)s)")
    t.add_argument("--spec", type=Path, default=None, help="MoE spec folder (default: the shipped one)")
    t.add_argument("--batch-size", type=positive_int, default=4)
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    add_threads_argument(t)
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=_traces)


def _build(args: argparse.Namespace) -> int:
    from hlm_gym.lm.moe import MoEError
    from hlm_gym.lm.moefication import MoEBuildConfig, build_embedded_moe, describe
    from hlm_gym.paths import folder_problem

    cfg = MoEBuildConfig(n_experts=args.experts, tokens=args.tokens, seed=args.seed, seq_len=args.seq_len,
                         router_hidden=args.router_hidden, router_epochs=args.router_epochs)
    cfg.check()
    problem = folder_problem(args.out)
    if problem:
        raise MoEError(f"--out {args.out}: {problem}")
    apply_threads(args.threads)
    t0 = time.perf_counter()
    spec = build_embedded_moe(cfg, args.out, progress=not args.no_progress)
    print(describe(spec))
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s")
    return 0


def _report(args: argparse.Namespace) -> int:
    from hlm_gym.lm.moe_report import run_moe_report

    apply_threads(args.threads)
    run_moe_report(spec_dir=args.spec, split=args.split, n_prompts=args.prompts, max_tokens=args.max_tokens,
                   batch_size=args.batch_size, oracle=not args.no_oracle, out_dir=args.out,
                   progress=not args.no_progress)
    print(f"wrote {args.out / 'report.json'} and {args.out / 'report.md'}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from hlm_gym.lm.moe import load_moe_spec
    from hlm_gym.lm.moefication import describe

    print(describe(load_moe_spec(args.spec)))
    return 0


def _traces(args: argparse.Namespace) -> int:
    from hlm_gym.traces.builder import check_output

    out = check_output(args.out, overwrite=args.overwrite, label="--out")
    from hlm_gym.lm.models import EMBEDDED_LLM, load_model
    from hlm_gym.lm.moe import MoEModel, load_moe_spec
    from hlm_gym.lm.prompts import sharegpt_prompts
    from hlm_gym.traces.wdmoe import write_wdmoe_traces
    from hlm_gym.traces.wdmoe_builder import build_wdmoe_traces

    spec = load_moe_spec(args.spec)  # a bad spec is refused before the model loads
    apply_threads(args.threads)
    llm = load_model(EMBEDDED_LLM)
    moe = MoEModel(llm, spec)
    n = args.prompts or TRACE_PROMPTS[args.split]
    t0 = time.perf_counter()
    traces = build_wdmoe_traces(moe, llm.tokenizer, sharegpt_prompts(args.split), max_tokens=args.max_tokens,
                                progress=not args.no_progress, split=args.split, batch_size=args.batch_size,
                                max_prompt_tokens=args.max_prompt_tokens, limit=n,
                                extra_meta={"model": llm.name, "spec": str(args.spec or "shipped")})
    write_wdmoe_traces(traces, out)
    print(f"wrote {out}: {traces.n_prompts} prompts, {traces.n_tokens} tokens, {traces.n_rows} rows, "
          f"{out.stat().st_size / 1e6:.2f} MB in {time.perf_counter() - t0:.0f} s")
    return 0
