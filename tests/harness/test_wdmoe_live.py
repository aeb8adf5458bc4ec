"""WDMoE live mode on a tiny random MoE: the policy's selections run in the model, the loss is measured.

The trace is recorded from the same tiny model (one dense pass per sequence), so with every
expert selected the live run sees exactly the trace's gate weights and the dense loss.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

import hlm_gym.environments.wdmoe.simulation as simulation
from hlm_gym.environments.wdmoe.config import WDMoEConfig
from hlm_gym.environments.wdmoe.simulation import build_simulation
from hlm_gym.harness.wdmoe_live import LiveSequence, run_live
from hlm_gym.lm.moe import make_spec, moefy
from hlm_gym.policies.base import Policy
from hlm_gym.policies.wdmoe_rules import GateTopK
from tests.tiny_models import TinyTokenizer, tiny_model

L, I, D, E, H = 2, 64, 32, 8, 4


class _Tok(TinyTokenizer):
    pad_token_id = 0


def tiny_moe():
    g = torch.Generator().manual_seed(0)
    perm = torch.stack([torch.randperm(I, generator=g) for _ in range(L)])
    spec = make_spec(E, perm, torch.randn(L, H, D, generator=g), torch.randn(L, H, generator=g),
                     torch.randn(L, E, H, generator=g), torch.randn(L, E, generator=g), {})
    moe = moefy(tiny_model(3, layers=L), spec)
    moe.tokenizer = _Tok()
    return moe


def sequences(n=5, seed=1):
    rng = np.random.default_rng(seed)
    return [LiveSequence(tuple(rng.integers(3, 64, rng.integers(3, 9)).tolist()),
                         tuple(rng.integers(3, 64, rng.integers(2, 7)).tolist()), p) for p in range(n)]


def trace_of(moe, seqs):
    """A WDMoE trace of ``seqs`` recorded from ``moe``'s dense pass: rows at the positions predicting reply tokens."""
    scores, gram, res, toks, lengths = [], [], [], [], []
    for s in seqs:
        ids = torch.tensor([list(s.context) + list(s.reply)])
        rec = moe.expert_records(ids)
        a, n = len(s.context) - 1, len(s.reply)
        scores.append(rec.scores[0, a:a + n].reshape(n * L, E).numpy())
        gram.append(rec.gram[0, a:a + n].reshape(n * L, E, E).numpy())
        res.append(rec.residual_norm2[0, a:a + n].reshape(n * L).numpy())
        toks += list(s.reply)
        lengths.append(n)
    contexts = [list(s.context) for s in seqs]
    return types.SimpleNamespace(
        scores=np.concatenate(scores), gram=np.concatenate(gram), residual_norm2=np.concatenate(res),
        token_ids=np.array(toks), prompt_offsets=np.concatenate([[0], np.cumsum(lengths)]) * L, n_layers=L,
        n_experts=E, meta={"max_tokens": max(lengths), "prompt_token_ids": contexts})


class Recorder(Policy):
    """Every expert, recording the observations it is shown."""

    def __init__(self):
        self.n_actions, self.obs_dim, self.seen = 1 << E, 2 * E + 2, []

    def _act(self, obs):
        self.seen.append(obs.copy())
        return np.full(len(obs), (1 << E) - 1)


@pytest.fixture
def setup(monkeypatch):
    moe = tiny_moe()
    seqs = sequences()
    tr = trace_of(moe, seqs)
    monkeypatch.setattr(simulation, "read_traces", lambda source: tr)
    sim = build_simulation(WDMoEConfig(scenario="mixed-vehicular", channel_bank_size=4, channel_bank_points=4096))
    return moe, seqs, tr, sim


def test_all_experts_live_is_the_dense_model_and_sees_the_trace(setup):
    moe, seqs, tr, sim = setup
    pol = Recorder()
    run = run_live(moe, sim, pol, seqs, seed=0, batch_size=2)
    assert len(run.episodes) == len(seqs)
    for ep in run.episodes:
        assert ep["perplexity"] == pytest.approx(ep["dense_perplexity"], rel=1e-5)
        assert abs(ep["nll_increase"]) < 1e-5 and ep["quality_loss"] == 0.0
        assert ep["experts_per_layer"] == E
    assert len(run.token_proxy) == sum(len(s.reply) for s in seqs)
    # the gate weights shown live equal the trace's rows (same model, same positions, every expert)
    shown = {}
    first_batch = [o[:2] for o in pol.seen[: max(len(s.reply) for s in seqs[:2]) * L]]
    for step, obs in enumerate(first_batch):
        t, layer = divmod(step, L)
        for i, s in enumerate(seqs[:2]):
            if t < len(s.reply):
                row = tr.prompt_offsets[i] + t * L + layer
                np.testing.assert_allclose(obs[i, :E], tr.scores[row], rtol=1e-4, atol=1e-6)
                shown[(i, t, layer)] = True
    assert len(shown) == sum(len(s.reply) for s in seqs[:2]) * L


def test_dropping_experts_costs_loss_and_the_proxy_follows(setup):
    moe, seqs, tr, sim = setup
    top1 = run_live(moe, sim, GateTopK(1, E), seqs, seed=0, batch_size=3)
    top4 = run_live(moe, sim, GateTopK(4, E), seqs, seed=0, batch_size=3)
    q1 = np.mean([e["quality_loss"] for e in top1.episodes])
    q4 = np.mean([e["quality_loss"] for e in top4.episodes])
    assert q1 > q4 > 0
    assert np.mean([e["nll_increase"] for e in top1.episodes]) != 0
    assert all(e["experts_per_layer"] == 1 for e in top1.episodes)


def test_batches_do_not_change_the_result(setup):
    moe, seqs, tr, sim = setup
    a = run_live(moe, sim, GateTopK(2, E), seqs, seed=3, batch_size=1)
    b = run_live(moe, sim, GateTopK(2, E), seqs, seed=3, batch_size=5)
    for x, y in zip(a.episodes, b.episodes):
        assert x["perplexity"] == pytest.approx(y["perplexity"], rel=1e-4)
        assert x["latency_per_token_s"] == pytest.approx(y["latency_per_token_s"], rel=1e-12)
