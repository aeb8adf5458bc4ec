"""Teacher-forced chat examples: a chat-templated ShareGPT prompt followed by its reference reply.

Used to train and validate the distilled SLM (:mod:`hlm_gym.lm.distill`), for the fixed check
batch of the shipped artifact (:mod:`hlm_gym.lm.slm`) and for ``hlm-gym slm report``.
"""

from __future__ import annotations

import functools

from hlm_gym.lm.prompts import Prompt, chat_input_ids, sharegpt_prompts


def encode_example(tokenizer, prompt: Prompt, max_prompt_tokens: int,
                   max_reply_tokens: int) -> tuple[list[int], list[int]] | None:
    """``(ids, mask)`` of ``prompt`` plus its reference reply, or None when unusable.

    ``mask[t] = 1`` where position ``t`` predicts a reply token (the reply ends with
    ``<|im_end|>`` when the tokenizer has it). None when the templated prompt is longer than
    ``max_prompt_tokens`` or the reference is empty; the reply is cut at ``max_reply_tokens``.
    """
    p_ids = chat_input_ids(tokenizer, prompt.text).tolist()
    if len(p_ids) > max_prompt_tokens or not prompt.reference.strip():
        return None
    r_ids = tokenizer(prompt.reference, add_special_tokens=False).input_ids[:max_reply_tokens]
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(end, int) and end >= 0 and end != tokenizer.unk_token_id:
        r_ids = r_ids + [end]
    ids = p_ids + r_ids
    # position t predicts token t+1: the response is predicted from len(p_ids)-1 to len(ids)-2
    mask = [0] * len(ids)
    for t in range(len(p_ids) - 1, len(ids) - 1):
        mask[t] = 1
    return ids, mask


@functools.lru_cache(maxsize=None)
def train_prompts() -> tuple[Prompt, ...]:
    """All ShareGPT *train* turns (the distillation data)."""
    return tuple(sharegpt_prompts("train"))


@functools.lru_cache(maxsize=None)
def eval_prompts() -> tuple[Prompt, ...]:
    """The first 400 ShareGPT *validation* turns (distillation validation and the check batch)."""
    return tuple(sharegpt_prompts("validation", limit=400))
