"""Uncertainty and confidence signals of the SLM, from a single forward pass per token.

=================  ==========================================================  ==========
signal             definition                                                  range
=================  ==========================================================  ==========
``u``              U-HLM temperature-perturbation uncertainty: fraction of K    [0, 1]
                   samples ``d_k ~ softmax(z / theta_k)``, ``theta_k ~ U(0,
                   theta_max)``, that differ from the draft ``d``
``entropy``        Shannon entropy of ``softmax(z)`` in nats                    [0, log V]
``top1_prob``      largest probability (BiLD's fallback confidence)             [1/V, 1]
``margin``         top-1 minus top-2 probability (CALM's softmax response)      [0, 1]
``saturation``     cosine similarity of the last two layers' hidden states      [-1, 1]
                   at this position (CALM's hidden-state saturation)
=================  ==========================================================  ==========

Only the indicator ``1[d_k != d]`` of each temperature sample matters, so instead of drawing
``d_k`` over the whole vocabulary it is drawn directly as a Bernoulli variable with success
probability ``1 - softmax(z / theta_k)_d``: the same distribution of ``u`` at a fraction of
the random numbers.
"""

from __future__ import annotations

import torch

SIGNAL_NAMES: tuple[str, ...] = ("u", "entropy", "top1_prob", "margin", "saturation")


def temperature_uncertainty(logits: torch.Tensor, draft: torch.Tensor | int, generator: torch.Generator,
                            k: int = 20, theta_max: float = 2.0) -> torch.Tensor:
    """U-HLM's ``u = (1/K) sum_k 1[d_k != d]`` with ``d_k ~ softmax(z / theta_k)``.

    ``logits`` is ``(..., V)``, ``draft`` has the leading shape ``(...)``. Each ``theta_k``
    is drawn from ``Uniform(0, theta_max)`` independently per token.
    """
    if k < 1:
        raise ValueError(f"k (number of temperature samples) must be >= 1, got {k}")
    if theta_max <= 0:
        raise ValueError(f"theta_max must be positive, got {theta_max}")
    z = logits.float()
    lead = z.shape[:-1]
    dev = generator.device
    theta = torch.rand((k, *lead, 1), generator=generator, device=dev).to(z.device) * theta_max
    theta = theta.clamp_min(1e-6)  # theta -> 0 is the argmax; log_softmax stays finite
    d = torch.as_tensor(draft, device=z.device, dtype=torch.long).expand(lead)
    logp_d = torch.log_softmax(z.unsqueeze(0) / theta, dim=-1).gather(
        -1, d.unsqueeze(0).expand(k, *lead).unsqueeze(-1)).squeeze(-1)  # (k, ...)
    differs = torch.rand((k, *lead), generator=generator, device=dev).to(z.device) >= logp_d.exp()
    return differs.float().mean(0)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of ``softmax(logits)`` over the last axis."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def top1_prob(probs: torch.Tensor) -> torch.Tensor:
    """Largest probability of each distribution."""
    return probs.max(-1).values


def top1_margin(probs: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 probability (CALM's softmax-response confidence)."""
    top2 = torch.topk(probs, 2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


def hidden_saturation(h_prev: torch.Tensor, h_last: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of consecutive layers' hidden states (CALM's state saturation)."""
    return torch.nn.functional.cosine_similarity(h_prev.float(), h_last.float(), dim=-1)


def compute_signals(logits: torch.Tensor, draft: torch.Tensor | int, generator: torch.Generator,
                    h_prev: torch.Tensor | None = None, h_last: torch.Tensor | None = None,
                    k: int = 20, theta_max: float = 2.0) -> dict[str, torch.Tensor]:
    """All signals of :data:`SIGNAL_NAMES` for one SLM output (saturation is NaN without states)."""
    probs = torch.softmax(logits.float(), dim=-1)
    if h_prev is not None and h_last is not None:
        sat = hidden_saturation(h_prev, h_last)
    else:
        sat = torch.full(logits.shape[:-1], float("nan"))
    return {
        "u": temperature_uncertainty(logits, draft, generator, k=k, theta_max=theta_max),
        "entropy": entropy(logits),
        "top1_prob": top1_prob(probs),
        "margin": top1_margin(probs),
        "saturation": sat,
    }
