"""``ConcatVectorEnv``: torch vector envs stepped as one batch give each part's own trajectory."""

from __future__ import annotations

import pytest
import torch

from hlm_gym.environments.concat import ConcatVectorEnv
from hlm_gym.environments.hybrid_lm.torch_vector import HybridLMTorchVectorEnv


def _parts():
    return [HybridLMTorchVectorEnv(3, device="cpu", scenario="pedestrian", risk_weight=2.0, max_episode_steps=40),
            HybridLMTorchVectorEnv(2, device="cpu", scenario="vehicular", risk_weights=[1.0, 5.0],
                                   max_episode_steps=25)]


def test_concat_equals_its_parts_stepped_separately():
    cat, parts = ConcatVectorEnv(_parts()), _parts()
    obs, _ = cat.reset(seed=7)
    sep = [p.reset(seed=[7 + o + i for i in range(p.num_envs)])[0] for p, o in zip(parts, (0, 3))]
    assert torch.equal(obs, torch.cat(sep))
    g = torch.Generator().manual_seed(0)
    ended = 0
    for _ in range(120):
        a = torch.randint(0, 2, (5,), generator=g)
        o, r, te, tr, info = cat.step(a)
        outs = [p.step(x) for p, x in zip(parts, torch.split(a, [3, 2]))]
        assert torch.equal(o, torch.cat([x[0] for x in outs]))
        assert torch.equal(r, torch.cat([x[1] for x in outs]))
        assert torch.equal(te, torch.cat([x[2] for x in outs])) and torch.equal(tr, torch.cat([x[3] for x in outs]))
        for k in ("latency_s", "tokens_per_s"):
            for (lo, hi), x in zip(((0, 3), (3, 5)), outs):
                if k in x[4]:
                    assert torch.equal(info[k][lo:hi], x[4][k]) and torch.equal(info["_" + k][lo:hi], x[4]["_" + k])
                elif k in info:  # the key came from the other part: zeros, masked out here
                    assert not info["_" + k][lo:hi].any()
        ended += int(te.sum() + tr.sum())
    assert ended > 0


def test_concat_refuses_mismatched_parts():
    with pytest.raises(ValueError, match="spaces differ"):
        ConcatVectorEnv([HybridLMTorchVectorEnv(2, device="cpu"),
                         HybridLMTorchVectorEnv(2, device="cpu", compressed=True)])
