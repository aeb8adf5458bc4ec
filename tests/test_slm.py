"""The distilled embedded SLM: shipped artifact, build recipe, FLOP counter, error handling."""

from __future__ import annotations

import json
import shutil
import types

import pytest
import torch

from hlm_gym.distill import BuildConfig, DistillError, build, build_student, default_layers, export_artifact
from hlm_gym.flops import FlopsError, token_flops
from hlm_gym.models import ModelLoadError, load_model
from hlm_gym.slm import artifact_dir, check_acceptance, read_artifact_config, slm_from_delta


@pytest.fixture(scope="module")
def llm():
    torch.set_num_threads(2)
    return load_model("embedded")


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


def test_shipped_slm_is_at_most_half_the_llm_flops(llm):
    cfg = read_artifact_config()
    for ctx in (1, 256, 2048):
        s = token_flops(llm.model.config, context=ctx, n_layers=len(cfg["layers"])).total
        assert s <= 0.5 * token_flops(llm.model.config, context=ctx).total


# ----------------------------------------------------------------------------- artifact
def test_shipped_slm_loads_and_reproduces_recorded_acceptance(llm):
    cfg = read_artifact_config()
    slm = slm_from_delta(llm)
    assert slm.model.config.num_hidden_layers == len(cfg["layers"])
    assert slm.model.lm_head.weight is llm.model.lm_head.weight  # LM head shared, not copied
    assert slm.fingerprint and slm.name.startswith("SmolLM2-135M distilled")
    got = check_acceptance(llm.model, slm.model, llm.tokenizer)
    want = cfg["check"]
    assert got["positions"] == want["positions"]
    assert got["acceptance"] == pytest.approx(want["acceptance"], abs=2e-3)
    assert got["greedy_agreement"] == pytest.approx(want["greedy_agreement"], abs=0.02)
    # the teacher is untouched: its layers were copied, not adapted in place
    assert llm.model.config.num_hidden_layers == 30


def test_load_pair_default_gives_shipped_slm():
    from hlm_gym.models import load_pair

    pair = load_pair()
    assert pair.slm.config.num_hidden_layers == len(read_artifact_config()["layers"])
    assert pair.llm.config.num_hidden_layers == 30
    assert pair.slm_name.startswith("SmolLM2-135M distilled")


# ----------------------------------------------------------------------------- recipe
def test_build_runs_end_to_end_and_resumes(llm, tmp_path):
    run = tmp_path / "run"
    cfg = BuildConfig(layers=[0, 29], rank=2, alpha=4.0, steps=2, batch_size=1, seq_len=32,
                      warmup=1, ckpt_every=1, eval_every=100, eval_sequences=1, seed=3)
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


def test_build_cli_tiny_budget(tmp_path):
    from hlm_gym.slm_cli import main

    rc = main(["slm", "build", "--layers", "0,29", "--rank", "2", "--steps", "2", "--batch-size", "1",
               "--seq-len", "32", "--eval-sequences", "1", "--out", str(tmp_path / "r"),
               "--no-progress", "--device", "cpu"])
    assert rc == 0
    meta = json.loads((tmp_path / "r" / "artifact" / "slm.json").read_text())
    assert meta["layers"] == [0, 29] and meta["training"]["steps"] == 2
    assert meta["training"]["calibration"]["temperature"] > 0


# ----------------------------------------------------------------------------- errors
def test_bad_layers_and_rank_are_clear_errors(llm):
    with pytest.raises(DistillError, match="out of range"):
        build_student(llm.model, [0, 30], rank=4)
    with pytest.raises(DistillError, match="out of range"):
        build_student(llm.model, [-1], rank=4)
    with pytest.raises(DistillError, match="unique and increasing"):
        build_student(llm.model, [3, 1], rank=4)
    with pytest.raises(DistillError, match="rank"):
        build_student(llm.model, [0, 1], rank=0)
    with pytest.raises(DistillError, match="rank"):
        build(BuildConfig(rank=-2), "unused", llm=llm, progress=False)
    assert default_layers(10, 30, 4) == [0, 1, 2, 3, 4, 5, 26, 27, 28, 29]


def test_cli_reports_bad_input(tmp_path, capsys):
    from hlm_gym.slm_cli import main

    rc = main(["slm", "build", "--layers", "0,31", "--steps", "1", "--out", str(tmp_path / "x"), "--no-progress"])
    assert rc == 2
    assert "out of range" in capsys.readouterr().err


def test_missing_artifact_file_is_a_clear_error(llm, tmp_path):
    art = tmp_path / "slm"
    shutil.copytree(artifact_dir(), art)
    (art / "slm.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        slm_from_delta(llm, art)
    with pytest.raises(ModelLoadError, match="missing"):
        read_artifact_config(tmp_path / "nowhere")


def test_artifact_for_another_llm_is_refused(llm, tmp_path):
    art = tmp_path / "slm"
    shutil.copytree(artifact_dir(), art)
    cfg = json.loads((art / "slm.json").read_text())
    cfg["base_sha256"] = "0" * 64
    (art / "slm.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="distilled from LLM"):
        slm_from_delta(llm, art)
