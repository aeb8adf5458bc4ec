"""The distilled embedded SLM: shipped artifact, build recipe, FLOP counter, error handling.

Tests that load the embedded LLM (the ``llm`` fixture) or build an SLM are marked ``slow``; the
error checks that fail before touching weights run on a tiny random-init model.
"""

from __future__ import annotations

import json
import shutil
import types

import pytest
import torch

from hlm_gym.lm.distill import (BuildConfig, build, default_layers, distill_loss, export_artifact, frequent_vocab,
                                mlp_importance, top_neurons)
from hlm_gym.lm.flops import FlopsError, max_context_within_ratio, model_token_flops, token_flops
from hlm_gym.lm.model_types import LoadedModel, ModelLoadError
from hlm_gym.lm.models import load_model
from hlm_gym.lm.student import DistillError, TrimmedLMHead, build_student
from hlm_gym.lm.slm import artifact_dir, check_acceptance, read_artifact_config, slm_from_delta
from tests.tiny_models import TinyTokenizer, tiny_model


@pytest.fixture(scope="module")
def llm():
    torch.set_num_threads(2)
    return load_model("embedded")


@pytest.fixture(scope="module")
def tiny_llm() -> LoadedModel:
    """A 4-layer random-init Llama posing as a loaded LLM (for errors raised before weights matter)."""
    return LoadedModel(tiny_model(3, layers=4), TinyTokenizer(), "tiny", "tiny-llm", "tiny-llm-fingerprint")


# ----------------------------------------------------------------------------- FLOPs
def test_flops_match_hand_count_for_tiny_config():
    cfg = types.SimpleNamespace(hidden_size=8, num_attention_heads=2, num_key_value_heads=1,
                                head_dim=4, intermediate_size=16, vocab_size=10, num_hidden_layers=3)
    f = token_flops(cfg, context=5)
    # per layer MACs: q 8*8 + k 8*4 + v 8*4 + o 8*8 = 192; MLP 3*8*16 = 384;
    # scores + values: 2 * (2 heads * 4 dims * 5 positions) = 80; LM head 8*10 = 80
    assert f.attention_proj == 2 * 3 * 192
    assert f.mlp == 2 * 3 * 384
    assert f.attention_context == 2 * 3 * 80
    assert f.lm_head == 2 * 80
    assert f.total == 2 * (3 * (192 + 384 + 80) + 80)
    assert token_flops(cfg, context=5, n_layers=1).total == 2 * (192 + 384 + 80 + 80)
    with pytest.raises(FlopsError):
        token_flops(cfg, context=-1)
    with pytest.raises(FlopsError):
        token_flops(types.SimpleNamespace(hidden_size=8), context=1)
    # a trimmed head of 4 rows instead of 10
    assert token_flops(cfg, context=5, head_rows=4).lm_head == 2 * 8 * 4
    with pytest.raises(FlopsError, match="head_rows"):
        token_flops(cfg, head_rows=0)


@pytest.mark.slow
def test_shipped_slm_is_at_most_half_the_llm_flops(llm):
    """At every context the suite uses (prompt <= 128 + 128 new tokens): see docs/slm.md."""
    slm = slm_from_delta(llm)
    cfg = read_artifact_config()
    for ctx in (1, 128, 256):
        f = model_token_flops(slm.model, context=ctx)
        assert f.n_layers == len(cfg["layers"])
        assert f.lm_head == 2 * 576 * (cfg.get("vocab") or 49152)
        assert f.total <= 0.5 * model_token_flops(llm.model, context=ctx).total
    limit = max_context_within_ratio(slm.model, llm.model, 0.5)
    assert limit is None or limit >= 256
    if limit is not None:  # exact: holds at the limit, fails one position later
        assert model_token_flops(slm.model, limit).total <= 0.5 * model_token_flops(llm.model, limit).total
        assert model_token_flops(slm.model, limit + 1).total > 0.5 * model_token_flops(llm.model, limit + 1).total


# ----------------------------------------------------------------------------- trimmed head
def test_trimmed_head_matches_full_head_on_kept_tokens():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(50, 8, generator=g)
    ids = torch.tensor([1, 4, 7, 30, 49])
    head = TrimmedLMHead(w, ids)
    h = torch.randn(3, 2, 8, generator=g)
    full = h @ w.T
    out = head(h)
    assert out.shape == (3, 2, 50) and head.out_rows == 5
    assert torch.allclose(out[..., ids], full[..., ids], atol=1e-6)
    rest = torch.ones(50, dtype=torch.bool)
    rest[ids] = False
    assert (out[..., rest] == TrimmedLMHead.FILL).all()
    assert torch.allclose(head.kept_logits(h), full[..., ids], atol=1e-6)
    q = torch.softmax(out, -1)
    assert torch.isfinite(torch.log_softmax(out, -1)).all() and float(q[..., rest].sum()) < 1e-30


def test_trimmed_distill_loss_is_kl_to_renormalised_teacher():
    g = torch.Generator().manual_seed(1)
    t = torch.randn(4, 12, generator=g)
    kept = torch.tensor([0, 2, 3, 5, 8, 11])
    s = torch.randn(4, 6, generator=g)
    loss, kl, acc = distill_loss(t, s, kept=kept)
    p = torch.softmax(t, -1)[:, kept]
    pn = p / p.sum(-1, keepdim=True)
    q = torch.softmax(s, -1)
    assert float(kl) == pytest.approx(float((pn * (pn.log() - q.log())).sum(-1).mean()), rel=1e-5)
    assert float(acc) == pytest.approx(float(torch.minimum(p, q).sum(-1).mean()), rel=1e-5)
    # a student equal to the renormalised teacher has zero loss
    loss0, _, _ = distill_loss(t, t[:, kept], kept=kept)
    assert float(loss0) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.slow
def test_mlp_width_pruning_keeps_chosen_neurons(llm):
    x = torch.tensor([[1, 400, 2000, 9, 77, 5]])
    full = torch.arange(1536).repeat(2, 1)
    same = build_student(llm.model, [0, 29], None, mlp_keep=full)
    plain = build_student(llm.model, [0, 29], None)
    with torch.no_grad():
        assert torch.allclose(same(x).logits, plain(x).logits, atol=1e-5)
    imp = mlp_importance(llm.model, x)
    assert imp.shape == (30, 1536) and bool((imp >= 0).all())
    keep = top_neurons(imp[[0, 29]], 100)
    assert keep.shape == (2, 100) and bool((keep[:, 1:] > keep[:, :-1]).all())
    assert set(keep[0].tolist()) == set(torch.topk(imp[0], 100).indices.tolist())
    small = build_student(llm.model, [0, 29], None, mlp_keep=keep)
    assert small.config.intermediate_size == 100
    assert small.model.layers[1].mlp.down_proj.weight.shape == (576, 100)
    assert torch.equal(small.model.layers[1].mlp.gate_proj.weight, llm.model.model.layers[29].mlp.gate_proj.weight[keep[1]])
    with pytest.raises(DistillError, match="MLP width"):
        top_neurons(imp, 0)
    with pytest.raises(DistillError, match="shape"):
        build_student(llm.model, [0, 29], None, mlp_keep=keep[:1])


@pytest.mark.slow
def test_frequent_vocab_is_deterministic_and_keeps_specials(llm):
    from hlm_gym.lm.prompts import sharegpt_prompts

    prompts = sharegpt_prompts("train", limit=30)
    a = frequent_vocab(llm.tokenizer, prompts, 100)
    b = frequent_vocab(llm.tokenizer, prompts, 100)
    assert torch.equal(a, b)
    specials = set(llm.tokenizer.all_special_ids)
    assert specials <= set(a.tolist())
    assert 100 <= len(a) <= 100 + len(specials)
    assert torch.equal(a, torch.sort(a).values)
    with pytest.raises(DistillError, match="vocabulary size"):
        frequent_vocab(llm.tokenizer, prompts, 0)


# ----------------------------------------------------------------------------- artifact
@pytest.mark.slow
def test_shipped_slm_loads_and_reproduces_recorded_acceptance(llm):
    cfg = read_artifact_config()
    slm = slm_from_delta(llm)
    assert slm.model.config.num_hidden_layers == len(cfg["layers"])
    assert slm.model.model.embed_tokens is llm.model.model.embed_tokens  # embeddings shared, not copied
    if cfg.get("vocab"):  # a trimmed head: the kept rows of the LLM's head
        head = slm.model.lm_head
        assert head.out_rows == cfg["vocab"]
        assert torch.equal(head.weight, llm.model.lm_head.weight[head.ids])
    else:
        assert slm.model.lm_head.weight is llm.model.lm_head.weight
    assert slm.fingerprint and slm.name.startswith("SmolLM2-135M distilled")
    got = check_acceptance(llm.model, slm.model, llm.tokenizer)
    want = cfg["check"]
    assert got["positions"] == want["positions"]
    assert got["acceptance"] == pytest.approx(want["acceptance"], abs=2e-3)
    assert got["greedy_agreement"] == pytest.approx(want["greedy_agreement"], abs=0.02)
    # the teacher is untouched: its layers were copied, not adapted in place
    assert llm.model.config.num_hidden_layers == 30


@pytest.mark.slow
def test_load_pair_default_gives_shipped_slm():
    from hlm_gym.lm.models import load_pair

    pair = load_pair()
    assert pair.slm.config.num_hidden_layers == len(read_artifact_config()["layers"])
    assert pair.llm.config.num_hidden_layers == 30
    assert pair.slm_name.startswith("SmolLM2-135M distilled")


# ----------------------------------------------------------------------------- recipe
@pytest.mark.slow
def test_build_runs_end_to_end_and_resumes(llm, tmp_path):
    run = tmp_path / "run"
    cfg = BuildConfig(layers=[0, 29], rank=2, alpha=4.0, steps=2, batch_size=1, seq_len=32,
                      warmup=1, ckpt_every=1, eval_every=100, eval_sequences=1, seed=3, vocab=None, mlp_width=None)
    _, _, summary = build(cfg, run, llm=llm, progress=False, log=lambda s: None)
    assert summary["steps"] == 2
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 2
    with pytest.raises(DistillError, match="resume"):
        build(cfg, run, llm=llm, progress=False, log=lambda s: None)
    cfg3 = BuildConfig(**{**cfg.__dict__, "steps": 3})
    student, cfg_r, summary = build(cfg3, run, resume=True, llm=llm, progress=False, log=lambda s: None)
    assert summary["steps"] == 3 and summary["tokens_seen"] == 3 * 32
    lines = (run / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3]
    assert any(p.abs().sum() > 0 for n, p in student.named_parameters() if "lora_B" in n)
    # export, then load through the same path as the shipped artifact
    meta = export_artifact(student, cfg_r, llm, tmp_path / "art", summary)
    slm = slm_from_delta(llm, tmp_path / "art")
    assert slm.model.config.num_hidden_layers == 2
    assert 0.0 <= meta["check"]["acceptance"] <= 1.0
    assert (tmp_path / "art" / "slm.safetensors").stat().st_size < 200_000


@pytest.mark.slow
def test_build_with_trimmed_vocab_exports_and_reloads(llm, tmp_path):
    cfg = BuildConfig(layers=[0, 29], rank=2, alpha=4.0, steps=1, batch_size=1, seq_len=32,
                      warmup=1, ckpt_every=1, eval_every=100, eval_sequences=1, seed=3, vocab=300,
                      mlp_width=64, calib_sequences=1)
    student, cfg_r, summary = build(cfg, tmp_path / "run", llm=llm, progress=False, log=lambda s: None)
    assert isinstance(student.lm_head, TrimmedLMHead)
    assert student.config.intermediate_size == 64
    n_kept = student.lm_head.out_rows
    assert 300 <= n_kept <= 300 + len(llm.tokenizer.all_special_ids)
    meta = export_artifact(student, cfg_r, llm, tmp_path / "art", summary)
    assert meta["vocab"] == n_kept and meta["format"] == 2 and meta["mlp_width"] == 64
    slm = slm_from_delta(llm, tmp_path / "art")
    assert torch.equal(slm.model.lm_head.ids, student.lm_head.ids)
    assert slm.model.config.intermediate_size == 64
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        z = slm.model(x).logits
        # the float16 delta merged into the weights gives the trained student's logits
        z_student = student(x).logits
    kept_ids = student.lm_head.ids
    assert torch.allclose(z[..., kept_ids], z_student[..., kept_ids], atol=2e-2)
    assert z.shape[-1] == llm.model.config.vocab_size
    assert int((z[0, -1] > TrimmedLMHead.FILL).sum()) == n_kept
    # resuming keeps the kept set of the first start
    cfg2 = BuildConfig(**{**cfg.__dict__, "steps": 2})
    student2, _, _ = build(cfg2, tmp_path / "run", resume=True, llm=llm, progress=False, log=lambda s: None)
    assert torch.equal(student2.lm_head.ids, student.lm_head.ids)
    assert torch.equal(student2.hlm_mlp_keep, student.hlm_mlp_keep)
    # a config whose 'vocab' disagrees with the weights file is refused with a clear message
    bad = json.loads((tmp_path / "art" / "slm.json").read_text())
    bad["vocab"] = n_kept + 1
    (tmp_path / "art" / "slm.json").write_text(json.dumps(bad))
    with pytest.raises(ModelLoadError, match="vocab"):
        slm_from_delta(llm, tmp_path / "art")
    bad["vocab"], bad["mlp_width"] = n_kept, 65
    (tmp_path / "art" / "slm.json").write_text(json.dumps(bad))
    with pytest.raises(ModelLoadError, match="mlp_width"):
        slm_from_delta(llm, tmp_path / "art")


@pytest.mark.slow
def test_build_cli_tiny_budget(tmp_path):
    from hlm_gym.cli.main import main

    rc = main(["slm", "build", "--layers", "0,29", "--rank", "2", "--steps", "2", "--batch-size", "1",
               "--seq-len", "32", "--eval-sequences", "1", "--out", str(tmp_path / "r"),
               "--vocab", "full", "--mlp-width", "full",
               "--no-progress", "--device", "cpu"])
    assert rc == 0
    meta = json.loads((tmp_path / "r" / "artifact" / "slm.json").read_text())
    assert meta["layers"] == [0, 29] and meta["training"]["steps"] == 2
    assert meta["training"]["calibration"]["temperature"] > 0


# ----------------------------------------------------------------------------- errors
def test_bad_layers_and_rank_are_clear_errors(tiny_llm):
    with pytest.raises(DistillError, match="out of range"):
        build_student(tiny_llm.model, [0, 4], rank=4)
    with pytest.raises(DistillError, match="out of range"):
        build_student(tiny_llm.model, [-1], rank=4)
    with pytest.raises(DistillError, match="unique and increasing"):
        build_student(tiny_llm.model, [3, 1], rank=4)
    with pytest.raises(DistillError, match="rank"):
        build_student(tiny_llm.model, [0, 1], rank=0)
    with pytest.raises(DistillError, match="rank"):
        build(BuildConfig(rank=-2), "unused", llm=tiny_llm, progress=False)
    assert default_layers(10, 30, 4) == [0, 1, 2, 3, 4, 5, 26, 27, 28, 29]


@pytest.mark.slow
def test_cli_reports_bad_layers(tmp_path, capsys):
    from hlm_gym.cli.main import main

    rc = main(["slm", "build", "--layers", "0,31", "--steps", "1", "--out", str(tmp_path / "x"), "--no-progress"])
    assert rc == 2
    assert "out of range" in capsys.readouterr().err


def test_cli_reports_bad_vocab(tmp_path, capsys):
    from hlm_gym.cli.main import main

    assert main(["slm", "build", "--vocab", "lots", "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "--vocab: expected a positive integer or 'full'" in err and len(err.strip().splitlines()) == 1


def test_missing_artifact_file_is_a_clear_error(tiny_llm, tmp_path):
    art = tmp_path / "slm"
    shutil.copytree(artifact_dir(), art)
    (art / "slm.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        slm_from_delta(tiny_llm, art)
    with pytest.raises(ModelLoadError, match="missing"):
        read_artifact_config(tmp_path / "nowhere")


def test_artifact_for_another_llm_is_refused(tiny_llm, tmp_path):
    art = tmp_path / "slm"
    shutil.copytree(artifact_dir(), art)
    cfg = json.loads((art / "slm.json").read_text())
    cfg["base_sha256"] = "0" * 64
    (art / "slm.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="distilled from LLM"):
        slm_from_delta(tiny_llm, art)
    # the shipped artifact names the embedded LLM, not this one
    with pytest.raises(ModelLoadError, match="distilled from LLM"):
        slm_from_delta(tiny_llm)
