"""Shared fixtures: tiny random-init model pairs for fast tests of the loop's mechanics."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hlm_gym.lm.models import ModelPair

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub


class TinyTokenizer:
    """Stand-in tokenizer for tiny models: ids are their own text."""

    def __init__(self, vocab_size: int, eos_token_id: int) -> None:
        self.vocab_size = vocab_size
        self.eos_token_id = eos_token_id
        self.bos_token_id = None

    def get_vocab(self) -> dict[str, int]:
        return {f"t{i}": i for i in range(self.vocab_size)}

    def __len__(self) -> int:
        return self.vocab_size

    def decode(self, ids) -> str:
        return " ".join(f"t{int(i)}" for i in ids)


def tiny_llama(vocab: int, seed: int, layers: int = 2, scale: float = 1.0) -> LlamaForCausalLM:
    """A seeded random-init Llama with a small vocabulary; ``scale`` sharpens its outputs."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         tie_word_embeddings=False, eos_token_id=vocab - 1, bos_token_id=0, pad_token_id=0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
    return model.eval()


def make_tiny_pair(vocab: int = 8, slm_seed: int = 1, llm_seed: int = 2, scale: float = 20.0) -> ModelPair:
    """An SLM/LLM pair of tiny random models sharing a stand-in tokenizer."""
    return ModelPair(slm=tiny_llama(vocab, slm_seed, 1, scale), llm=tiny_llama(vocab, llm_seed, 2, scale),
                     tokenizer=TinyTokenizer(vocab, vocab - 1), slm_name="tiny-slm", llm_name="tiny-llm",
                     slm_fingerprint="s", llm_fingerprint="l")


@pytest.fixture(scope="session")
def tiny_pair() -> ModelPair:
    """A tiny pair whose SLM and LLM disagree often (so rejections happen)."""
    return make_tiny_pair()


def chi2_pvalue(counts, probs, min_expected: float = 5.0) -> float:
    """Chi-square goodness-of-fit p-value, pooling cells expected below ``min_expected``."""
    import numpy as np
    from scipy import stats

    counts = np.asarray(counts, dtype=np.float64).ravel()
    probs = np.asarray(probs, dtype=np.float64).ravel()
    expected = probs / probs.sum() * counts.sum()
    keep = expected > min_expected
    obs, exp = counts[keep], expected[keep]
    if (~keep).any() and expected[~keep].sum() > 0:
        obs, exp = np.append(obs, counts[~keep].sum()), np.append(exp, expected[~keep].sum())
    exp = exp * obs.sum() / exp.sum()
    return float(stats.chisquare(obs, exp).pvalue)
