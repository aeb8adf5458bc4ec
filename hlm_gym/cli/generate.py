"""``hlm-gym generate``: one response from the live hybrid SLM/LLM loop, each token marked.

Tokens are shown as accepted, ``[skipped]`` (not uploaded) or ``<resampled>`` (rejected by the
LLM and replaced), in colour on a terminal. Models and torch are imported only when the command
runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from hlm_gym.cli.argtypes import nonneg_float

__all__ = ["register", "render_tokens", "RECOMMENDED_TEMPERATURE", "RECOMMENDED_TOP_P"]

#: The embedded LLM's recommended decoding: the usage example of the SmolLM2 Instruct model cards
#: (``model.generate(..., temperature=0.2, top_p=0.9, do_sample=True)``).
RECOMMENDED_TEMPERATURE = 0.2
RECOMMENDED_TOP_P = 0.9

_STYLE = {  # outcome -> (ANSI colour, plain-text opening and closing marker)
    "accepted": ("\033[32m", "", ""),
    "skipped": ("\033[36m", "[", "]"),
    "resampled": ("\033[31m", "<", ">"),
}
_RESET = "\033[0m"


def render_tokens(pieces: Sequence[tuple[str, str]], colour: bool) -> str:
    """Join ``(text, outcome)`` pieces, marking outcomes with colour or plain brackets."""
    out = []
    for text, outcome in pieces:
        ansi, left, right = _STYLE[outcome]
        out.append(f"{ansi}{text}{_RESET}" if colour else f"{left}{text}{right}")
    return "".join(out)


def _legend(colour: bool) -> str:
    return "legend: " + " ".join(render_tokens([(name, name)], colour) for name in _STYLE)


def _run(args: argparse.Namespace) -> int:
    import torch

    from hlm_gym.lm.decoding import DecoderConfig, HybridDecoder
    from hlm_gym.lm.models import load_pair
    from hlm_gym.lm.prompts import PromptError, chat_input_ids
    from hlm_gym.policies import make_draft_policy, validate_spec

    if not args.prompt or not args.prompt.strip():
        raise PromptError("empty prompt: pass some text with --prompt")
    validate_spec(args.policy)
    config = DecoderConfig(mode="greedy" if args.greedy else "sample", max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature, top_p=args.top_p)
    if args.threads:
        torch.set_num_threads(args.threads)
    pair = load_pair(slm=args.slm, llm=args.llm, device=args.device)
    ids = chat_input_ids(pair.tokenizer, args.prompt)
    policy = make_draft_policy(args.policy, max_tokens=config.max_new_tokens)
    result = HybridDecoder(pair, config).generate(ids, policy, seed=args.seed)
    colour = sys.stdout.isatty() and not args.no_colour
    pieces = []
    for r in result.records:
        if r.token == pair.tokenizer.eos_token_id:
            continue
        outcome = "skipped" if not r.sent else ("accepted" if r.accepted else "resampled")
        pieces.append((pair.tokenizer.decode([r.token]), outcome))
    print(f"SLM: {pair.slm_name}\nLLM: {pair.llm_name}\npolicy: {args.policy}, mode: {config.mode}, seed: {args.seed}")
    print(_legend(colour))
    print()
    print(render_tokens(pieces, colour))
    print()
    s = result.summary()
    print(f"tokens {s['tokens']}  sent {s['sent']}  transmission rate {s['transmission_rate']:.3f}  "
          f"skip rate {s['skip_rate']:.3f}  rejections {s['rejections']}  "
          f"LLM tokens fed {s['llm_forward_tokens']}  loop {s['tokens_per_s']:.1f} tokens/s")
    return 0


def _positive_float(text: str) -> float:
    """A finite number > 0."""
    value = nonneg_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _top_p(text: str) -> float:
    """A number in (0, 1]."""
    value = nonneg_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def register(subparsers: Any) -> None:
    """Add ``generate`` to the ``hlm-gym`` sub-parsers."""
    p = subparsers.add_parser("generate", help="generate one response with the live hybrid SLM/LLM loop",
                              description="Generate a response with the hybrid loop and mark each token as "
                                          "skipped [..], accepted, or resampled <..> by the LLM.")
    p.add_argument("--prompt", required=True, help="the user prompt (chat template applied)")
    p.add_argument("--slm", default=None, help="SLM spec (default: the shipped distilled SLM)")
    p.add_argument("--llm", default=None, help="LLM spec (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--policy", default="always",
                   help="policy spec: always, never, threshold:U (send iff u > U), uhlm, bild:A, calm:L, "
                        "ltt:..., channel-aware:..., ppo:PATH.zip (see docs/policies.md)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=_positive_float, default=RECOMMENDED_TEMPERATURE,
                   help="temperature of both models' distributions (default %(default)s with --top-p "
                        f"{RECOMMENDED_TOP_P}: the usage example of the SmolLM2 model cards; 1 with --top-p 1 samples "
                        "the models as they are)")
    p.add_argument("--top-p", dest="top_p", type=_top_p, default=RECOMMENDED_TOP_P,
                   help="nucleus of both models' tempered distributions (default %(default)s); speculative sampling "
                        "then returns exactly the LLM's tempered nucleus distribution")
    p.add_argument("--greedy", action="store_true", help="greedy mode: accept iff the draft is the LLM's argmax "
                   "(--temperature and --top-p do not change the output)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-colour", action="store_true", help="plain markers even on a terminal")
    p.set_defaults(func=_run)
