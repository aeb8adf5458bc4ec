"""The MoE made from a dense model: exactness with all experts, selections, records, spec files, recipe.

Mechanics run on tiny random-init Llama models; tests marked ``slow`` load the embedded model.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from hlm_gym.lm.model_types import LoadedModel
from hlm_gym.lm.moe import (MoEError, MoEMLP, MoEModel, expert_outputs, load_moe_spec, make_spec, moefy,
                            save_moe_spec, spec_dir)
from hlm_gym.lm.moefication import (MoEBuildConfig, _pad_batches, balanced_clusters, build_moe,
                                    permutation_from_labels, relative_errors)
from tests.tiny_models import TinyTokenizer, tiny_model

L, I, D, E, H = 3, 64, 32, 8, 4


def random_spec(seed: int = 0, n_layers: int = L, n_experts: int = E, fingerprint: str = "tiny-fp"):
    g = torch.Generator().manual_seed(seed)
    perm = torch.stack([torch.randperm(I, generator=g) for _ in range(n_layers)])
    return make_spec(n_experts, perm, torch.randn(n_layers, H, D, generator=g), torch.randn(n_layers, H, generator=g),
                     torch.randn(n_layers, n_experts, H, generator=g), torch.randn(n_layers, n_experts, generator=g),
                     {"model_fingerprint": fingerprint, "seed": seed})


@pytest.fixture
def tiny():
    return tiny_model(3, layers=L)


@pytest.fixture
def ids():
    g = torch.Generator().manual_seed(7)
    return torch.randint(3, 64, (2, 11), generator=g)


def dense_logits(model, ids, attn=None):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=attn).logits


# ----------------------------------------------------------------------------- exactness
def test_all_experts_reproduce_the_dense_logits(tiny, ids):
    ref = dense_logits(tiny, ids)
    moe = MoEModel(tiny, random_spec())
    full = torch.ones(*ids.shape, L, E, dtype=torch.bool)
    assert torch.equal(moe.logits(ids), ref)
    assert torch.equal(moe.logits(ids, selection=full), ref)
    assert torch.equal(moe.logits(ids, top_k=E), ref)
    assert torch.equal(moe.logits(ids, top_k=E, rank_by="norm"), ref)
    assert torch.equal(dense_logits(tiny, ids), ref)  # outside MoE calls the model stays dense
    assert not torch.allclose(moe.logits(ids, top_k=2), ref)


def test_padding_and_attention_mask_pass_through(tiny, ids):
    attn = torch.ones_like(ids)
    attn[1, 8:] = 0
    moe = moefy(tiny, random_spec())
    torch.testing.assert_close(moe.logits(ids, attn), dense_logits(tiny, ids, attn), rtol=0, atol=0)


def test_expert_outputs_sum_to_the_dense_mlp(tiny):
    spec = random_spec()
    mlp = tiny.model.layers[1].mlp
    x = torch.randn(5, 7, D)
    with torch.no_grad():
        y = expert_outputs(mlp, spec.permutation[1], E, x)
        assert y.shape == (5, 7, E, D)
        torch.testing.assert_close(y.sum(-2), mlp(x), rtol=1e-5, atol=1e-6)
        # expert e is exactly the MLP restricted to its neurons
        n = spec.expert_neurons(1, 3)
        a = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
        torch.testing.assert_close(y[..., 3, :], a[..., n] @ mlp.down_proj.weight[:, n].T)


def test_constant_selection_equals_a_pruned_dense_model(tiny, ids):
    """Dropping experts everywhere = zeroing their neurons' down-projection columns."""
    spec = random_spec(1)
    g = torch.Generator().manual_seed(3)
    keep = torch.rand(L, E, generator=g) < 0.5
    pruned = copy.deepcopy(tiny)
    with torch.no_grad():
        for layer in range(L):
            for e in range(E):
                if not keep[layer, e]:
                    pruned.model.layers[layer].mlp.down_proj.weight[:, spec.expert_neurons(layer, e)] = 0
    sel = keep.expand(*ids.shape, L, E).clone()
    moe = MoEModel(tiny, spec)
    torch.testing.assert_close(moe.logits(ids, selection=sel), dense_logits(pruned, ids), rtol=1e-5, atol=1e-5)


def test_top_k_selects_k_experts_by_router_or_true_norm(tiny, ids):
    moe = MoEModel(tiny, random_spec(2))
    out = moe.forward(ids, top_k=3)
    assert out.selection.shape == (*ids.shape, L, E) and out.scores.shape == (*ids.shape, L, E)
    assert bool((out.selection.sum(-1) == 3).all())
    want = torch.zeros_like(out.selection).scatter_(-1, out.scores.topk(3, dim=-1).indices, True)
    assert torch.equal(out.selection, want)
    torch.testing.assert_close(out.scores.sum(-1), torch.ones(*ids.shape, L))
    assert bool((out.scores >= 0).all())
    # the oracle ranks by the true output norms at each layer's actual (MoE) input
    oracle = moe.forward(ids, top_k=1, rank_by="norm")
    assert bool((oracle.selection.sum(-1) == 1).all())
    assert not torch.equal(oracle.selection, moe.forward(ids, top_k=1).selection)


def test_selector_is_called_per_layer_with_scores(tiny, ids):
    moe = MoEModel(tiny, random_spec())
    seen = []

    def pick_first_two(layer, scores):
        seen.append((layer, tuple(scores.shape)))
        mask = torch.zeros_like(scores, dtype=torch.bool)
        mask[..., :2] = True
        return mask

    out = moe.forward(ids, selector=pick_first_two)
    assert seen == [(i, (*ids.shape, E)) for i in range(L)]
    sel = torch.zeros(*ids.shape, L, E, dtype=torch.bool)
    sel[..., :2] = True
    assert torch.equal(out.selection, sel)
    assert torch.equal(out.logits, moe.logits(ids, selection=sel))
    with pytest.raises(MoEError, match="selector must return a bool tensor"):
        moe.logits(ids, selector=lambda layer, s: s > 0.1 if layer < 1 else s)


def test_incremental_decoding_with_a_cache_matches_the_full_pass(tiny, ids):
    from transformers import DynamicCache

    moe = MoEModel(tiny, random_spec())
    g = torch.Generator().manual_seed(5)
    sel = torch.rand(*ids.shape, L, E, generator=g) < 0.6
    full = moe.logits(ids, selection=sel)
    first = moe.forward(ids[:, :6], selection=sel[:, :6], cache=DynamicCache(), use_cache=True)
    rest = moe.forward(ids[:, 6:], selection=sel[:, 6:], cache=first.model_output.cache, use_cache=True)
    torch.testing.assert_close(torch.cat([first.logits, rest.logits], 1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"selection": torch.ones(2, 11, L, E)}, "bool tensor"),
    ({"selection": torch.ones(2, 11, L, E + 1, dtype=torch.bool)}, "shape"),
    ({"top_k": 0}, "top_k must be an integer in 1..8"),
    ({"top_k": E + 1}, "top_k"),
    ({"top_k": 2, "rank_by": "gate"}, "rank_by"),
    ({"top_k": 2, "selection": torch.ones(2, 11, L, E, dtype=torch.bool)}, "at most one"),
])
def test_bad_selection_is_one_line_error(tiny, ids, kwargs, match):
    moe = MoEModel(tiny, random_spec())
    with pytest.raises(MoEError, match=match):
        moe.logits(ids, **kwargs)


# ----------------------------------------------------------------------------- records
def test_expert_records_equal_a_direct_computation(tiny, ids):
    spec = random_spec(4)
    attn = torch.ones_like(ids)
    attn[0, 9:] = 0
    xs, resid = {}, {}
    hooks = []
    for i, layer in enumerate(tiny.model.layers):
        hooks.append(layer.mlp.register_forward_pre_hook(lambda m, a, i=i: xs.__setitem__(i, a[0].detach())))
        hooks.append(layer.post_attention_layernorm.register_forward_pre_hook(
            lambda m, a, i=i: resid.__setitem__(i, a[0].detach())))
    ref = dense_logits(tiny, ids, attn)
    for h in hooks:
        h.remove()
    moe = MoEModel(tiny, spec)
    rec = moe.expert_records(ids, attn)
    assert rec.scores.shape == (*ids.shape, L, E) and rec.gram.shape == (*ids.shape, L, E, E)
    assert rec.residual_norm2.shape == (*ids.shape, L)
    assert rec.scores.dtype == rec.gram.dtype == rec.residual_norm2.dtype == torch.float32
    torch.testing.assert_close(rec.logits, ref, rtol=0, atol=0)
    for i in range(L):
        with torch.no_grad():
            y = expert_outputs(tiny.model.layers[i].mlp.dense, spec.permutation[i], E, xs[i])
        torch.testing.assert_close(rec.gram[:, :, i], y @ y.transpose(-1, -2), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(rec.scores[:, :, i], spec.router_scores(i, xs[i]))
        torch.testing.assert_close(rec.residual_norm2[:, :, i], resid[i].pow(2).sum(-1))
        # the error of dropping a subset is u^T G u
        u = torch.tensor([1.0, 0, 0, 1, 1, 0, 0, 0])
        dropped = (y * u[:, None]).sum(-2)
        torch.testing.assert_close(torch.einsum("bte,btef,btf->bt", u.expand(*ids.shape, E), rec.gram[:, :, i],
                                                u.expand(*ids.shape, E)), dropped.pow(2).sum(-1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rec.gram, rec.gram.transpose(-1, -2))


def test_restore_puts_the_dense_modules_back(tiny):
    original = [layer.mlp for layer in tiny.model.layers]
    moe = MoEModel(tiny, random_spec())
    assert all(isinstance(layer.mlp, MoEMLP) for layer in tiny.model.layers)
    MoEModel(tiny, random_spec(5))  # wrapping again wraps the dense MLPs, not the wrappers
    assert all(layer.mlp.dense is mlp for layer, mlp in zip(tiny.model.layers, original))
    moe.restore()
    assert [layer.mlp for layer in tiny.model.layers] == original


def test_spec_not_made_for_the_model_is_refused(tiny):
    with pytest.raises(MoEError, match="has 2 layers, the model 3"):
        MoEModel(tiny, random_spec(n_layers=2))
    loaded = LoadedModel(tiny, TinyTokenizer(), "tiny", "tiny", "another-fp")
    with pytest.raises(MoEError, match="was built from model"):
        MoEModel(loaded, random_spec())
    assert MoEModel(loaded, random_spec(), check_fingerprint=False).tokenizer is not None
    other = tiny_model(4, layers=L)
    other.model.layers[0].mlp.down_proj = torch.nn.Linear(I // 2, D, bias=False)
    with pytest.raises(MoEError, match="MLPs of 64 neurons"):
        MoEModel(other, random_spec())


# ----------------------------------------------------------------------------- spec files
def test_spec_round_trip(tmp_path):
    spec = random_spec(6)
    save_moe_spec(spec, tmp_path / "spec")
    back = load_moe_spec(tmp_path / "spec")
    assert back.fingerprint == spec.fingerprint and back.n_experts == E and back.n_layers == L
    for name in ("permutation", "router_w1", "router_b1", "router_w2", "router_b2"):
        assert torch.equal(getattr(back, name), getattr(spec, name))
    assert back.meta["seed"] == 6 and back.meta["weights_sha256"] == spec.fingerprint
    assert back.model_fingerprint == "tiny-fp"
    assert load_moe_spec(tmp_path / "spec" / "moe.json").fingerprint == spec.fingerprint


def _corrupt(folder, how):
    meta = json.loads((folder / "moe.json").read_text())
    if how == "json":
        (folder / "moe.json").write_text("{not json")
    elif how == "format":
        meta["format"] = 99
        (folder / "moe.json").write_text(json.dumps(meta))
    elif how == "experts":
        meta["n_experts"] = 0
        (folder / "moe.json").write_text(json.dumps(meta))
    elif how == "weights":
        data = bytearray((folder / "moe.safetensors").read_bytes())
        data[-3] ^= 0xFF
        (folder / "moe.safetensors").write_bytes(bytes(data))
    elif how == "missing":
        (folder / "moe.safetensors").unlink()
    elif how == "layers":
        meta["n_layers"] = 7
        (folder / "moe.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("how, match", [
    ("json", "not valid JSON"), ("format", "has format 99"), ("experts", "'n_experts' must be a positive integer"),
    ("weights", "is not the file moe.json was written with"), ("missing", "moe.safetensors is missing"),
    ("layers", "'n_layers' is 7 but the weights say 3"),
])
def test_broken_spec_is_one_line_error(tmp_path, how, match):
    folder = tmp_path / "spec"
    save_moe_spec(random_spec(), folder)
    _corrupt(folder, how)
    with pytest.raises(MoEError, match=match) as info:
        load_moe_spec(folder)
    assert "\n" not in str(info.value)


def test_missing_folder_and_inconsistent_tensors(tmp_path):
    with pytest.raises(MoEError, match="not found"):
        load_moe_spec(tmp_path / "nowhere")
    spec = random_spec()
    with pytest.raises(MoEError, match="each of 0..63 exactly once"):
        make_spec(E, torch.zeros(L, I, dtype=torch.long), spec.router_w1, spec.router_b1, spec.router_w2,
                  spec.router_b2)
    with pytest.raises(MoEError, match="positive divisor"):
        make_spec(7, spec.permutation, spec.router_w1, spec.router_b1, spec.router_w2, spec.router_b2)
    with pytest.raises(MoEError, match="router.w2 has shape"):
        make_spec(E, spec.permutation, spec.router_w1, spec.router_b1, spec.router_w2[:, :4], spec.router_b2)


# ----------------------------------------------------------------------------- recipe
def test_balanced_clusters_recover_planted_groups():
    rng = np.random.default_rng(0)
    n, e, tokens = 48, 4, 400
    group = rng.permutation(np.repeat(np.arange(e), n // e))
    active = rng.random((tokens, e)) < 0.3  # each group fires together
    acts = np.abs(active[:, group] * rng.normal(1.0, 0.1, (tokens, n))) + 0.01 * rng.random((tokens, n))
    labels = balanced_clusters(acts.T @ acts, e, embed_dim=8, seed=0)
    assert np.bincount(labels).tolist() == [n // e] * e
    for g in range(e):  # every planted group lands in one cluster
        assert len(set(labels[group == g].tolist())) == 1
    perm = permutation_from_labels(labels, e)
    assert sorted(perm.tolist()) == list(range(n))


def test_relative_errors():
    y = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]]])  # 3 experts, output (1, 2)
    err = relative_errors(y, y.norm(dim=-1), (1, 2, 3))
    assert err[1] == pytest.approx(1 / 5) and err[2] == pytest.approx(0.0) and err[3] == 0.0


def tiny_batches():
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 64, (int(torch.randint(5, 30, (1,), generator=g)),), generator=g).tolist()
            for _ in range(24)]
    return _pad_batches(seqs, 8)


def test_recipe_on_a_tiny_model_is_balanced_and_deterministic(tmp_path):
    model = tiny_model(3, layers=2)
    cfg = MoEBuildConfig(n_experts=4, embed_dim=8, router_hidden=8, router_epochs=3, router_batch=64, seed=1)
    spec = build_moe(model, tiny_batches(), cfg, "tiny-fp")
    again = build_moe(model, tiny_batches(), cfg, "tiny-fp")
    assert spec.fingerprint == again.fingerprint
    assert spec.n_experts == 4 and spec.n_layers == 2 and spec.expert_size == 16
    assert spec.meta["model_fingerprint"] == "tiny-fp" and spec.meta["seed"] == 1
    n_tokens = sum(int(m.sum()) for _, m in tiny_batches())
    assert spec.meta["tokens"] == n_tokens and spec.meta["train_tokens"] < n_tokens
    diag = spec.meta["diagnostics"]["relative_mlp_error"]
    assert set(diag) == {"router_top_k", "oracle_top_k", "random_partition_oracle_top_k"}
    assert all(0.0 <= v <= 1.5 for d in diag.values() for v in d.values())
    # the folded router is the trained one: scores are a distribution over experts
    x = torch.randn(5, 32)
    torch.testing.assert_close(spec.router_scores(0, x).sum(-1), torch.ones(5))
    save_moe_spec(spec, tmp_path)
    ids = tiny_batches()[0][0]
    torch.testing.assert_close(MoEModel(model, load_moe_spec(tmp_path)).logits(ids, top_k=4), dense_logits(model, ids))


@pytest.mark.parametrize("field, value, match", [
    ("n_experts", 1, "at least 2 experts"), ("n_experts", 5, "do not divide"), ("tokens", 0, "tokens"),
    ("holdout", 0.7, "holdout"), ("router_lr", -1.0, "router_lr"),
])
def test_bad_recipe_settings(field, value, match):
    with pytest.raises(MoEError, match=match):
        MoEBuildConfig(**{field: value}).check(64)


# ----------------------------------------------------------------------------- the shipped spec
def test_shipped_spec_loads_and_fits_the_embedded_model():
    spec = load_moe_spec()
    assert (spec.n_layers, spec.intermediate_size, spec.hidden_size, spec.n_experts) == (30, 1536, 576, 8)
    assert spec.expert_size == 192
    assert spec.meta["tokens"] >= 10000 and spec.meta["seed"] == 0
    assert spec_dir().joinpath("moe.safetensors").stat().st_size < 3.5e6
    from hlm_gym.lm.models import embedded_gguf_path, file_sha256

    assert spec.model_fingerprint == file_sha256(embedded_gguf_path())


@pytest.fixture(scope="module")
def embedded():
    from hlm_gym.lm.models import load_model

    torch.set_num_threads(2)
    return load_model("embedded")


@pytest.mark.slow
def test_embedded_moe_with_all_experts_is_the_dense_model(embedded):
    from hlm_gym.lm.prompts import chat_input_ids, sharegpt_prompts

    prompt = sharegpt_prompts("test", limit=1)[0]
    ids = chat_input_ids(embedded.tokenizer, prompt.text)[None, :48]
    ref = dense_logits(embedded.model, ids)
    moe = MoEModel(embedded, load_moe_spec())
    try:
        torch.testing.assert_close(moe.logits(ids, top_k=8), ref, rtol=0, atol=0)
        sel = torch.ones(*ids.shape, 30, 8, dtype=torch.bool)
        torch.testing.assert_close(moe.logits(ids, selection=sel), ref, rtol=0, atol=0)
        rec = moe.expert_records(ids)
        torch.testing.assert_close(rec.logits, ref, rtol=0, atol=0)
        assert rec.gram.shape == (1, ids.shape[1], 30, 8, 8)
        torch.testing.assert_close(rec.scores.sum(-1), torch.ones(1, ids.shape[1], 30))
        # fewer experts cost quality: the top-2 logits differ from the dense ones
        assert float((moe.logits(ids, top_k=2) - ref).abs().max()) > 1e-2
    finally:
        moe.restore()
