"""Recording WDMoE traces: teacher-forced ShareGPT replies through the MoE, one dense pass per batch.

For each prompt the chat-templated prompt ``p`` and the reference reply ``r`` (cut at
``max_tokens``) are run through :meth:`hlm_gym.lm.moe.MoEModel.expert_records` (all experts,
i.e. the dense model) and the records of the reply's decode steps (positions ``m - 1 .. m + n - 2``,
see :mod:`hlm_gym.traces.wdmoe`) are kept. Prompts are batched with right padding (causal
attention makes a row's records independent of the padding after it).
"""

from __future__ import annotations

import sys
import time
from typing import Optional, Sequence

import numpy as np
import torch

from hlm_gym.lm.chat_examples import encode_example
from hlm_gym.lm.moe import MoEModel
from hlm_gym.lm.prompts import Prompt
from hlm_gym.traces.store import TraceError
from hlm_gym.traces.wdmoe import SCHEMA_VERSION, WDMoETraces, validate_wdmoe_traces

__all__ = ["DEFAULT_MAX_PROMPT_TOKENS", "DEFAULT_MAX_TOKENS", "TraceSequence", "build_wdmoe_traces",
           "encode_prompts", "record_sequences"]

DEFAULT_MAX_TOKENS = 48
DEFAULT_MAX_PROMPT_TOKENS = 128


class TraceSequence(tuple):
    """``(prompt_id, prompt_token_ids, reply_token_ids)`` of one traced conversation."""

    __slots__ = ()

    def __new__(cls, prompt_id: str, prompt: Sequence[int], reply: Sequence[int]) -> "TraceSequence":
        return super().__new__(cls, (str(prompt_id), [int(t) for t in prompt], [int(t) for t in reply]))

    @property
    def prompt_id(self) -> str:
        """The conversation id."""
        return self[0]

    @property
    def prompt(self) -> list[int]:
        """The chat-templated prompt's token ids ``p``."""
        return self[1]

    @property
    def reply(self) -> list[int]:
        """The reply's token ids ``r`` (the step targets)."""
        return self[2]


def encode_prompts(tokenizer, prompts: Sequence[Prompt], max_tokens: int = DEFAULT_MAX_TOKENS,
                   max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS, limit: Optional[int] = None) -> list[TraceSequence]:
    """The usable prompts as :class:`TraceSequence` (templated prompt <= ``max_prompt_tokens``, reply
    non-empty, cut at ``max_tokens``), in order, at most ``limit`` of them."""
    out = []
    for prompt in prompts:
        enc = encode_example(tokenizer, prompt, max_prompt_tokens=max_prompt_tokens, max_reply_tokens=max_tokens)
        if enc is None:
            continue
        ids, mask = enc
        m = mask.index(1) + 1
        reply = ids[m:][:max_tokens]
        if not reply:
            continue
        out.append(TraceSequence(prompt.id, ids[:m], reply))
        if limit is not None and len(out) >= limit:
            break
    return out


@torch.no_grad()
def record_sequences(moe_model: MoEModel, sequences: Sequence[TraceSequence], batch_size: int = 4,
                     progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(scores (R, E), gram (R, E, E), residual_norm2 (R,))`` float32 of the sequences' decode steps,
    rows ordered (sequence, step, layer)."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise TraceError(f"batch_size must be >= 1, got {batch_size}")
    L, E = moe_model.n_layers, moe_model.n_experts
    scores, grams, resid = [], [], []
    bar = tqdm(total=len(sequences), desc="wdmoe traces", unit="prompt", disable=not progress, dynamic_ncols=True)
    for k in range(0, len(sequences), batch_size):
        group = sequences[k:k + batch_size]
        full = [s.prompt + s.reply for s in group]
        width = max(len(f) for f in full)
        ids = torch.zeros(len(group), width, dtype=torch.long)
        attn = torch.zeros(len(group), width, dtype=torch.long)
        for r, f in enumerate(full):
            ids[r, :len(f)] = torch.tensor(f)
            attn[r, :len(f)] = 1
        rec = moe_model.expert_records(ids, attn, with_logits=False)
        for r, s in enumerate(group):
            m, n = len(s.prompt), len(s.reply)
            sl = slice(m - 1, m - 1 + n)
            scores.append(rec.scores[r, sl].reshape(n * L, E).cpu().numpy())
            grams.append(rec.gram[r, sl].reshape(n * L, E, E).cpu().numpy())
            resid.append(rec.residual_norm2[r, sl].reshape(n * L).cpu().numpy())
        bar.update(len(group))
    bar.close()
    return np.concatenate(scores), np.concatenate(grams), np.concatenate(resid)


def build_wdmoe_traces(moe_model: MoEModel, tokenizer, prompts: Sequence[Prompt], max_tokens: int = DEFAULT_MAX_TOKENS,
                       progress: bool = True, split: str = "other", batch_size: int = 4,
                       max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS, limit: Optional[int] = None,
                       extra_meta: Optional[dict] = None) -> WDMoETraces:
    """Record the WDMoE traces of ``prompts`` (ShareGPT :class:`Prompt` s with reference replies).

    Prompts whose templated text is longer than ``max_prompt_tokens`` or whose reference is
    empty are skipped; ``limit`` caps how many are traced. Returns validated traces whose
    ``meta`` carries the provenance (model and MoE fingerprints, prompt ids and token ids).
    """
    if max_tokens < 1 or max_prompt_tokens < 2:
        raise TraceError(f"max_tokens must be >= 1 and max_prompt_tokens >= 2, got {max_tokens}, {max_prompt_tokens}")
    seqs = encode_prompts(tokenizer, prompts, max_tokens, max_prompt_tokens, limit)
    if not seqs:
        raise TraceError("no usable prompts to trace (each needs a reference reply and a templated prompt of at "
                         f"most {max_prompt_tokens} tokens)")
    t0 = time.perf_counter()
    scores, gram, resid = record_sequences(moe_model, seqs, batch_size, progress)
    L = moe_model.n_layers
    steps = np.array([len(s.reply) for s in seqs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(steps * L)]).astype(np.int64)
    spec = moe_model.spec
    model = moe_model.model
    meta = {"schema_version": SCHEMA_VERSION, "split": split, "prompt_ids": [s.prompt_id for s in seqs],
            "prompt_token_ids": [s.prompt for s in seqs], "n_layers": L, "n_experts": moe_model.n_experts,
            "hidden_size": spec.hidden_size, "expert_intermediate": spec.expert_size,
            "vocab_size": int(model.config.vocab_size), "max_tokens": int(max_tokens),
            "max_prompt_tokens": int(max_prompt_tokens), "model_fingerprint": spec.model_fingerprint,
            "moe_fingerprint": spec.fingerprint, "build_seconds": round(time.perf_counter() - t0, 1),
            "build_command": " ".join(["hlm-gym"] + sys.argv[1:]) if sys.argv and sys.argv[0].endswith("hlm-gym") else "",
            "teacher_forced_on": "reference replies", **(extra_meta or {})}
    tokens = np.concatenate([np.asarray(s.reply, dtype=np.int64) for s in seqs])
    traces = WDMoETraces(scores, gram, resid, tokens, offsets, L, moe_model.n_experts, meta)
    validate_wdmoe_traces(traces)
    return traces
