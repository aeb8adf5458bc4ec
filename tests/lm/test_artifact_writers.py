"""The lm layer's file writers: SLM export, distillation run folders, the model cache and the prompt cache.

Each writes through unique temporary names and leaves the old files intact on a failure; bad
output folders are one-line errors found before any model is loaded. Everything here runs on
tiny random-init models or stand-ins (no embedded LLM).
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch

import hlm_gym.lm.distill as distill
from hlm_gym.lm.distill import BuildConfig, DistillError, check_output_folder, check_run_folder, export_artifact
from hlm_gym.lm.model_types import LoadedModel, ModelLoadError
from hlm_gym.lm.slm import ARTIFACT_JSON, ARTIFACT_WEIGHTS, slm_from_delta
from hlm_gym.lm.student import build_student
from tests.tiny_models import TinyTokenizer, tiny_model

torch.set_num_threads(1)
CHECK = {"acceptance": 0.5, "positions": 10}


@pytest.fixture(scope="module")
def tiny_llm() -> LoadedModel:
    return LoadedModel(tiny_model(3, layers=4), TinyTokenizer(), "tiny", "tiny-llm", "tiny-llm-fingerprint")


@pytest.fixture
def fake_check(monkeypatch):
    """The acceptance check needs a chat tokenizer; the tiny pair has none, so it is stood in for."""
    monkeypatch.setattr(distill, "check_acceptance", lambda *args: dict(CHECK))


def _student(llm, layers=(0, 1), seed=0):
    torch.manual_seed(seed)
    student = build_student(llm.model, list(layers), rank=4, alpha=8.0, seed=seed)
    with torch.no_grad():  # adapters start at zero: make the two exports below differ
        for p in student.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    return student


def _cfg(layers=(0, 1)):
    return BuildConfig(layers=list(layers), rank=4, alpha=8.0, vocab=None, mlp_width=None)


def _snapshot(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ----------------------------------------------------------------------------- SLM export
def test_export_writes_a_verified_artifact_and_nothing_else(tiny_llm, tmp_path, fake_check):
    out = tmp_path / "art"
    meta = export_artifact(_student(tiny_llm), _cfg(), tiny_llm, out, {"steps": 1})
    assert sorted(p.name for p in out.iterdir()) == [ARTIFACT_JSON, ARTIFACT_WEIGHTS]
    weights = (out / ARTIFACT_WEIGHTS).read_bytes()
    saved = json.loads((out / ARTIFACT_JSON).read_text())
    assert saved["weights_sha256"] == hashlib.sha256(weights).hexdigest() == meta["weights_sha256"]
    assert saved["check"] == CHECK and saved["layers"] == [0, 1]
    assert all((out / n).stat().st_mode & 0o777 == 0o644 for n in (ARTIFACT_JSON, ARTIFACT_WEIGHTS))
    assert slm_from_delta(tiny_llm, out).fingerprint == saved["weights_sha256"]


def test_failed_export_leaves_the_old_artifact_intact(tiny_llm, tmp_path, fake_check, monkeypatch):
    out = tmp_path / "art"
    export_artifact(_student(tiny_llm), _cfg(), tiny_llm, out)
    before = _snapshot(out)

    def broken_check(*args):
        raise RuntimeError("check failed")

    monkeypatch.setattr(distill, "check_acceptance", broken_check)
    with pytest.raises(RuntimeError, match="check failed"):
        export_artifact(_student(tiny_llm, (0, 2), seed=1), _cfg((0, 2)), tiny_llm, out)
    assert _snapshot(out) == before  # no half-written pair, no staging folder
    monkeypatch.setattr(distill, "check_acceptance", lambda *args: dict(CHECK))
    with pytest.raises(KeyboardInterrupt):
        monkeypatch.setattr(distill, "slm_from_delta", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
        export_artifact(_student(tiny_llm, (0, 2), seed=1), _cfg((0, 2)), tiny_llm, out)
    assert _snapshot(out) == before


def test_two_exports_into_one_folder_use_separate_staging(tiny_llm, tmp_path, fake_check, monkeypatch):
    """An export started while another is staging does not touch the other's files."""
    out = tmp_path / "art"
    real_write = distill._write_artifact
    inner = []

    def nested(student, cfg, llm, folder, summary):
        meta = real_write(student, cfg, llm, folder, summary)
        if not inner:  # a second export runs to completion while the first one is staged
            inner.append(str(folder))
            monkeypatch.setattr(distill, "_write_artifact", real_write)
            export_artifact(_student(tiny_llm, (0, 2), seed=1), _cfg((0, 2)), tiny_llm, out)
        return meta

    monkeypatch.setattr(distill, "_write_artifact", nested)
    meta = export_artifact(_student(tiny_llm), _cfg(), tiny_llm, out)
    saved = json.loads((out / ARTIFACT_JSON).read_text())
    assert saved["layers"] == meta["layers"] == [0, 1]  # the last one to finish wins, whole
    assert slm_from_delta(tiny_llm, out).fingerprint == saved["weights_sha256"]
    assert sorted(p.name for p in out.iterdir()) == [ARTIFACT_JSON, ARTIFACT_WEIGHTS]


def test_mixed_artifact_files_are_a_clear_error(tiny_llm, tmp_path, fake_check):
    a, b = tmp_path / "a", tmp_path / "b"
    export_artifact(_student(tiny_llm), _cfg(), tiny_llm, a)
    export_artifact(_student(tiny_llm, seed=5), _cfg(), tiny_llm, b)
    (a / ARTIFACT_WEIGHTS).write_bytes((b / ARTIFACT_WEIGHTS).read_bytes())  # as if an export died in between
    with pytest.raises(ModelLoadError, match=r"slm\.safetensors .* is not the file slm\.json was exported with"):
        slm_from_delta(tiny_llm, a)


def test_export_into_a_file_is_refused(tiny_llm, tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(DistillError, match="export folder .*f is a file, not a folder"):
        export_artifact(_student(tiny_llm), _cfg(), tiny_llm, tmp_path / "f")
    with pytest.raises(DistillError, match="f is a file, not a folder"):
        export_artifact(_student(tiny_llm), _cfg(), tiny_llm, tmp_path / "f" / "art")


# ----------------------------------------------------------------------------- run folders
def test_run_folder_checks(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(DistillError, match=r"--out .*f is a file, not a folder"):
        check_run_folder(tmp_path / "f", resume=False)
    with pytest.raises(DistillError, match="--resume: no checkpoint at"):
        check_run_folder(tmp_path / "new", resume=True)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"x")
    with pytest.raises(DistillError, match="already holds a run; pass --resume"):
        check_run_folder(tmp_path / "run", resume=False)
    assert check_run_folder(tmp_path / "run", resume=True) == tmp_path / "run"
    assert check_output_folder(tmp_path / "a" / "b", "--out") == tmp_path / "a" / "b"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_output_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(DistillError, match="not writable"):
            check_output_folder(ro / "run", "--out")
    finally:
        ro.chmod(0o700)


def test_damaged_checkpoint_is_a_clear_error(tmp_path, tiny_llm):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"\x80\x04 not a checkpoint")
    with pytest.raises(DistillError, match=r"cannot read checkpoint .*checkpoint\.pt .*damaged"):
        distill.load_checkpoint_student(run, tiny_llm)
    torch.save({"something": 1}, run / "checkpoint.pt")
    with pytest.raises(DistillError, match="not a checkpoint of 'hlm-gym slm build'"):
        distill.load_checkpoint_student(run, tiny_llm)


def test_resume_trims_the_log_and_drops_a_torn_line(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "kl": 0.')  # killed mid-write
    distill._trim_log(log, step=2)
    assert log.read_text() == '{"step": 1}\n{"step": 2}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["log.jsonl"]


@pytest.mark.parametrize("argv,message", [
    (["--out", "{f}"], "--out {f}: {f} is a file, not a folder"),
    (["--out", "{d}/run", "--export", "{f}"], "--export {f}: {f} is a file, not a folder"),
    (["--out", "{d}/run", "--export", "{f}/art"], "{f} is a file, not a folder"),
    (["--out", "{d}/run", "--resume"], "--resume: no checkpoint at"),
    (["--out", "{d}/run", "--export-only"], "--resume: no checkpoint at"),
])
def test_slm_build_refuses_bad_folders_before_loading_the_llm(tmp_path, monkeypatch, capsys, argv, message):
    import hlm_gym.lm.models as models
    from hlm_gym.cli.main import main

    def no_load(*args, **kwargs):
        raise AssertionError("the LLM was loaded before the folders were checked")

    monkeypatch.setattr(models, "load_model", no_load)
    (tmp_path / "f").write_text("x")
    fmt = {"f": str(tmp_path / "f"), "d": str(tmp_path)}
    assert main(["slm", "build", "--no-progress", *[a.format(**fmt) for a in argv]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hlm-gym: error: ") and message.format(**fmt) in err and err.count("\n") == 1


def test_slm_report_refuses_a_bad_out_before_loading_the_llm(tmp_path, monkeypatch, capsys):
    import hlm_gym.lm.models as models
    from hlm_gym.cli.main import main

    monkeypatch.setattr(models, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    (tmp_path / "f").write_text("x")
    assert main(["slm", "report", "--out", str(tmp_path / "f")]) == 2
    assert f"report folder {tmp_path / 'f'}: {tmp_path / 'f'} is a file, not a folder" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the model cache
def _fill(files):
    def fill(folder):
        for name, text in files.items():
            (folder / name).write_text(text)
    return fill


def _complete(folder):
    return (folder / "model.safetensors").is_file()


def test_model_cache_folder_appears_whole(tmp_path):
    from hlm_gym.lm.models import _atomic_dir

    final = tmp_path / "cache" / "gguf-x"
    _atomic_dir(final, _fill({"config.json": "{}", "model.safetensors": "w"}), complete=_complete)
    assert sorted(p.name for p in final.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in final.parent.iterdir()] == ["gguf-x"]


def test_failed_conversion_leaves_nothing(tmp_path):
    from hlm_gym.lm.models import _atomic_dir

    def fill(folder):
        (folder / "config.json").write_text("{}")
        raise RuntimeError("conversion died")

    with pytest.raises(RuntimeError, match="conversion died"):
        _atomic_dir(tmp_path / "gguf-x", fill, complete=_complete)
    with pytest.raises(KeyboardInterrupt):
        _atomic_dir(tmp_path / "gguf-x", lambda f: (_ for _ in ()).throw(KeyboardInterrupt()), complete=_complete)
    assert list(tmp_path.iterdir()) == []


def test_stale_incomplete_cache_folder_is_replaced_and_a_finished_one_kept(tmp_path):
    from hlm_gym.lm.models import _atomic_dir

    final = tmp_path / "gguf-x"
    final.mkdir()
    (final / "config.json").write_text("half")  # written in place by an interrupted older version
    _atomic_dir(final, _fill({"config.json": "{}", "model.safetensors": "new"}), complete=_complete)
    assert (final / "model.safetensors").read_text() == "new" and (final / "config.json").read_text() == "{}"
    # another process finished first: its folder is kept, ours is dropped
    _atomic_dir(final, _fill({"config.json": "{}", "model.safetensors": "other"}), complete=_complete)
    assert (final / "model.safetensors").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["gguf-x"]


def test_unwritable_model_cache_is_a_clear_error(tmp_path, monkeypatch):
    import tempfile

    from hlm_gym.lm.models import _atomic_dir

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    with pytest.raises(ModelLoadError, match=r"cannot write in the model cache folder .*Permission denied.*"
                                             r"set HLM_GYM_CACHE"):
        _atomic_dir(tmp_path / "gguf-x", _fill({}), complete=_complete)


def test_disk_full_during_conversion_is_a_clear_error(tmp_path):
    from hlm_gym.lm.models import _atomic_dir

    def full(folder):
        raise OSError(28, "No space left on device")

    with pytest.raises(ModelLoadError, match=r"cannot write .*gguf-x \(No space left on device\)"):
        _atomic_dir(tmp_path / "gguf-x", full, complete=_complete)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- the prompt cache
SHAREGPT = [{"id": f"c{i}", "conversations": [{"from": "human", "value": f"prompt number {i} here"},
                                               {"from": "gpt", "value": f"reply {i}"}]} for i in range(40)]


@pytest.fixture
def small_sharegpt(tmp_path, monkeypatch):
    import hlm_gym.lm.prompts as prompts

    src = tmp_path / "sharegpt.json"
    src.write_text(json.dumps(SHAREGPT))
    cache = tmp_path / "cache"
    monkeypatch.setenv("HLM_GYM_CACHE", str(cache))
    monkeypatch.setattr(prompts, "_sharegpt_file", lambda: src)
    return cache / f"sharegpt-v{prompts._CACHE_VERSION}-{src.stat().st_size}.jsonl"


@pytest.mark.parametrize("damage", [b"", b'{"id": "c0", "spl', b"[1, 2]\n", b"\xff\xfe garbage", b"{}\n"],
                         ids=["empty", "torn", "not-objects", "not-utf8", "missing-keys"])
def test_damaged_prompt_cache_is_rebuilt(small_sharegpt, damage):
    from hlm_gym.lm.prompts import sharegpt_prompts

    want = [p.id for p in sharegpt_prompts("train")]
    assert small_sharegpt.is_file() and len(want) > 20
    small_sharegpt.write_bytes(damage)
    assert [p.id for p in sharegpt_prompts("train")] == want
    assert len(small_sharegpt.read_text().splitlines()) == len(SHAREGPT)  # rewritten whole
    assert sorted(p.name for p in small_sharegpt.parent.iterdir()) == [small_sharegpt.name]


def test_unwritable_prompt_cache_only_costs_speed(small_sharegpt, monkeypatch):
    import hlm_gym.lm.prompts as prompts

    def refuse(path, text):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(prompts, "atomic_write_text", refuse)
    assert len(prompts.sharegpt_prompts("test")) + len(prompts.sharegpt_prompts("train")) > 20
    assert not small_sharegpt.exists()
