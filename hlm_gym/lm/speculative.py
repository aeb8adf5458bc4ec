"""Speculative verification of SLM drafts by the LLM, as pure functions on probability tensors.

Notation follows BACKGROUND.md section 1: ``q`` is the SLM's (draft) distribution, ``p`` the
LLM's (target) distribution over a vocabulary of size ``V``, ``d`` the drafted token.

* exact rule (draft length 1): accept ``d`` with probability ``min(1, p_d / q_d)``; otherwise
  sample from ``norm(max(p - q, 0))``. The output is distributed exactly as ``p``.
* greedy rule: accept iff ``d == argmax p``; otherwise output ``argmax p``.
* CU-HLM: upload only the top-``k`` entries of ``q``; the receiver rebuilds ``q_hat`` with the
  remaining mass spread uniformly over the other ``V - k`` tokens, and verifies against it.
* BiLD rollback (not exact): the first position whose LLM negative log-likelihood exceeds
  ``alpha_rb`` is rolled back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Verification:
    """Outcome of one exact verification step.

    ``uniform`` is the draw compared against ``p_d / q_d``; replaying it with the same
    distributions reproduces ``accepted``.
    """

    accepted: bool
    token: int
    uniform: float
    beta: float


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """``probs`` (last axis) restricted to its nucleus and renormalised: the most probable tokens
    whose cumulative probability before them is below ``top_p`` (at least the top token; ties at
    the boundary kept in sort order); ``top_p >= 1`` returns ``probs`` unchanged. Applied to both
    the draft and the target distribution, speculative sampling still returns exactly the
    target's nucleus distribution."""
    if top_p >= 1.0:
        return probs
    sorted_p, order = torch.sort(probs, dim=-1, descending=True)
    before = torch.cumsum(sorted_p, dim=-1) - sorted_p
    keep_sorted = before < top_p
    keep_sorted[..., 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    kept = torch.where(keep, probs, torch.zeros_like(probs))
    return kept / kept.sum(dim=-1, keepdim=True)


def rejection_probability(draft_probs: torch.Tensor, target_probs: torch.Tensor,
                          draft_token: torch.Tensor | int) -> torch.Tensor:
    """``beta = max(0, 1 - p_d / q_d)``: the probability that the draft ``d`` is rejected.

    Works on a single distribution (``(V,)`` with an int token) or a batch (``(..., V)`` with
    tokens of shape ``(...)``).
    """
    d = torch.as_tensor(draft_token, device=draft_probs.device, dtype=torch.long)
    q_d = draft_probs.gather(-1, d.unsqueeze(-1)).squeeze(-1)
    p_d = target_probs.gather(-1, d.unsqueeze(-1)).squeeze(-1)
    ratio = torch.where(q_d > 0, p_d / q_d.clamp_min(torch.finfo(q_d.dtype).tiny), torch.ones_like(q_d))
    return (1.0 - ratio).clamp_min(0.0)


def expected_acceptance(draft_probs: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """``sum_v min(p_v, q_v)``: the acceptance probability of a draft sampled from ``q``."""
    return torch.minimum(draft_probs, target_probs).sum(-1)


def residual_distribution(draft_probs: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """``norm(max(p - q, 0))``, the distribution a rejected draft is resampled from.

    Where ``p <= q`` everywhere (so a rejection has probability zero), ``p`` is returned.
    """
    resid = (target_probs - draft_probs).clamp_min(0.0)
    total = resid.sum(-1, keepdim=True)
    return torch.where(total > 0, resid / total.clamp_min(torch.finfo(resid.dtype).tiny), target_probs)


def verify_detailed(draft_probs: torch.Tensor, target_probs: torch.Tensor, draft_token: int,
                    generator: torch.Generator, uniform: float | None = None) -> Verification:
    """Exact speculative verification of one draft token, with the uniform draw it used.

    ``uniform`` may be given to replay a recorded decision; the resampling draw still
    comes from ``generator``.
    """
    d = int(draft_token)
    q_d = float(draft_probs[d])
    p_d = float(target_probs[d])
    beta = max(0.0, 1.0 - p_d / q_d) if q_d > 0 else 0.0
    if uniform is None:
        uniform = float(torch.rand((), generator=generator, device=generator.device))
    if uniform * q_d < p_d or q_d <= 0.0:  # r < min(1, p/q), without a division
        return Verification(True, d, uniform, beta)
    resid = residual_distribution(draft_probs, target_probs)
    token = int(torch.multinomial(resid.float(), 1, generator=generator))
    return Verification(False, token, uniform, beta)


def verify(draft_probs: torch.Tensor, target_probs: torch.Tensor, draft_token: int,
           generator: torch.Generator) -> tuple[bool, int]:
    """Exact rule: accept ``d`` w.p. ``min(1, p_d/q_d)``, else sample ``norm(max(p - q, 0))``.

    Returns ``(accepted, token)``; the output token is distributed exactly as ``p``.
    """
    out = verify_detailed(draft_probs, target_probs, draft_token, generator)
    return out.accepted, out.token


def verify_greedy(target_probs: torch.Tensor, draft_token: int) -> tuple[bool, int]:
    """Greedy rule: accept iff the draft is the LLM's argmax; otherwise output that argmax."""
    best = int(torch.argmax(target_probs))
    return best == int(draft_token), best


def verify_batch(draft_probs: torch.Tensor, target_probs: torch.Tensor, draft_tokens: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact verification of ``B`` independent drafts at once.

    ``draft_probs`` and ``target_probs`` are ``(B, V)``, ``draft_tokens`` is ``(B,)``. Returns
    boolean ``accepted`` and long ``tokens``, each ``(B,)``.
    """
    d = draft_tokens.long().unsqueeze(-1)
    q_d = draft_probs.gather(-1, d).squeeze(-1)
    p_d = target_probs.gather(-1, d).squeeze(-1)
    r = torch.rand(q_d.shape, generator=generator, device=generator.device).to(q_d.device)
    accepted = (r * q_d < p_d) | (q_d <= 0)
    resampled = torch.multinomial(residual_distribution(draft_probs, target_probs).float(), 1,
                                  generator=generator).squeeze(-1)
    return accepted, torch.where(accepted, draft_tokens.long(), resampled)


# --------------------------------------------------------------------------- CU-HLM top-k


def topk_truncate(draft_probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest entries of ``q``: ``(indices, values)``, each ``(..., k)``."""
    vocab = draft_probs.shape[-1]
    if not 1 <= k <= vocab:
        raise ValueError(f"top-k size k={k} must be in 1..{vocab}")
    values, indices = torch.topk(draft_probs, k, dim=-1)
    return indices, values


def topk_reconstruct(indices: torch.Tensor, values: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Receiver's ``q_hat``: the kept entries, and ``1 - sum(kept)`` spread uniformly over the rest."""
    k = indices.shape[-1]
    rest = (1.0 - values.sum(-1, keepdim=True)).clamp_min(0.0)
    fill = rest / max(vocab_size - k, 1) if vocab_size > k else torch.zeros_like(rest)
    out = fill.expand(*values.shape[:-1], vocab_size).clone()
    out.scatter_(-1, indices, values)
    return out


def truncated_draft(draft_probs: torch.Tensor, k: int) -> torch.Tensor:
    """``q_hat`` as the LLM sees it after a top-``k`` upload of ``q`` (``k = V`` gives ``q``)."""
    if k >= draft_probs.shape[-1]:
        return draft_probs
    idx, val = topk_truncate(draft_probs, k)
    return topk_reconstruct(idx, val, draft_probs.shape[-1])


def payload_bits(vocab_size: int, k: int | None = None, prob_bits: int = 8) -> int:
    """Bits of one distribution upload: ``n * (prob_bits + ceil(log2 V))``, ``n = V`` or ``k``.

    Each entry carries a quantised probability and its token index (CU-HLM's accounting):
    ``V = 32000, prob_bits = 8`` gives 23 bits per entry.
    """
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    if prob_bits < 1:
        raise ValueError(f"prob_bits must be >= 1, got {prob_bits}")
    n = vocab_size if k is None else k
    if not 1 <= n <= vocab_size:
        raise ValueError(f"top-k size k={k} must be in 1..{vocab_size}")
    return n * (prob_bits + math.ceil(math.log2(vocab_size)))


# --------------------------------------------------------------------------- BiLD rollback


def bild_rollback_position(target_probs: torch.Tensor, tokens: torch.Tensor, alpha_rb: float = 5.0) -> int:
    """BiLD's rollback test over tokens the small model produced since the LLM last ran.

    ``target_probs`` is ``(n, V)``, the LLM's distribution at each of the ``n`` positions
    (from one parallel pass), ``tokens`` the ``n`` small-model tokens. Returns the first
    position ``m`` with ``-log p_L(y_m) > alpha_rb`` (to be replaced by the LLM's token), or
    ``-1`` if all are kept. Not exact: the output is not distributed as the LLM's.
    """
    if alpha_rb <= 0:
        raise ValueError(f"alpha_rb must be positive, got {alpha_rb}")
    p = target_probs.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)
    nll = -torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))
    bad = torch.nonzero(nll > alpha_rb)
    return int(bad[0, 0]) if len(bad) else -1
