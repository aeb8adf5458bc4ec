"""One position of the hybrid loop: the SLM's draft and its speculative verification by the LLM.

Shared by the one-response loop (:class:`hlm_gym.lm.decoding.HybridSession`) and the batched
one (:class:`hlm_gym.lm.batch_decoding.BatchedSession`: live mode and the trace builder), so that a traced response and a live one with the
same seed draw the same random numbers in the same order.

Each response owns three CPU generators derived from its seed (:func:`prompt_generators`): one
for draft sampling, one for the uncertainty signals, one for verification. Keeping them apart
makes a never-send run sample exactly the tokens the SLM alone would, and lets a policy's
send/skip choice leave the drafts of later positions unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from hlm_gym.lm.speculative import nucleus, verify_detailed, verify_greedy
from hlm_gym.lm.uncertainty import compute_signals

MODES = ("sample", "greedy")


@dataclass(frozen=True)
class PromptGenerators:
    """The three seeded CPU generators of one response."""

    draft: torch.Generator
    signal: torch.Generator
    verify: torch.Generator


def prompt_generators(seed: int) -> PromptGenerators:
    """The generators of the response decoded with ``seed`` (seeded ``3 seed + 0, 1, 2``)."""
    gens = []
    for offset in range(3):
        g = torch.Generator(device="cpu")
        g.manual_seed(int(seed) * 3 + offset)
        gens.append(g)
    return PromptGenerators(*gens)


@dataclass(frozen=True)
class DraftSample:
    """The drafted token, the SLM distribution ``q`` it came from, and the SLM's signals."""

    token: int
    q_probs: torch.Tensor
    q_draft: float
    signals: dict[str, float]


@dataclass(frozen=True)
class Verdict:
    """Outcome of verifying one draft: the output token and the quantities behind the decision.

    ``uniform`` is the acceptance draw (NaN in greedy mode); ``beta = max(0, 1 - p_d / q_d)``
    is computed with the ``q`` the LLM saw (after a top-k upload, if any).
    """

    accepted: bool
    token: int
    uniform: float
    beta: float
    p_draft: float


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def sample_draft(logits: torch.Tensor, h_prev: torch.Tensor, h_last: torch.Tensor, mode: str,
                 generators: PromptGenerators, k: int = 20, theta_max: float = 2.0,
                 top_p: float = 1.0) -> DraftSample:
    """Draft the next token from the SLM's (temperature-scaled) ``logits`` and compute its signals.

    ``sample`` mode draws from ``q = nucleus(softmax(logits), top_p)`` (the SLM's nucleus,
    :func:`~hlm_gym.lm.speculative.nucleus`; ``top_p`` 1: all of it) with ``generators.draft``; ``greedy``
    takes the argmax. The signals (:func:`hlm_gym.lm.uncertainty.compute_signals`, ``k``
    temperature samples up to ``theta_max``) use ``generators.signal`` and the last two hidden
    states ``h_prev``, ``h_last``. ``q_probs`` stays on the device of ``logits``.
    """
    _check_mode(mode)
    q = nucleus(torch.softmax(logits, dim=-1), top_p)
    if mode == "greedy":
        d = int(torch.argmax(q))
    else:
        d = int(torch.multinomial(q.cpu(), 1, generator=generators.draft))
    sig = compute_signals(logits.cpu(), d, generators.signal, h_prev.cpu(), h_last.cpu(), k=k, theta_max=theta_max)
    return DraftSample(d, q, float(q[d]), {name: float(v) for name, v in sig.items()})


def verify_draft(q_seen: torch.Tensor, p: torch.Tensor, draft_token: int, mode: str,
                 generator: torch.Generator) -> Verdict:
    """Verify ``draft_token`` against the LLM's distribution ``p``, given the ``q`` the LLM saw.

    ``sample``: exact speculative sampling (:func:`hlm_gym.lm.speculative.verify_detailed`, draws
    from ``generator``); ``greedy``: accept iff the draft is the LLM's argmax (no draw).
    """
    _check_mode(mode)
    d = int(draft_token)
    p_d = float(p[d])
    if mode == "greedy":
        accepted, token = verify_greedy(p, d)
        q_d = float(q_seen[d])
        beta = max(0.0, 1.0 - p_d / q_d) if q_d > 0 else 0.0
        return Verdict(accepted, token, math.nan, beta, p_d)
    v = verify_detailed(q_seen.cpu(), p.cpu(), d, generator)
    return Verdict(v.accepted, v.token, v.uniform, v.beta, p_d)
