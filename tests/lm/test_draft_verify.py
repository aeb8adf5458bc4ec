"""The shared draft-and-verify step: generator seeding, draw order, both verification rules."""

from __future__ import annotations

import math

import pytest
import torch

from hlm_gym.lm.draft_verify import prompt_generators, sample_draft, verify_draft
from hlm_gym.lm.speculative import verify_detailed


def _logits(seed: int, vocab: int = 12) -> torch.Tensor:
    return torch.randn(vocab, generator=torch.Generator().manual_seed(seed)) * 3


def test_generators_are_seeded_three_per_prompt():
    gens = prompt_generators(7)
    for g, s in zip((gens.draft, gens.signal, gens.verify), (21, 22, 23)):
        assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=torch.Generator().manual_seed(s)))


def test_sample_draft_uses_the_draft_generator_then_the_signal_generator():
    z = _logits(0)
    h1, h2 = torch.randn(8), torch.randn(8)
    got = sample_draft(z, h1, h2, "sample", prompt_generators(3), k=5)
    ref = prompt_generators(3)
    q = torch.softmax(z, -1)
    assert got.token == int(torch.multinomial(q, 1, generator=ref.draft))
    assert got.q_draft == float(q[got.token]) and torch.equal(got.q_probs, q)
    assert set(got.signals) == {"u", "entropy", "top1_prob", "margin", "saturation"}
    # the verify generator is untouched by drafting
    assert torch.equal(prompt_generators(3).verify.get_state(), ref.verify.get_state())
    greedy = sample_draft(z, h1, h2, "greedy", prompt_generators(3), k=5)
    assert greedy.token == int(torch.argmax(z))


def test_verify_draft_sample_is_verify_detailed_and_greedy_takes_the_argmax():
    q, p = torch.softmax(_logits(1), -1), torch.softmax(_logits(2), -1)
    for d in range(12):
        got = verify_draft(q, p, d, "sample", torch.Generator().manual_seed(d))
        ref = verify_detailed(q, p, d, torch.Generator().manual_seed(d))
        assert (got.accepted, got.token, got.uniform, got.beta) == (ref.accepted, ref.token, ref.uniform, ref.beta)
        assert got.p_draft == float(p[d])
        g = verify_draft(q, p, d, "greedy", torch.Generator())
        assert g.token == int(torch.argmax(p)) and g.accepted == (d == int(torch.argmax(p)))
        assert math.isnan(g.uniform) and g.beta == pytest.approx(max(0.0, 1 - float(p[d]) / float(q[d])))
    with pytest.raises(ValueError, match="mode"):
        verify_draft(q, p, 0, "beam", torch.Generator())
