"""Exactness of speculative verification, CU-HLM truncation, payloads and BiLD rollback."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hlm_gym.lm.speculative import (bild_rollback_position, expected_acceptance, payload_bits,
                                 rejection_probability, residual_distribution, topk_reconstruct,
                                 topk_truncate, truncated_draft, verify, verify_batch, verify_detailed,
                                 verify_greedy)
from tests.conftest import chi2_pvalue


def _random_dists(v: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = torch.softmax(torch.randn(v, generator=g) * 1.5, -1)
    p = torch.softmax(torch.randn(v, generator=g) * 1.5, -1)
    return q, p


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_verify_output_is_distributed_as_target(seed):
    """Draft ~ q, then verify: the output's law is p (and not the law of a wrong rule)."""
    v, n = 10, 60_000
    q, p = _random_dists(v, seed)
    g = torch.Generator().manual_seed(100 + seed)
    drafts = torch.multinomial(q.expand(n, v), 1, replacement=True, generator=g).squeeze(1)
    _, tokens = verify_batch(q.expand(n, v), p.expand(n, v), drafts, g)
    counts = np.bincount(tokens.numpy(), minlength=v)
    assert chi2_pvalue(counts, p.numpy()) > 1e-4
    # Power: the classic bug "resample from p instead of norm(max(p - q, 0))" is caught.
    acc = torch.minimum(p, q)
    wrong = (acc + (1 - acc.sum()) * p).numpy()
    assert np.abs(wrong - p.numpy()).max() > 0.01
    assert chi2_pvalue(counts, wrong) < 1e-6


def test_scalar_verify_matches_target_and_rejection_rate():
    v, n = 6, 20_000
    q, p = _random_dists(v, 7)
    g = torch.Generator().manual_seed(3)
    counts = np.zeros(v, dtype=np.int64)
    rejected = 0
    expected_reject = float((q * rejection_probability(q.expand(v, v), p.expand(v, v), torch.arange(v))).sum())
    for _ in range(n):
        d = int(torch.multinomial(q, 1, generator=g))
        accepted, token = verify(q, p, d, g)
        assert isinstance(accepted, bool) and isinstance(token, int)
        counts[token] += 1
        rejected += not accepted
    assert chi2_pvalue(counts, p.numpy()) > 1e-4
    assert abs(rejected / n - expected_reject) < 4 * math.sqrt(expected_reject * (1 - expected_reject) / n)
    assert abs((1 - rejected / n) - float(expected_acceptance(q, p))) < 0.02


def test_replaying_the_recorded_uniform_reproduces_the_decision():
    q, p = _random_dists(12, 4)
    g = torch.Generator().manual_seed(5)
    for d in range(12):
        first = verify_detailed(q, p, d, g)
        again = verify_detailed(q, p, d, torch.Generator().manual_seed(9), uniform=first.uniform)
        assert again.accepted == first.accepted
        assert first.beta == pytest.approx(float(rejection_probability(q, p, d)), abs=1e-6)


def test_rejection_probability_definition_and_batching():
    q = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    p = torch.tensor([[0.25, 0.75, 0.0], [0.4, 0.3, 0.3]])
    d = torch.tensor([0, 2])
    beta = rejection_probability(q, p, d)
    assert torch.allclose(beta, torch.tensor([0.5, 0.4]))
    assert float(rejection_probability(q[1], p[1], 0)) == 0.0  # p_d > q_d never rejects


def test_residual_when_p_equals_q_is_p():
    q = torch.tensor([0.2, 0.8])
    assert torch.allclose(residual_distribution(q, q), q)


def test_greedy_rule():
    p = torch.tensor([0.1, 0.7, 0.2])
    assert verify_greedy(p, 1) == (True, 1)
    assert verify_greedy(p, 2) == (False, 1)


def test_topk_truncation_and_uniform_reconstruction():
    q, _ = _random_dists(20, 11)
    idx, val = topk_truncate(q, 5)
    assert torch.equal(val, torch.sort(q, descending=True).values[:5])
    q_hat = topk_reconstruct(idx, val, 20)
    assert float(q_hat.sum()) == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(q_hat[idx], val)
    rest = torch.ones(20, dtype=torch.bool)
    rest[idx] = False
    assert torch.allclose(q_hat[rest], torch.full((15,), (1 - float(val.sum())) / 15))
    assert torch.equal(truncated_draft(q, 20), q)
    with pytest.raises(ValueError, match="top-k size"):
        topk_truncate(q, 0)


def test_payload_bits():
    assert payload_bits(32000, prob_bits=8) == 32000 * 23  # 23 bits per entry (BACKGROUND.md)
    assert payload_bits(32000, k=64, prob_bits=8) == 64 * 23
    assert payload_bits(49152) == 49152 * (8 + 16)
    with pytest.raises(ValueError, match="top-k size"):
        payload_bits(100, k=101)


def test_bild_rollback_finds_first_bad_position():
    probs = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.999, 0.001], [0.001, 0.999]])
    tokens = torch.tensor([0, 1, 1, 0])
    assert bild_rollback_position(probs, tokens, alpha_rb=5.0) == 2  # -log(0.001) = 6.9 > 5
    assert bild_rollback_position(probs[:2], tokens[:2], alpha_rb=5.0) == -1
    with pytest.raises(ValueError, match="alpha_rb"):
        bild_rollback_position(probs, tokens, alpha_rb=0)
