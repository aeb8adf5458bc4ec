"""WDMoE traces: schema round trip, one-line validation errors, the builder against a direct computation,
and the shipped files."""

from __future__ import annotations

import dataclasses
import json
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from hlm_gym.lm.moe import MoEModel, expert_outputs, load_moe_spec, make_spec
from hlm_gym.lm.prompts import Prompt
from hlm_gym.traces.store import TraceError
from hlm_gym.traces.wdmoe import (META_KEY, WDMoETraces, default_wdmoe_path, load_wdmoe_traces,
                                  validate_wdmoe_traces, write_wdmoe_traces)
from hlm_gym.traces.wdmoe_builder import build_wdmoe_traces, encode_prompts
from tests.tiny_models import tiny_model

L, E = 3, 4


def synthetic(n_prompts: int = 3, seed: int = 0, steps=(2, 5, 1)) -> WDMoETraces:
    rng = np.random.default_rng(seed)
    n_tok = int(sum(steps[:n_prompts]))
    R = n_tok * L
    y = rng.normal(size=(R, E, 6)).astype(np.float32) * rng.uniform(0.1, 30, size=(R, 1, 1)).astype(np.float32)
    gram = np.einsum("red,rfd->ref", y, y)
    logits = rng.normal(size=(R, E))
    scores = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(np.asarray(steps[:n_prompts]) * L)]).astype(np.int64)
    meta = {"schema_version": 1, "split": "test", "prompt_ids": [f"p{i}" for i in range(n_prompts)],
            "prompt_token_ids": [[1, 2, 3]] * n_prompts, "n_layers": L, "n_experts": E, "hidden_size": 6,
            "expert_intermediate": 16, "vocab_size": 64, "max_tokens": 8, "model_fingerprint": "m",
            "moe_fingerprint": "x"}
    return WDMoETraces(scores, gram.astype(np.float32), rng.uniform(1, 100, R).astype(np.float32),
                       rng.integers(0, 64, n_tok).astype(np.int64), offsets, L, E, meta)


def test_round_trip(tmp_path):
    t = synthetic()
    path = write_wdmoe_traces(t, tmp_path / "t.parquet")
    back = load_wdmoe_traces(path)
    assert back.n_layers == L and back.n_experts == E and back.n_prompts == 3 and back.n_tokens == 8
    assert back.scores.dtype == back.gram.dtype == back.residual_norm2.dtype == np.float32
    assert back.token_ids.dtype == back.prompt_offsets.dtype == np.int64
    np.testing.assert_array_equal(back.prompt_offsets, t.prompt_offsets)
    np.testing.assert_array_equal(back.token_ids, t.token_ids)
    np.testing.assert_array_equal(back.residual_norm2, t.residual_norm2)
    np.testing.assert_allclose(back.scores, t.scores, atol=1e-3)
    np.testing.assert_allclose(back.scores.sum(1), 1.0, atol=1e-6)
    scale = np.diagonal(t.gram, axis1=1, axis2=2).max(1)[:, None, None]
    assert (np.abs(back.gram - t.gram) <= 1e-3 * scale).all()  # float16 of gram / scale
    np.testing.assert_array_equal(back.gram, back.gram.transpose(0, 2, 1))
    assert back.meta["prompt_ids"] == ["p0", "p1", "p2"] and back.meta["schema_version"] == 1
    # the subset error u^T G u survives float16 storage to 1e-2 of the row's scale
    keep = np.random.default_rng(1).random((t.n_rows, E)) < 0.5
    assert (np.abs(back.mlp_error(keep) - t.mlp_error(keep)) <= 1e-2 * scale[:, 0, 0]).all()
    assert back.token_offsets.tolist() == [0, 2, 7, 8]


def test_mlp_error_is_the_dropped_experts_norm():
    t = synthetic()
    y = np.random.default_rng(3).normal(size=(t.n_rows, E, 7))
    t = dataclasses.replace(t, gram=np.einsum("red,rfd->ref", y, y).astype(np.float32))
    keep = np.random.default_rng(4).random((t.n_rows, E)) < 0.5
    want = ((y * (~keep)[..., None]).sum(1) ** 2).sum(-1)
    np.testing.assert_allclose(t.mlp_error(keep), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(t.mlp_error(np.ones_like(keep)), 0.0)


def _replace(t: WDMoETraces, **kw) -> WDMoETraces:
    return dataclasses.replace(t, **kw)


def _bad(name):
    t = synthetic()
    if name == "score_range":
        s = t.scores.copy(); s[4, 2] = 1.5
        return _replace(t, scores=s), "column 'score_2' = 1.5 at prompt 0, position 1, layer 1 (row 4)"
    if name == "score_sum":
        s = t.scores.copy(); s[7] *= 0.5
        return _replace(t, scores=s), "scores summing to 1"
    if name == "score_nan":
        s = t.scores.copy(); s[0, 0] = np.nan
        return _replace(t, scores=s), "column 'score_0' = nan"
    if name == "asymmetric":
        g = t.gram.copy(); g[9, 0, 1] += 10 * abs(g[9]).max()
        return _replace(t, gram=g), "gram is not symmetric at prompt 1, position 1, layer 0 (row 9)"
    if name == "not_gram":
        g = t.gram.copy(); d = abs(g[3]).max() * 5; g[3, 1, 2] = g[3, 2, 1] = d
        return _replace(t, gram=g), "column 'gram_1_2'"
    if name == "negative_diag":
        g = t.gram.copy(); g[2, 3, 3] = -1
        return _replace(t, gram=g), "column 'gram_3_3' = -1"
    if name == "residual":
        r = t.residual_norm2.copy(); r[5] = -2
        return _replace(t, residual_norm2=r), "column 'residual_norm2' = -2 at prompt 0, position 1, layer 2"
    if name == "token":
        tok = t.token_ids.copy(); tok[3] = 64
        return _replace(t, token_ids=tok), "column 'token_id' = 64 at step 3; allowed: token ids in 0..63"
    if name == "offsets":
        return _replace(t, prompt_offsets=np.array([0, 5, 21, 24])), "increasing multiples of 3"
    if name == "prompt_ids":
        return _replace(t, meta={**t.meta, "prompt_ids": ["a", "b"], "prompt_token_ids": [[1], [2]]}), "prompt offsets"
    if name == "too_long":
        return _replace(t, meta={**t.meta, "max_tokens": 4}), "prompt 1 has 5 steps, more than metadata key 'max_tokens' = 4"
    if name == "missing_meta":
        meta = dict(t.meta); del meta["moe_fingerprint"]
        return _replace(t, meta=meta), "metadata lacks 'moe_fingerprint'"
    if name == "newer":
        return _replace(t, meta={**t.meta, "schema_version": 9}), "schema version 9, newer than the supported"
    if name == "split":
        return _replace(t, meta={**t.meta, "split": "dev"}), "metadata key 'split' = 'dev'; allowed: train"
    if name == "layers":
        return _replace(t, meta={**t.meta, "n_layers": 5}), "metadata key 'n_layers' = 5; allowed: 3"
    if name == "shape":
        return _replace(t, gram=t.gram[:, :3]), "gram has shape"
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["score_range", "score_sum", "score_nan", "asymmetric", "not_gram", "negative_diag",
                                  "residual", "token", "offsets", "prompt_ids", "too_long", "missing_meta", "newer",
                                  "split", "layers", "shape"])
def test_validation_errors_are_one_line(name, tmp_path):
    traces, match = _bad(name)
    with pytest.raises(TraceError) as info:
        validate_wdmoe_traces(traces, "x.parquet")
    msg = str(info.value)
    assert match in msg and "\n" not in msg and msg.startswith("WDMoE trace file x.parquet")
    with pytest.raises(TraceError, match="WDMoE trace file"):  # nothing bad is ever written
        write_wdmoe_traces(traces, tmp_path / "bad.parquet")
    assert not (tmp_path / "bad.parquet").exists()


def _rewrite(path, out, edit_table=None, edit_meta=None):
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[META_KEY])
    if edit_table:
        table = edit_table(table)
    if edit_meta:
        edit_meta(meta)
    pq.write_table(table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()}), out)
    return out


def test_bad_files_are_one_line_errors(tmp_path):
    good = write_wdmoe_traces(synthetic(), tmp_path / "good.parquet")
    with pytest.raises(TraceError, match="not found"):
        load_wdmoe_traces(tmp_path / "none.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(TraceError, match="not a valid Parquet file"):
        load_wdmoe_traces(tmp_path / "junk.parquet")
    pq.write_table(pa.table({"a": [1]}), tmp_path / "other.parquet")
    with pytest.raises(TraceError, match="not a WDMoE trace file"):
        load_wdmoe_traces(tmp_path / "other.parquet")
    out = _rewrite(good, tmp_path / "nocol.parquet", lambda t: t.drop(["gram_1_2"]))
    with pytest.raises(TraceError, match=r"lacks columns \['gram_1_2'\]"):
        load_wdmoe_traces(out)

    def swap_layers(t):
        layer = t.column("layer").to_numpy().copy()
        layer[[0, 1]] = layer[[1, 0]]
        return t.set_column(t.schema.get_field_index("layer"), "layer", pa.array(layer))
    with pytest.raises(TraceError, match="column 'layer' = 1 at row 0"):
        load_wdmoe_traces(_rewrite(good, tmp_path / "layers.parquet", swap_layers))

    def bad_token(t):
        tok = t.column("token_id").to_numpy().copy()
        tok[1] += 1
        return t.set_column(t.schema.get_field_index("token_id"), "token_id", pa.array(tok))
    with pytest.raises(TraceError, match="differs between the layers of one step at row 0"):
        load_wdmoe_traces(_rewrite(good, tmp_path / "tok.parquet", bad_token))

    def bad_score(t):
        s = t.column("score_1").to_numpy().copy()
        s[10] = np.float16(2.0)
        return t.set_column(t.schema.get_field_index("score_1"), "score_1", pa.array(s))
    with pytest.raises(TraceError, match=r"tok2.parquet: column 'score_1' = 2 at prompt 1, position 1, layer 1"):
        load_wdmoe_traces(_rewrite(good, tmp_path / "tok2.parquet", bad_score))
    with pytest.raises(TraceError, match="metadata key 'n_experts' = 1"):
        load_wdmoe_traces(_rewrite(good, tmp_path / "ne.parquet", edit_meta=lambda m: m.update(n_experts=1)))
    with pytest.raises(TraceError, match="unknown split"):
        default_wdmoe_path("dev")


# ----------------------------------------------------------------------------- the builder
class WordTokenizer:
    """Stand-in tokenizer: text ``"t5 t9"`` is ids ``[5, 9]``; ``<|im_end|>`` is id 2."""

    chat_template = None
    unk_token_id = None

    def __call__(self, text, add_special_tokens=True):
        return types.SimpleNamespace(input_ids=[int(w[1:]) for w in text.split()])

    def convert_tokens_to_ids(self, token):
        return 2 if token == "<|im_end|>" else None


def tiny_moe(seed: int = 0):
    model = tiny_model(3, layers=L)
    g = torch.Generator().manual_seed(seed)
    d, h, i = 32, 4, 64
    spec = make_spec(E, torch.stack([torch.randperm(i, generator=g) for _ in range(L)]),
                     torch.randn(L, h, d, generator=g), torch.randn(L, h, generator=g),
                     torch.randn(L, E, h, generator=g), torch.randn(L, E, generator=g), {"model_fingerprint": "tiny"})
    return model, MoEModel(model, spec)


def tiny_prompts():
    g = np.random.default_rng(5)
    out = []
    for i in range(5):
        p = " ".join(f"t{x}" for x in g.integers(3, 64, g.integers(2, 9)))
        r = " ".join(f"t{x}" for x in g.integers(3, 64, g.integers(1, 12)))
        out.append(Prompt(f"c{i}", p, r))
    out.insert(2, Prompt("empty", "t5 t6", ""))  # no reference: skipped
    return out


def test_builder_equals_a_direct_computation(tmp_path):
    model, moe = tiny_moe()
    traces = build_wdmoe_traces(moe, WordTokenizer(), tiny_prompts(), max_tokens=6, progress=False, split="test",
                                batch_size=3)
    seqs = encode_prompts(WordTokenizer(), tiny_prompts(), 6)
    assert traces.meta["prompt_ids"] == ["c0", "c1", "c2", "c3", "c4"] == [s.prompt_id for s in seqs]
    assert traces.meta["moe_fingerprint"] == moe.spec.fingerprint and traces.meta["model_fingerprint"] == "tiny"
    assert traces.meta["prompt_token_ids"] == [s.prompt for s in seqs]
    np.testing.assert_array_equal(traces.token_ids, np.concatenate([s.reply for s in seqs]))
    assert all(len(s.reply) <= 6 for s in seqs) and any(s.reply[-1] == 2 for s in seqs)
    dense = [layer.mlp.dense for layer in model.model.layers]
    moe.restore()
    rows = []
    for s in seqs:  # one conversation at a time, no padding, explicit expert outputs
        xs, resid = {}, {}
        hooks = [m.register_forward_pre_hook(lambda mod, a, i=i: xs.__setitem__(i, a[0]))
                 for i, m in enumerate(dense)]
        hooks += [layer.post_attention_layernorm.register_forward_pre_hook(
            lambda mod, a, i=i: resid.__setitem__(i, a[0])) for i, layer in enumerate(model.model.layers)]
        with torch.no_grad():
            model(input_ids=torch.tensor([s.prompt + s.reply]))
            for h in hooks:
                h.remove()
            m, n = len(s.prompt), len(s.reply)
            for t in range(m - 1, m - 1 + n):
                for i in range(L):
                    y = expert_outputs(dense[i], moe.spec.permutation[i], E, xs[i][0, t])
                    rows.append((moe.spec.router_scores(i, xs[i][0, t]).numpy(), (y @ y.T).numpy(),
                                 float(resid[i][0, t].pow(2).sum())))
    assert traces.n_rows == len(rows)
    np.testing.assert_allclose(traces.scores, np.stack([r[0] for r in rows]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(traces.gram, np.stack([r[1] for r in rows]), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(traces.residual_norm2, np.array([r[2] for r in rows]), rtol=1e-5)
    back = load_wdmoe_traces(write_wdmoe_traces(traces, tmp_path / "tiny.parquet"))
    assert back.meta["split"] == "test" and back.n_tokens == traces.n_tokens


def test_builder_refuses_no_usable_prompts():
    _, moe = tiny_moe()
    with pytest.raises(TraceError, match="no usable prompts"):
        build_wdmoe_traces(moe, WordTokenizer(), [Prompt("a", "t3 t4", "")], progress=False)
    with pytest.raises(TraceError, match="max_tokens must be >= 1"):
        build_wdmoe_traces(moe, WordTokenizer(), tiny_prompts(), max_tokens=0, progress=False)


# ----------------------------------------------------------------------------- shipped files
def test_shipped_files_load_and_validate():
    spec = load_moe_spec()
    total = 0
    for split in ("train", "validation", "test"):
        t = load_wdmoe_traces(split)
        assert t.meta["split"] == split and t.n_layers == 30 and t.n_experts == 8
        assert t.meta["moe_fingerprint"] == spec.fingerprint
        assert t.meta["model_fingerprint"] == spec.model_fingerprint
        assert t.meta["hidden_size"] == 576 and t.meta["expert_intermediate"] == 192
        assert t.gram.shape == (t.n_rows, 8, 8) and t.token_ids.shape == (t.n_rows // 30,)
        assert (t.prompt_offsets % 30 == 0).all() and t.prompt_offsets[-1] == t.n_rows
        total += default_wdmoe_path(split).stat().st_size
    assert total < 12.5e6
    ids = {s: set(load_wdmoe_traces(s).meta["prompt_ids"]) for s in ("train", "validation", "test")}
    assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["validation"])
