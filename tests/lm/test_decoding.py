"""The live hybrid loop on tiny models: exactness, never-send, KV catch-up, stopping."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from hlm_gym.lm.decoding import DecoderConfig, DecodingError, HybridDecoder, HybridSession
from tests.conftest import chi2_pvalue, make_tiny_pair

PROMPT = torch.tensor([1, 2, 3])


def _llm_joint(model, prompt: torch.Tensor, vocab: int) -> np.ndarray:
    """Exact law of the LLM's first two sampled tokens, by enumeration."""
    with torch.no_grad():
        p1 = torch.softmax(model(prompt[None]).logits[0, -1], -1)
        joint = np.zeros((vocab, vocab))
        for a in range(vocab):
            p2 = torch.softmax(model(torch.cat([prompt, torch.tensor([a])])[None]).logits[0, -1], -1)
            joint[a] = (p1[a] * p2).numpy()
    return joint


def test_always_send_output_is_distributed_as_the_llm(tiny_pair):
    vocab = tiny_pair.vocab_size
    config = DecoderConfig(mode="sample", max_new_tokens=2, stop_at_eos=False)
    decoder = HybridDecoder(tiny_pair, config)
    n = 2500
    counts = np.zeros((vocab, vocab))
    rejections = 0
    for seed in range(n):
        out = decoder.generate(PROMPT, lambda d: True, seed=seed)
        counts[out.tokens[0], out.tokens[1]] += 1
        rejections += out.summary()["rejections"]
    assert rejections > 0.2 * n  # the SLM and LLM really disagree: verification matters
    assert chi2_pvalue(counts, _llm_joint(tiny_pair.llm, PROMPT, vocab)) > 1e-4
    # The same sample size rejects the SLM's own law: the test can tell a wrong rule.
    assert chi2_pvalue(counts, _llm_joint(tiny_pair.slm, PROMPT, vocab)) < 1e-6


def test_greedy_always_send_equals_llm_greedy(tiny_pair):
    decoder = HybridDecoder(tiny_pair, DecoderConfig(mode="greedy", max_new_tokens=12, stop_at_eos=False))
    out = decoder.generate(PROMPT, lambda d: True)
    with torch.no_grad():
        ref = tiny_pair.llm.generate(PROMPT[None], max_new_tokens=12, do_sample=False, eos_token_id=None,
                                     pad_token_id=0)[0, 3:].tolist()
    assert out.tokens == ref


def test_never_send_equals_slm_alone(tiny_pair):
    config = DecoderConfig(mode="sample", max_new_tokens=10, stop_at_eos=False)
    for seed in range(5):
        out = HybridDecoder(tiny_pair, config).generate(PROMPT, lambda d: False, seed=seed)
        # Reference: the SLM alone, no cache, re-encoding the prefix, same draft generator.
        g = torch.Generator().manual_seed(seed * 3)
        ids = PROMPT.clone()
        ref = []
        with torch.no_grad():
            for _ in range(10):
                q = torch.softmax(tiny_pair.slm(ids[None]).logits[0, -1].float(), -1)
                tok = int(torch.multinomial(q, 1, generator=g))
                ref.append(tok)
                ids = torch.cat([ids, torch.tensor([tok])])
        assert out.tokens == ref
        assert out.summary()["sent"] == 0 and out.summary()["llm_forward_tokens"] == 0


def test_catch_up_feeds_pending_tokens_and_matches_full_reencoding(tiny_pair):
    """After skips, the LLM's distribution at a send equals re-encoding the whole prefix."""
    config = DecoderConfig(mode="sample", max_new_tokens=16, stop_at_eos=False)
    session = HybridSession(tiny_pair, PROMPT, config, seed=3)
    decisions = itertools.cycle([False, False, True, False, True, True])
    while not session.done:
        draft = session.draft()
        send = next(decisions)
        prefix = torch.cat([PROMPT, torch.tensor(session.output, dtype=torch.long)])
        rec = session.commit(send)
        if send:
            with torch.no_grad():
                p = torch.softmax(tiny_pair.llm(prefix[None]).logits[0, -1].float(), -1)
            assert rec.p_draft == pytest.approx(float(p[draft.token]), rel=1e-4, abs=1e-6)
            assert rec.llm_tokens == draft.pending + 1
        else:
            assert rec.llm_tokens == 0 and rec.accepted and rec.token == draft.token
    fed = sum(r.llm_tokens for r in session.records)
    assert session._llm_cache.get_seq_length() == len(PROMPT) - 1 + fed


def test_stops_at_eos_and_records_columns():
    pair = make_tiny_pair(vocab=4, scale=0.0)  # uniform outputs: EOS (id 3) comes quickly
    out = HybridDecoder(pair, DecoderConfig(max_new_tokens=100)).generate(PROMPT, lambda d: True, seed=0)
    assert out.tokens[-1] == 3 and 3 not in out.tokens[:-1]
    cols = out.columns
    assert len(cols["u"]) == len(out.tokens)
    assert cols["sent"].all() and np.isfinite(cols["beta"]).all()


def test_threshold_rule_and_bad_input(tiny_pair):
    out = HybridDecoder(tiny_pair, DecoderConfig(max_new_tokens=20, stop_at_eos=False)).generate(
        PROMPT, lambda d: d.signals["u"] > 0.5)
    cols = out.columns
    assert np.array_equal(cols["sent"], cols["u"] > 0.5)
    with pytest.raises(DecodingError, match="max_new_tokens"):
        DecoderConfig(max_new_tokens=0)
    with pytest.raises(DecodingError, match="mode"):
        DecoderConfig(mode="beam")
    with pytest.raises(DecodingError, match="empty prompt"):
        HybridSession(tiny_pair, torch.tensor([], dtype=torch.long), DecoderConfig(), seed=0)
