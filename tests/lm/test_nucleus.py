"""Nucleus (top-p) decoding in the hybrid loop: :func:`hlm_gym.lm.speculative.nucleus` applied to
both models' tempered distributions keeps the output exactly the LLM's tempered nucleus
distribution (drawn through the loop's own draft and verify steps), and ``hlm-gym generate``
defaults to the SmolLM2 model cards' decoding."""

from __future__ import annotations

import pytest
import torch

from hlm_gym.lm.draft_verify import prompt_generators, sample_draft, verify_draft
from hlm_gym.lm.speculative import nucleus


def test_nucleus_keeps_the_smallest_head_reaching_top_p():
    p = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15])
    kept = nucleus(p, 0.8)  # 0.4 + 0.3 = 0.7 < 0.8, so 0.15 joins; 0.1 and 0.05 are out
    assert torch.allclose(kept, torch.tensor([0.0, 0.4, 0.0, 0.3, 0.15]) / 0.85)
    assert torch.equal(nucleus(p, 1.0), p)
    assert torch.equal(nucleus(p, 1e-6) > 0, torch.tensor([False, True, False, False, False]))  # the top token
    batch = nucleus(torch.stack([p, p.flip(0)]), 0.8)
    assert torch.allclose(batch[1], kept.flip(0)) and torch.allclose(batch.sum(-1), torch.ones(2))


def test_speculative_sampling_on_both_nuclei_returns_the_llm_nucleus_distribution():
    """8 tokens, a draft unlike the target, T = 0.5 and top-p 0.9 on both: 12,000 tokens through
    sample_draft and verify_draft are distributed as nucleus(softmax(llm_logits / T)), and no token
    outside that nucleus ever comes out."""
    g = torch.Generator().manual_seed(7)
    slm_logits, llm_logits = torch.randn(8, generator=g) * 2, torch.randn(8, generator=g) * 2
    T, top_p = 0.5, 0.9
    target = nucleus(torch.softmax(llm_logits / T, -1), top_p)
    h = torch.zeros(16)
    gens = prompt_generators(3)
    counts = torch.zeros(8)
    n = 12_000
    for _ in range(n):
        s = sample_draft(slm_logits / T, h, h, "sample", gens, k=2, top_p=top_p)
        v = verify_draft(s.q_probs, target, s.token, "sample", gens.verify)
        counts[v.token] += 1
    freq = counts / n
    assert float(freq[target == 0].sum()) == 0.0
    assert 0.5 * float((freq - target).abs().sum()) < 0.02  # total variation; its s.e. here is about 0.005
    draft_law = nucleus(torch.softmax(slm_logits / T, -1), top_p)
    assert 0.5 * float((draft_law - target).abs().sum()) > 0.2  # the draft alone would be far off


def test_generate_defaults_to_the_model_cards_decoding():
    import argparse

    from hlm_gym.cli import generate

    sub = argparse.ArgumentParser().add_subparsers()
    generate.register(sub)
    args = sub.choices["generate"].parse_args(["--prompt", "hi"])
    assert (args.temperature, args.top_p, args.greedy) == (0.2, 0.9, False)


@pytest.mark.parametrize("top_p", [0.0, -0.1, 1.5])
def test_decoder_config_refuses_a_top_p_outside_0_1(top_p):
    from hlm_gym.lm.decoding import DecoderConfig, DecodingError

    with pytest.raises(DecodingError, match="top_p must be in"):
        DecoderConfig(top_p=top_p)
