"""Trace schema, batched builder (against HybridSession), loader and its errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from hlm_gym.lm.decoding import DecoderConfig, HybridSession
from hlm_gym.traces.builder import build_traces, trace_batch
from hlm_gym.traces.store import SCHEMA_VERSION, TraceError, load_traces, read_meta, summarize
from tests.tiny_models import VOCAB, build_tiny_trace, tiny_pair, tiny_prompts

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pair():
    return tiny_pair()


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory):
    return build_tiny_trace(tmp_path_factory.mktemp("tr") / "tiny.parquet")


def _session_records(pair, prompt, cfg):
    s = HybridSession(pair, torch.tensor(prompt.ids), cfg, prompt.seed)
    while not s.done:
        s.commit(True)
    return s.records


@pytest.mark.parametrize("mode", ["greedy", "sample"])
def test_batched_builder_matches_hybrid_session(pair, mode):
    cfg = DecoderConfig(mode=mode, max_new_tokens=20)
    prompts = tiny_prompts(6)
    cols = trace_batch(pair, prompts, cfg, k_choices=(4, 16))
    local = np.asarray(cols["prompt_local"])
    same = 0
    for b, pr in enumerate(prompts):
        recs = _session_records(pair, pr, cfg)
        got = np.asarray(cols["token"])[local == b]
        ref = [r.token for r in recs]
        if mode == "greedy":
            assert got.tolist() == ref
        same += got.tolist() == ref
        n = min(len(ref), len(got))
        np.testing.assert_allclose(np.asarray(cols["q_draft"])[local == b][:1], [recs[0].q_draft], rtol=1e-4)
        np.testing.assert_allclose(np.asarray(cols["beta"])[local == b][:n][:3], [r.beta for r in recs[:3]], atol=1e-4)
        np.testing.assert_allclose(np.asarray(cols["u"])[local == b][:3], [r.signals["u"] for r in recs[:3]])
        if mode == "sample":
            np.testing.assert_allclose(np.asarray(cols["uniform"])[local == b][:3], [r.uniform for r in recs[:3]])
    # sample mode: identical up to rare float-level flips of batched matmuls
    assert same >= len(prompts) - 1


def test_per_k_acceptance_uses_the_same_uniform(trace_file):
    tr = load_traces(trace_file)
    c = tr.columns
    assert tr.k_choices == (4, 16)
    for k in tr.k_choices:
        acc, beta = c[f"accepted_k{k}"], c[f"beta_k{k}"].astype(np.float64)
        # a draft accepted outright (beta = 0) under q_hat_k is always accepted
        assert np.all(acc[beta == 0])
        # acceptance with the same uniform: accepted iff uniform < 1 - beta (up to float16 rounding of beta)
        u = c["uniform"].astype(np.float64)
        clear = np.abs(u - (1 - beta)) > 2e-3
        assert np.array_equal(acc[clear], (u < 1 - beta)[clear])
    clear = np.abs(c["uniform"] - (1 - c["beta"])) > 1e-5
    assert np.array_equal(c["accepted"][clear], (c["uniform"] < 1 - c["beta"])[clear])


def test_roundtrip_schema_and_metadata(trace_file):
    tr = load_traces(trace_file)
    assert tr.meta["schema_version"] == SCHEMA_VERSION
    assert tr.vocab_size == VOCAB and tr.n_prompts == 12
    assert tr.offsets[-1] == len(tr.columns["token"])
    ends = np.flatnonzero(tr.columns["end"])
    assert np.array_equal(ends + 1, tr.offsets[1:])  # exactly one end row per prompt, its last row
    assert all(isinstance(v, np.ndarray) for v in tr.columns.values())
    assert tr.columns["token"].dtype == np.int32
    k = tr.meta["k"]  # u is restored exactly onto its 1/K grid despite float16 storage
    assert tr.columns["u"].dtype == np.float32
    assert np.array_equal(tr.columns["u"] * k, np.round(tr.columns["u"] * k))
    assert [p["seed"] for p in tr.meta["prompts"]] == list(range(12))
    assert tr.prompt_token_ids(3).tolist() == list(tiny_prompts(12)[3].ids)
    assert tr.token_text(int(tr.columns["token"][0])).startswith((" t", "<"))
    info = summarize(tr)
    assert info["prompts"] == 12 and 0 <= info["acceptance"] <= 1


def test_resumable_build_reuses_parts(tmp_path, pair, monkeypatch):
    import hlm_gym.traces.builder as traces_mod

    cfg = DecoderConfig(mode="greedy", max_new_tokens=8)
    prompts = tiny_prompts(4)
    out = tmp_path / "r.parquet"
    real = traces_mod.trace_batch
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the build dies in the second chunk
        return real(*args, **kwargs)

    monkeypatch.setattr(traces_mod, "trace_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_traces(pair, prompts, cfg, out, k_choices=(4,), batch_size=2, measure=False)
    assert not out.exists() and len(list((tmp_path / "r.parquet.parts").glob("part-*.parquet"))) == 1
    monkeypatch.setattr(traces_mod, "trace_batch", real)
    logs = []
    build_traces(pair, prompts, cfg, out, k_choices=(4,), batch_size=2, measure=False, log=logs.append)
    assert any("reused" in line for line in logs)
    assert not (tmp_path / "r.parquet.parts").exists()
    fresh = build_traces(pair, prompts, cfg, tmp_path / "fresh.parquet", k_choices=(4,), batch_size=2, measure=False)
    assert np.array_equal(load_traces(out).columns["token"], load_traces(fresh).columns["token"])


def test_missing_file():
    with pytest.raises(TraceError, match="trace file not found"):
        load_traces("/nonexistent/traces.parquet")


def test_corrupt_file(tmp_path):
    p = tmp_path / "bad.parquet"
    p.write_bytes(b"PAR1 this is not parquet at all")
    with pytest.raises(TraceError, match="not a valid Parquet file"):
        load_traces(p)


def _rewrite(trace_file, tmp_path, meta_fn=None, drop=None):
    import pyarrow.parquet as pq

    table = pq.read_table(trace_file)
    meta = json.loads(table.schema.metadata[b"hlm_gym"])
    if meta_fn:
        meta_fn(meta)
    if drop:
        table = table.drop_columns([drop])
    table = table.replace_schema_metadata({b"hlm_gym": json.dumps(meta).encode()})
    out = tmp_path / "x.parquet"
    pq.write_table(table, out)
    return out


def test_schema_from_the_future(trace_file, tmp_path):
    out = _rewrite(trace_file, tmp_path, meta_fn=lambda m: m.update(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(TraceError, match=f"schema version {SCHEMA_VERSION + 1}, newer than the supported"):
        load_traces(out)


def test_missing_columns(trace_file, tmp_path):
    out = _rewrite(trace_file, tmp_path, drop="beta")
    with pytest.raises(TraceError, match=r"lacks columns \['beta'\]"):
        read_meta(out)


def test_not_a_trace_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"a": [1, 2]}), p)
    with pytest.raises(TraceError, match="no hlm_gym metadata"):
        load_traces(p)


def test_cli_info(trace_file):
    out = subprocess.run([sys.executable, "-m", "hlm_gym.cli.main", "traces", "info", str(trace_file)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["prompts"] == 12
    bad = subprocess.run([sys.executable, "-m", "hlm_gym.cli.main", "traces", "info", "/nope.parquet"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "trace file not found" in bad.stderr
