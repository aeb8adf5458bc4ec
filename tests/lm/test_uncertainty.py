"""Uncertainty and confidence signals."""

from __future__ import annotations

import math

import pytest
import torch

from hlm_gym.lm.uncertainty import (compute_signals, entropy, hidden_saturation, temperature_uncertainty,
                                 top1_margin, top1_prob)


def test_temperature_uncertainty_matches_its_definition():
    """E[u] equals P(d_k != d) with d_k ~ softmax(z / theta), theta ~ U(0, theta_max)."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(30, generator=g) * 2
    d = 4
    u = torch.stack([temperature_uncertainty(z, d, g, k=20, theta_max=2.0) for _ in range(3000)])
    theta = torch.rand(400_000, generator=g) * 2.0
    direct = torch.multinomial(torch.softmax(z / theta[:, None], -1), 1, generator=g).squeeze(1)
    assert float(u.mean()) == pytest.approx(float((direct != d).float().mean()), abs=0.01)
    assert set(torch.unique(u * 20).round().tolist()) <= set(range(21))  # multiples of 1/K


def test_uncertainty_extremes_and_batching():
    g = torch.Generator().manual_seed(1)
    peaked = torch.tensor([50.0, 0.0, 0.0, 0.0])
    assert float(temperature_uncertainty(peaked, 0, g)) == 0.0
    assert float(temperature_uncertainty(peaked, 1, g)) == 1.0
    batch = torch.stack([peaked, torch.zeros(4)])
    u = temperature_uncertainty(batch, torch.tensor([0, 0]), g, k=2000)
    assert u.shape == (2,)
    assert float(u[0]) == 0.0 and float(u[1]) == pytest.approx(0.75, abs=0.04)
    with pytest.raises(ValueError, match="k"):
        temperature_uncertainty(peaked, 0, g, k=0)
    with pytest.raises(ValueError, match="theta_max"):
        temperature_uncertainty(peaked, 0, g, theta_max=0.0)


def test_confidence_signals_on_crafted_distributions():
    probs = torch.tensor([0.6, 0.3, 0.1])
    assert float(top1_prob(probs)) == pytest.approx(0.6)
    assert float(top1_margin(probs)) == pytest.approx(0.3)
    assert float(entropy(torch.zeros(8))) == pytest.approx(math.log(8), rel=1e-5)
    assert float(entropy(torch.log(probs))) == pytest.approx(-(probs * probs.log()).sum().item(), rel=1e-5)
    h = torch.randn(16)
    assert float(hidden_saturation(h, 3 * h)) == pytest.approx(1.0, abs=1e-5)
    assert float(hidden_saturation(h, -h)) == pytest.approx(-1.0, abs=1e-5)


def test_compute_signals_keys_and_missing_states():
    g = torch.Generator().manual_seed(2)
    sig = compute_signals(torch.randn(10), 3, g)
    assert set(sig) == {"u", "entropy", "top1_prob", "margin", "saturation"}
    assert math.isnan(float(sig["saturation"]))
