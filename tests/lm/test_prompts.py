"""Prompt sources: ShareGPT split, truncated JSON parsing, prompt files."""

from __future__ import annotations

import json

import pytest

from hlm_gym.lm.prompts import (PromptError, iter_json_array, read_prompt_file, sharegpt_prompts, split_of)


def test_truncated_json_array_stops_at_last_complete_element():
    text = '[{"id": "a", "x": [1, 2]}, {"id": "b"}, {"id": "c", "x": [1, 2'
    assert [o["id"] for o in iter_json_array(text)] == ["a", "b"]
    assert [o["id"] for o in iter_json_array('[{"id": "a"}]')] == ["a"]


def test_split_is_a_fixed_function_of_the_id():
    assert split_of("QWJhYvA_0") == split_of("QWJhYvA_0")
    counts = {s: 0 for s in ("train", "validation", "test")}
    for i in range(20000):
        counts[split_of(f"conv-{i}")] += 1
    assert counts["train"] / 20000 == pytest.approx(0.8, abs=0.02)
    assert counts["test"] / 20000 == pytest.approx(0.1, abs=0.02)


def test_sharegpt_splits_are_disjoint_and_nonempty():
    train = sharegpt_prompts("train", limit=2000)
    test = sharegpt_prompts("test")
    assert len(test) > 500 and len(train) == 2000
    assert not {p.id for p in train} & {p.id for p in test}
    assert all(p.text.strip() and len(p.text) <= 1000 for p in test)
    assert all(split_of(p.id) == "test" for p in test)
    with pytest.raises(PromptError, match="unknown split"):
        sharegpt_prompts("dev")


def test_prompt_files(tmp_path):
    plain = tmp_path / "p.txt"
    plain.write_text("first prompt\n\nsecond prompt\n")
    assert [p.text for p in read_prompt_file(plain)] == ["first prompt", "second prompt"]
    jl = tmp_path / "p.jsonl"
    jl.write_text(json.dumps({"prompt": "hi", "id": "x1"}) + "\n" + json.dumps({"text": "there"}) + "\n")
    got = read_prompt_file(jl)
    assert [(p.id, p.text) for p in got] == [("x1", "hi"), ("p.jsonl:2", "there")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{oops\n')
    with pytest.raises(PromptError, match=r"bad.jsonl:2: not valid JSON"):
        read_prompt_file(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(PromptError, match="contains no prompts"):
        read_prompt_file(empty)
    with pytest.raises(PromptError, match="not found"):
        read_prompt_file(tmp_path / "missing.txt")
