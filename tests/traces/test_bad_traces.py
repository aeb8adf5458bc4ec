"""Trace files with bad values or broken episode structure are refused on load with one clear line.

Each case writes a corrupted copy of the golden trace (``tests/data/golden/trace.parquet``:
60 prompts, V = 49152, k_choices 8/64/512, sample mode) and requires a :class:`TraceError`
whose message names the file, the column or metadata key, the value and (for rows) the prompt
and position of the first bad row.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hlm_gym.traces.store import (SCHEMA_VERSION, TraceError, load_traces, read_meta, validate,
                                  validate_columns)

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden" / "trace.parquet"
#: the row corrupted by the column cases: prompt 3, position 5 (prompt 3 starts at row 372)
P, POS = 3, 5


@pytest.fixture(scope="module")
def golden():
    table = pq.read_table(GOLDEN)
    meta = json.loads(table.schema.metadata[b"hlm_gym"])
    offsets = np.concatenate([[0], np.cumsum([p["n_tokens"] for p in meta["prompts"]])])
    return table, meta, offsets


def corrupt(golden, out: Path, columns=None, meta_fn=None) -> Path:
    """Write the golden trace to ``out`` with ``columns`` ({name: fn(array, offsets) -> array}) and
    ``meta_fn(meta)`` applied."""
    table, meta, offsets = golden
    meta = json.loads(json.dumps(meta))
    for name, fn in (columns or {}).items():
        old = table.column(name).to_numpy()
        new = fn(old.copy(), offsets)
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(new))
    if meta_fn:
        meta_fn(meta)
    table = table.replace_schema_metadata({b"hlm_gym": json.dumps(meta).encode()})
    pq.write_table(table, out)
    return out


def assert_refused(path: Path, parts) -> str:
    """Loading ``path`` raises a one-line TraceError naming the file and matching every regex of ``parts``."""
    with pytest.raises(TraceError) as err:
        load_traces(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    for part in parts:
        assert re.search(part, msg), (part, msg)
    return msg


def at(value):
    """Set row (prompt P, position POS) of a column to ``value`` (kept in the column's dtype)."""
    def fn(col, offsets):
        col[offsets[P] + POS] = value
        return col
    return fn


def at_rows(value, rows):
    def fn(col, offsets):
        col[[offsets[P] + r for r in rows]] = value
        return col
    return fn


ROW = f"prompt {P}, position {POS}"

# (case id, column, corruption, regex parts the message must hold)
COLUMN_CASES = [
    ("beta-nan", "beta", at(np.nan), ["'beta' = nan", ROW, r"finite, in \[0, 1\]"]),
    ("beta-above-1", "beta", at(1.5), ["'beta' = 1.5", ROW]),
    ("beta-negative", "beta", at(-0.25), ["'beta' = -0.25", ROW]),
    ("beta-inf", "beta", at(np.inf), ["'beta' = inf", ROW]),
    ("beta-k8-nan", "beta_k8", at(np.nan), ["'beta_k8' = nan", ROW]),
    ("beta-k512-above-1", "beta_k512", at(2.0), ["'beta_k512' = 2", ROW]),
    ("q-draft-above-1", "q_draft", at(1.25), ["'q_draft' = 1.25", ROW]),
    ("p-draft-nan", "p_draft", at(np.nan), ["'p_draft' = nan", ROW]),
    ("u-nan", "u", at(np.nan), ["'u' = nan", ROW]),
    ("u-above-1", "u", at(1.5), ["'u' = 1.5", ROW]),
    ("top1-negative", "top1_prob", at(-0.5), ["'top1_prob' = -0.5", ROW]),
    ("margin-nan", "margin", at(np.nan), ["'margin' = nan", ROW]),
    ("entropy-negative", "entropy", at(-1.0), ["'entropy' = -1", ROW, "ln V"]),
    ("entropy-inf", "entropy", at(np.inf), ["'entropy' = inf", ROW]),
    ("entropy-above-ln-v", "entropy", at(20.0), ["'entropy' = 20", ROW, r"ln V = 10\.8"]),
    ("saturation-above-1", "saturation", at(1.5), ["'saturation' = 1.5", ROW, "or NaN"]),
    ("saturation-inf", "saturation", at(-np.inf), ["'saturation' = -inf", ROW]),
    ("uniform-nan-in-sample-mode", "uniform", at(np.nan), ["'uniform' = nan", ROW, "sample mode"]),
    ("uniform-above-1", "uniform", at(3.0), ["'uniform' = 3", ROW]),
    ("draft-beyond-vocab", "draft", at(49152), ["'draft' = 49152", ROW, r"0\.\.49151"]),
    ("token-negative", "token", at(-1), ["'token' = -1", ROW, r"0\.\.49151"]),
    ("two-bad-rows-counted", "beta", at_rows(np.nan, [POS, POS + 2]), ["'beta' = nan", ROW, "and 1 more rows"]),
]


@pytest.mark.parametrize("column,fn,parts", [c[1:] for c in COLUMN_CASES], ids=[c[0] for c in COLUMN_CASES])
def test_bad_column_values_are_refused(golden, tmp_path, column, fn, parts):
    msg = assert_refused(corrupt(golden, tmp_path / "bad.parquet", columns={column: fn}), parts)
    assert "allowed:" in msg


def _end_missing(col, offsets):
    col[offsets[P + 1] - 1] = False
    return col


def _end_early(col, offsets):
    col[offsets[P] + POS] = True
    return col


def _no_end_at_all(col, offsets):
    return np.zeros_like(col)


def _position_skips(col, offsets):
    col[offsets[P] + POS:offsets[P + 1]] += 1
    return col


def _position_restarts(col, offsets):
    col[offsets[P] + POS] = 0
    return col


def _prompts_interleaved(col, offsets):
    col[offsets[P] + POS] = P + 1
    return col


def _prompt_gap(col, offsets):
    col[offsets[P]:] += 1
    return col


def _prompt_starts_at_one(col, offsets):
    return col + 1


STRUCTURE_CASES = [
    ("end-missing", {"end": _end_missing},
     [f"'end' = False at prompt {P}, position 127", "exactly one end per prompt, on its last row"]),
    ("end-before-last-row", {"end": _end_early}, [f"'end' = True at {ROW}", r"here position 127"]),
    ("no-end-flags", {"end": _no_end_at_all}, ["'end' = False at prompt 0, position 115"]),
    ("position-skips", {"position": _position_skips}, [rf"'position' = 6 at prompt {P} \(row 377\)", "expected 5"]),
    ("position-restarts", {"position": _position_restarts}, [f"'position' = 0 at prompt {P}", "expected 5"]),
    ("prompts-interleaved", {"prompt": _prompts_interleaved}, ["'prompt' = 3 at row 378", "grouped by prompt"]),
    ("prompt-gap", {"prompt": _prompt_gap}, ["'prompt' = 4 at row 372", "no gaps"]),
    ("prompt-starts-at-1", {"prompt": _prompt_starts_at_one}, ["'prompt' = 1 at row 0"]),
    ("accepted-not-bool", {"accepted": lambda c, o: c.astype(np.int8)}, ["'accepted' has type int8", "booleans"]),
    ("end-not-bool", {"end": lambda c, o: c.astype(np.int64)}, ["'end' has type int64", "booleans"]),
    ("accepted-k64-not-bool", {"accepted_k64": lambda c, o: c.astype(np.float32)}, ["'accepted_k64' has type float32"]),
    ("draft-not-int", {"draft": lambda c, o: c.astype(np.float32)}, ["'draft' has type float32", "integers"]),
    ("beta-not-float", {"beta": lambda c, o: (c > 0.5).astype(np.int32)}, ["'beta' has type int32", "floating"]),
]


@pytest.mark.parametrize("columns,parts", [c[1:] for c in STRUCTURE_CASES], ids=[c[0] for c in STRUCTURE_CASES])
def test_broken_episode_structure_is_refused(golden, tmp_path, columns, parts):
    assert_refused(corrupt(golden, tmp_path / "bad.parquet", columns=columns), parts)


def _set(key, value):
    return lambda m: m.update({key: value})


def _drop_prompt_field(field):
    def fn(m):
        del m["prompts"][2][field]
    return fn


META_CASES = [
    ("schema-version-0", _set("schema_version", 0), ["'schema_version' = 0", rf"1\.\.{SCHEMA_VERSION}"]),
    ("schema-version-negative", _set("schema_version", -3), ["'schema_version' = -3"]),
    ("schema-version-string", _set("schema_version", "1"), ["schema_version", "'1'"]),
    ("schema-version-bool", _set("schema_version", True), ["schema_version", "True"]),
    ("vocab-size-0", _set("vocab_size", 0), ["'vocab_size' = 0", "integer >= 2"]),
    ("vocab-size-1", _set("vocab_size", 1), ["'vocab_size' = 1", "integer >= 2"]),
    ("vocab-size-float", _set("vocab_size", 49152.0), ["'vocab_size' = 49152.0"]),
    ("max-new-tokens-0", _set("max_new_tokens", 0), ["'max_new_tokens' = 0", "integer >= 1"]),
    ("max-new-tokens-negative", _set("max_new_tokens", -5), ["'max_new_tokens' = -5"]),
    ("max-new-tokens-string", _set("max_new_tokens", "128"), ["'max_new_tokens' = '128'"]),
    ("response-longer-than-max-new-tokens", _set("max_new_tokens", 100),
     ["prompt 0 has 116 token rows", "'max_new_tokens' = 100"]),
    ("k-choices-duplicate", _set("k_choices", [8, 8, 64, 512]), ["'k_choices' = \\[8, 8, 64, 512\\]", "distinct"]),
    ("k-choices-zero", _set("k_choices", [0, 8]), ["'k_choices' holds 0", r"1\.\.49151"]),
    ("k-choices-vocab", _set("k_choices", [8, 49152]), ["'k_choices' holds 49152", r"1\.\.49151"]),
    ("k-choices-string", _set("k_choices", ["8"]), ["'k_choices' holds '8'"]),
    ("k-choices-not-a-list", _set("k_choices", 8), ["'k_choices' = 8"]),
    ("vocab-smaller-than-ids", _set("vocab_size", 600), ["'draft' = ", r"token ids in 0\.\.599"]),
    ("mode-unknown", _set("mode", "beam"), ["'mode' = 'beam'", "sample or greedy"]),
    ("k-zero", _set("k", 0), ["'k' = 0", "integer >= 1"]),
    ("k-string", _set("k", "x"), ["'k' = 'x'", "integer >= 1"]),
    ("temperature-zero", _set("temperature", 0), ["'temperature' = 0", "> 0"]),
    ("theta-max-string", _set("theta_max", "2"), ["'theta_max' = '2'"]),
    ("eos-beyond-vocab", _set("eos_token_id", 10 ** 6), ["'eos_token_id' = 1000000"]),
    ("prompts-empty", _set("prompts", []), ["'prompts' = \\[\\]", "non-empty list"]),
    ("prompts-not-a-list", _set("prompts", {"a": 1}), ["'prompts' = "]),
    ("prompt-entry-not-object", lambda m: m["prompts"].__setitem__(4, "p4"), [r"'prompts'\[4\] = 'p4'"]),
    ("prompt-without-seed", _drop_prompt_field("seed"), [r"'prompts'\[2\]\['seed'\] = '<missing>'"]),
    ("prompt-without-id", _drop_prompt_field("id"), [r"'prompts'\[2\]\['id'\]"]),
    ("prompt-seed-string", lambda m: m["prompts"][2].update(seed="7"), [r"'prompts'\[2\]\['seed'\] = '7'"]),
    ("prompt-n-tokens-wrong", lambda m: m["prompts"][7].update(n_tokens=5),
     [r"'prompts'\[7\]\['n_tokens'\] = 5 but prompt 7 has 128 token rows"]),
    ("fewer-prompts-than-rows", lambda m: m["prompts"].pop(), ["'prompt' = 59 at row", "metadata lists 59 prompts"]),
    ("more-prompts-than-rows", lambda m: m["prompts"].append(dict(m["prompts"][0])),
     ["metadata lists 61 prompts", "last prompt is missing"]),
    ("metadata-lacks-key", lambda m: m.pop("vocab_size"), ["lacks 'vocab_size'"]),
]


@pytest.mark.parametrize("meta_fn,parts", [c[1:] for c in META_CASES], ids=[c[0] for c in META_CASES])
def test_bad_metadata_is_refused(golden, tmp_path, meta_fn, parts):
    assert_refused(corrupt(golden, tmp_path / "bad.parquet", meta_fn=meta_fn), parts)


def test_metadata_errors_come_before_reading_columns(golden, tmp_path):
    path = corrupt(golden, tmp_path / "bad.parquet", meta_fn=_set("vocab_size", 0))
    with pytest.raises(TraceError, match="'vocab_size' = 0"):
        read_meta(path)


def test_metadata_that_is_not_an_object(golden, tmp_path):
    table = golden[0].replace_schema_metadata({b"hlm_gym": b"[1, 2]"})
    pq.write_table(table, tmp_path / "list.parquet")
    with pytest.raises(TraceError, match="corrupt metadata: a JSON list"):
        load_traces(tmp_path / "list.parquet")


def test_null_values_are_refused(golden, tmp_path):
    table, meta, offsets = golden
    beta = table.column("beta").to_pylist()
    beta[offsets[P] + POS] = None
    table = table.set_column(table.schema.get_field_index("beta"), "beta", pa.array(beta, type=pa.float32()))
    pq.write_table(table, tmp_path / "null.parquet")
    with pytest.raises(TraceError, match="column 'beta' has 1 missing values"):
        load_traces(tmp_path / "null.parquet")


# ------------------------------------------------------------------------------ what stays legal
def test_legal_edge_values_load(golden, tmp_path):
    """NaN saturation (no hidden states), exact 0 and 1 probabilities, and NaN uniforms in greedy mode."""
    cols = {"saturation": at_rows(np.nan, [0, 1, 2]), "beta": at_rows(1.0, [0]), "q_draft": at_rows(0.0, [1]),
            "uniform": lambda c, o: np.full_like(c, np.nan)}
    path = corrupt(golden, tmp_path / "ok.parquet", columns=cols, meta_fn=_set("mode", "greedy"))
    tr = load_traces(path)
    assert np.isnan(tr.columns["saturation"][372]) and tr.columns["beta"][372] == 1.0
    validate(tr)


def test_shipped_and_golden_traces_pass():
    from hlm_gym.traces.store import SPLITS, default_trace_path

    for path in [GOLDEN] + [default_trace_path(s) for s in SPLITS if default_trace_path(s).is_file()]:
        tr = load_traces(path)
        validate(tr)
        validate(tr.subset([2, 0, 1]))


def test_validate_checks_columns_assembled_in_memory(golden):
    tr = load_traces(GOLDEN)
    cols = dict(tr.columns)
    cols["beta"] = cols["beta"].copy()
    cols["beta"][10] = np.nan
    with pytest.raises(TraceError, match=r"<mem>: column 'beta' = nan at prompt 0, position 10 \(row 10\)"):
        validate_columns(cols, tr.meta, "<mem>")
    cols.pop("u")
    with pytest.raises(TraceError, match=r"lacks columns \['u'\]"):
        validate_columns(cols, tr.meta, "<mem>")


def test_environment_refuses_a_bad_trace(golden, tmp_path):
    import gymnasium as gym

    import hlm_gym.environments.registration as reg

    reg.register_envs()
    path = corrupt(golden, tmp_path / "nan-beta.parquet", columns={"beta": at(np.nan)})
    with pytest.raises(TraceError, match=rf"nan-beta\.parquet: column 'beta' = nan at {ROW}"):
        gym.make("hlm_gym/HybridLM-v0", trace=str(path))
    ends = corrupt(golden, tmp_path / "no-end.parquet", columns={"end": _end_missing})
    with pytest.raises(TraceError, match="column 'end' = False"):
        gym.make("hlm_gym/HybridLMCompressed-v0", trace=str(ends))
    zero = corrupt(golden, tmp_path / "zero.parquet", meta_fn=_set("max_new_tokens", 0))
    with pytest.raises(TraceError, match="'max_new_tokens' = 0"):
        gym.make("hlm_gym/HybridLM-v0", trace=str(zero))


def test_cli_info_reports_a_bad_trace_in_one_line(golden, tmp_path, capsys):
    from hlm_gym.cli.main import main

    path = corrupt(golden, tmp_path / "bad.parquet", columns={"u": at(np.nan)})
    assert main(["traces", "info", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hlm-gym: error: trace file") and "'u' = nan" in err and "\n" not in err
