"""A tiny random-init model pair with a stand-in tokenizer, for fast tests of traces and envs."""

from __future__ import annotations

import torch

from hlm_gym.lm.models import ModelPair

VOCAB = 64
EOS = 2


class TinyTokenizer:
    """Stand-in tokenizer: ids are their own text."""

    eos_token_id = EOS
    bos_token_id = 1
    chat_template = None

    def decode(self, ids):
        return "".join(f"<{int(i)}>" if int(i) == EOS else f" t{int(i)}" for i in ids)

    def __len__(self):
        return VOCAB


def tiny_model(seed: int, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      eos_token_id=EOS, bos_token_id=1, pad_token_id=0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # sharper distributions than the default init, so acceptance varies
        model.lm_head.weight.mul_(8.0)
    return model


def tiny_pair() -> ModelPair:
    return ModelPair(slm=tiny_model(1, 1), llm=tiny_model(2, 2), tokenizer=TinyTokenizer(),
                     slm_name="tiny-slm", llm_name="tiny-llm", slm_fingerprint="tiny-slm-fp",
                     llm_fingerprint="tiny-llm-fp")


def tiny_prompts(n: int, seed: int = 0, split: str = "train"):
    from hlm_gym.traces.builder import TracePrompt

    g = torch.Generator().manual_seed(1234)
    out = []
    for i in range(n):
        length = int(torch.randint(3, 12, (1,), generator=g))
        ids = tuple(int(x) for x in torch.randint(3, VOCAB, (length,), generator=g))
        out.append(TracePrompt(f"tiny-{i}", split, ids, seed + i))
    return out


def build_tiny_trace(path, n_prompts: int = 12, max_new_tokens: int = 24, mode: str = "sample",
                     k_choices=(4, 16), batch_size: int = 4, seed: int = 0):
    """A small trace file of the tiny pair (about a second to build)."""
    from hlm_gym.lm.decoding import DecoderConfig
    from hlm_gym.traces.builder import build_traces

    torch.set_num_threads(1)
    pair = tiny_pair()
    cfg = DecoderConfig(mode=mode, max_new_tokens=max_new_tokens)
    prompts = tiny_prompts(n_prompts, seed=seed)
    return build_traces(pair, prompts, cfg, path, k_choices=k_choices, batch_size=batch_size, measure=False,
                        extra_meta={"slm_spec": "tiny", "llm_spec": "tiny", "seed": seed})
