"""On-policy distillation data: the LLM's own sampled continuations of ShareGPT prompts.

The SLM drafts in the hybrid loop on text the LLM wrote, not on ShareGPT's reference replies,
and it is weaker there (docs/slm.md). As in DistillSpec, the recipe
(:mod:`hlm_gym.lm.distill`, ``--on-policy-fraction``) can therefore train on the LLM's own
continuations of **train** prompts as well: sampled at temperature 1 from the LLM's full
distribution (no top-k, no top-p), the decoding ``hlm-gym slm report`` uses for its
LLM-continuation figure, batched with the KV cache (:func:`sample_continuations`).

The continuations are cached in a JSON file of the run folder (:func:`continuation_data`),
written atomically after every batch, so a resumed or interrupted run reuses what was
generated; each batch draws from its own generator seeded from the run's seed and the batch
index, so an interrupted generation continues exactly as an uninterrupted one would have.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Callable, Sequence

import torch

from hlm_gym.lm.student import DistillError
from hlm_gym.paths import atomic_write_text

DATA_FORMAT = 1
TRAIN_FILE = "onpolicy_train.json"  # continuations of train prompts: training rows
VAL_FILE = "onpolicy_validation.json"  # continuations of validation prompts: monitoring and calibration only

Example = tuple[list[int], list[int]]  # (token ids, mask of the positions that predict a continuation token)


def _cache_of(output):
    """The KV cache of a model output (``cache`` in newer transformers, ``past_key_values`` before)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


@torch.no_grad()
def decode_batch(model, prompts: Sequence[Sequence[int]], new_tokens: int, eos_id: int | None, pad_id: int,
                 draw: Callable[[torch.Tensor], torch.Tensor]) -> list[list[int]]:
    """Continue every prompt of one batch by up to ``new_tokens`` tokens with the KV cache.

    The prompts are left-padded (attention mask and position ids make padding invisible);
    ``draw`` maps the ``(batch, vocab)`` float32 next-token logits to ``(batch,)`` token ids.
    A continuation ends after ``eos_id`` (included) or ``new_tokens`` tokens.
    """
    if not prompts:
        return []
    if any(len(p) == 0 for p in prompts):
        raise DistillError("cannot continue an empty prompt")
    device = next(model.parameters()).device
    ids, mask = _left_pad(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    cache = _cache_of(out)
    next_pos = mask.sum(1)
    n = len(prompts)
    conts: list[list[int]] = [[] for _ in range(n)]
    active = torch.ones(n, dtype=torch.bool)
    logits = out.logits[:, -1].float()
    for t in range(new_tokens):
        tok = draw(logits).reshape(-1).cpu()
        for i in torch.nonzero(active).flatten().tolist():
            conts[i].append(int(tok[i]))
            if eos_id is not None and int(tok[i]) == eos_id:
                active[i] = False
        if not active.any() or t == new_tokens - 1:
            break
        feed = torch.where(active, tok, torch.full_like(tok, pad_id)).to(device)
        mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], 1)
        out = model(input_ids=feed[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                    cache=cache, use_cache=True)
        cache = _cache_of(out)
        next_pos = next_pos + 1
        logits = out.logits[:, -1].float()
    return conts


def sampler(generator: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
    """Temperature-1 sampling from the full softmax of the logits, drawing from ``generator``."""
    def draw(logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.float().cpu(), -1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return draw


def continuation_example(prompt_ids: Sequence[int], continuation: Sequence[int]) -> Example:
    """``(ids, mask)`` of a prompt and its continuation; ``mask[t] = 1`` where ``t`` predicts a continuation token."""
    ids = list(prompt_ids) + list(continuation)
    mask = [0] * len(ids)
    for t in range(len(prompt_ids) - 1, len(ids) - 1):
        mask[t] = 1
    return ids, mask


def choose_prompts(tokenizer, prompts, n: int, max_prompt_tokens: int,
                   seed: int) -> list[tuple[str, list[int]]]:
    """``(prompt id, chat-templated ids)`` of ``n`` prompts drawn (shuffled with ``seed``) from ``prompts``,
    each at most ``max_prompt_tokens`` long."""
    from hlm_gym.lm.prompts import chat_input_ids

    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    out = []
    for i in order:
        if not prompts[i].text.strip():
            continue
        ids = chat_input_ids(tokenizer, prompts[i].text).tolist()
        if len(ids) <= max_prompt_tokens:
            out.append((prompts[i].id, ids))
            if len(out) == n:
                break
    return out


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("format") == DATA_FORMAT else None


def _reusable(old: dict | None, settings: dict, names: list[str]) -> tuple[list[int], dict[int, list[int]]]:
    """The segment ends and cached continuations of ``old`` that a cache of ``names`` keeps.

    All of them when ``old`` has the same settings (its prompt count aside) and its prompts
    are ``names`` or their first ones (then ``names`` adds a segment); none otherwise.
    """
    fresh = ([len(names)], {})
    if old is None:
        return fresh
    same = {k: v for k, v in old.get("settings", {}).items() if k != "n_prompts"}
    if same != {k: v for k, v in settings.items() if k != "n_prompts"}:
        return fresh
    have = old.get("prompts")
    if not isinstance(have, list) or not have or names[:len(have)] != have:
        return fresh
    segments = old.get("segments", [len(have)])  # files written before segments were one
    if not (isinstance(segments, list) and segments and segments[-1] == len(have)
            and all(isinstance(e, int) and 0 < e for e in segments) and segments == sorted(set(segments))):
        return fresh
    done = {int(k): v for k, v in old.get("continuations", {}).items() if int(k) < len(have)}
    return (segments if len(names) == len(have) else segments + [len(names)]), done


def _segment_batches(lengths: Sequence[int], segments: Sequence[int], batch_size: int) -> list[list[int]]:
    """Batches of prompt indices: each segment's prompts sorted by ``(length, index)``, cut into ``batch_size``."""
    batches: list[list[int]] = []
    start = 0
    for end in segments:
        # batches of similar lengths waste less work on padding; the order is a function of the data
        order = sorted(range(start, end), key=lambda i: (lengths[i], i))
        batches += [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
        start = end
    return batches


def continuation_data(model, tokenizer, prompts, path: str | Path, n_prompts: int, new_tokens: int,
                      max_prompt_tokens: int, seed: int, fingerprint: str, batch_size: int = 16,
                      progress: bool = True, desc: str = "LLM continuations") -> list[Example]:
    """The LLM's temperature-1 continuations of ``n_prompts`` of ``prompts``, as ``(ids, mask)`` examples.

    Reuses (and completes) the cache file ``path`` when it was made with the same settings, the
    same LLM (``fingerprint``) and the same prompts (their ids are recorded). A cache of fewer
    prompts with the same settings grows: its prompts are the first ones of the same shuffle, so
    their continuations are kept and only the new prompts are decoded, as a new *segment*.
    Otherwise the file is generated afresh. It is saved atomically after each batch.

    Within each segment (the file records their ends) the prompts are sorted by length and
    batched; batch ``b`` (counted over all segments) draws from a generator seeded with
    ``seed * 1000003 + b``. A fresh cache is one segment, so it is a function of the settings;
    a grown cache is a function of the settings and its segments.
    """
    from tqdm.auto import tqdm

    if n_prompts < 1 or new_tokens < 1 or max_prompt_tokens < 1 or batch_size < 1:
        raise DistillError("on-policy prompts, tokens, prompt length and batch size must be >= 1")
    path = Path(path)
    settings = {"n_prompts": n_prompts, "new_tokens": new_tokens, "max_prompt_tokens": max_prompt_tokens,
                "seed": seed, "llm": fingerprint, "batch_size": batch_size, "sampling": "temperature 1, full softmax"}
    picked = choose_prompts(tokenizer, prompts, n_prompts, max_prompt_tokens, seed)
    names = [name for name, _ in picked]
    chosen = [ids for _, ids in picked]
    if not chosen:
        raise DistillError(f"no prompt of at most {max_prompt_tokens} tokens to continue")
    old = _read(path) if path.is_file() else None
    segments, done = _reusable(old, settings, names)
    batches = _segment_batches([len(ids) for ids in chosen], segments, batch_size)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>") if hasattr(tokenizer, "convert_tokens_to_ids") else None
    if not isinstance(eos, int) or eos < 0:
        eos = getattr(tokenizer, "eos_token_id", None)
    pad = eos if eos is not None else 0
    todo = [b for b, batch in enumerate(batches) if any(i not in done for i in batch)]
    bar = tqdm(total=len(batches), initial=len(batches) - len(todo), desc=desc, disable=not progress,
               dynamic_ncols=True)
    for b in todo:
        batch = batches[b]
        gen = torch.Generator().manual_seed(seed * 1000003 + b)
        conts = decode_batch(model, [chosen[i] for i in batch], new_tokens, eos, pad, sampler(gen))
        done.update(zip(batch, conts))
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"format": DATA_FORMAT, "settings": settings, "prompts": names,
                                            "segments": segments,
                                            "continuations": {str(k): v for k, v in sorted(done.items())}}))
        bar.update(1)
    bar.close()
    return [continuation_example(chosen[i], done[i]) for i in range(len(chosen))]


def pack_examples(examples: Sequence[Example], seq_len: int, n_rows: int | None = None,
                  seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate examples (shuffled with ``seed`` when given) and cut the stream into rows of ``seq_len``.

    At most ``n_rows`` rows (all full rows when None). The last position of a row predicts a
    token in the next row, so it is never a training position.
    """
    order = list(range(len(examples)))
    if seed is not None:
        random.Random(seed).shuffle(order)
    ids_stream: list[int] = []
    mask_stream: list[int] = []
    need = None if n_rows is None else seq_len * n_rows
    for i in order:
        ids_stream += examples[i][0]
        mask_stream += examples[i][1]
        if need is not None and len(ids_stream) >= need:
            break
    rows = len(ids_stream) // seq_len
    if n_rows is not None:
        rows = min(rows, n_rows)
    if rows == 0:
        raise DistillError(f"not enough text for one row of {seq_len} tokens")
    ids = torch.tensor(ids_stream[: rows * seq_len]).view(rows, seq_len)
    mask = torch.tensor(mask_stream[: rows * seq_len], dtype=torch.bool).view(rows, seq_len)
    mask[:, -1] = False
    return ids, mask


def mixed_row(k: int, fraction: float, n_reference: int, n_onpolicy: int) -> tuple[bool, int]:
    """Which stream training row ``k`` comes from, and its index there.

    Row ``k`` is on-policy iff ``floor((k + 1) F) > floor(k F)``, so any window of rows holds
    the share ``F`` of on-policy rows up to one row; each stream is read in order and cycled.
    """
    if not 0.0 <= fraction <= 1.0:
        raise DistillError(f"on-policy fraction must lie in [0, 1], got {fraction!r}")
    before = _floor(k * fraction)
    if _floor((k + 1) * fraction) > before:
        if n_onpolicy < 1:
            raise DistillError("on-policy rows requested but there are none")
        return True, before % n_onpolicy
    if n_reference < 1:
        raise DistillError("reference rows requested but there are none")
    return False, (k - before) % n_reference


def _floor(x: float) -> int:
    """``floor(x)`` robust to binary rounding of products such as ``3 * 0.1`` (nudged by 1e-9)."""
    return math.floor(x + 1e-9)
