"""Where ``traces build`` writes: checked before any work, atomic with unique temporary names,
never into the package without an explicit ``--out``, and nothing but finished parts left on a failure."""

from __future__ import annotations

import hashlib
import os
import threading

import numpy as np
import pytest
import torch

import hlm_gym.traces.builder as builder
from hlm_gym.lm.decoding import DecoderConfig
from hlm_gym.traces.builder import build_traces, check_output
from hlm_gym.traces.store import SPLITS, TraceError, default_trace_path, load_traces
from tests.tiny_models import tiny_pair, tiny_prompts

torch.set_num_threads(1)
CFG = DecoderConfig(mode="greedy", max_new_tokens=6)


@pytest.fixture(scope="module")
def pair():
    return tiny_pair()


def _leftovers(folder) -> list[str]:
    """Files under ``folder`` other than finished trace files and part files."""
    out = []
    for root, _, files in os.walk(folder):
        for f in files:
            if not (f.endswith(".parquet") and (f.startswith("part-") or root == str(folder))):
                out.append(os.path.relpath(os.path.join(root, f), folder))
    return sorted(out)


# ------------------------------------------------------------------------------- check_output
def test_output_that_is_a_folder_is_refused(tmp_path):
    with pytest.raises(TraceError, match=r"--out .* is a folder; give the path of a \.parquet file"):
        check_output(tmp_path, label="--out")


def test_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / "t.parquet"
    out.write_bytes(b"old")
    with pytest.raises(TraceError, match="t.parquet already exists; pass --overwrite"):
        check_output(out)
    assert check_output(out, overwrite=True) == out


def test_output_under_a_file_is_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(TraceError, match=r"afile is a file, not a folder"):
        check_output(tmp_path / "afile" / "sub" / "t.parquet")


def test_part_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "t.parquet.parts").write_text("x")
    with pytest.raises(TraceError, match="part folder .* is not a folder"):
        check_output(tmp_path / "t.parquet")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(TraceError, match="not writable"):
            check_output(ro / "t.parquet")
    finally:
        ro.chmod(0o700)


def test_folder_where_no_file_can_be_created_is_refused(tmp_path, monkeypatch):
    """A read-only file system (or any failing create) is found by a probe file, even as root."""
    import tempfile

    def refuse(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(TraceError, match=r"cannot write in folder .* \(Read-only file system\)"):
        check_output(tmp_path / "t.parquet")


def test_missing_parent_folders_are_fine(tmp_path):
    out = tmp_path / "a" / "b" / "t.parquet"
    assert check_output(out) == out and not (tmp_path / "a").exists()


# ------------------------------------------------------------------------------- build_traces
def test_build_refuses_a_bad_output_before_tracing(tmp_path, pair, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("traced although the output is bad")

    monkeypatch.setattr(builder, "trace_batch", boom)
    (tmp_path / "t.parquet").write_bytes(b"old")
    with pytest.raises(TraceError, match="already exists"):
        build_traces(pair, tiny_prompts(2), CFG, tmp_path / "t.parquet", overwrite=False, measure=False)
    with pytest.raises(TraceError, match="is a folder"):
        build_traces(pair, tiny_prompts(2), CFG, tmp_path, measure=False)
    assert (tmp_path / "t.parquet").read_bytes() == b"old" and _leftovers(tmp_path) == []


@pytest.mark.parametrize("fail_in", ["second-chunk", "final-write"])
@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_failure_leaves_no_temporary_file(tmp_path, pair, monkeypatch, fail_in, exc):
    out = tmp_path / "t.parquet"
    real_batch = builder.trace_batch
    calls = []

    def flaky_batch(*args, **kwargs):
        calls.append(1)
        if fail_in == "second-chunk" and len(calls) == 2:
            raise exc
        return real_batch(*args, **kwargs)

    monkeypatch.setattr(builder, "trace_batch", flaky_batch)
    if fail_in == "final-write":
        import pyarrow.parquet as pq

        real_pq_write = pq.write_table

        def failing_write(table, where, **kwargs):
            real_pq_write(table, where, **kwargs)  # the temporary file exists when the failure hits
            if not os.path.basename(str(where)).startswith("part-"):
                raise exc

        monkeypatch.setattr(pq, "write_table", failing_write)
    notes = []
    with pytest.raises(type(exc)):
        build_traces(pair, tiny_prompts(4), CFG, out, k_choices=(4,), batch_size=2, measure=False,
                     on_stop=notes.append)
    assert not out.exists() and _leftovers(tmp_path) == []
    kept = sorted((tmp_path / "t.parquet.parts").glob("*"))
    assert [p.suffix for p in kept] == [".parquet"] * (1 if fail_in == "second-chunk" else 2)
    assert len(notes) == 1 and f"{len(kept)} finished chunk(s) kept in" in notes[0] and "resum" in notes[0]
    monkeypatch.undo()
    logs = []
    build_traces(pair, tiny_prompts(4), CFG, out, k_choices=(4,), batch_size=2, measure=False, log=logs.append)
    assert sum("reused" in line for line in logs) == len(kept)
    assert out.is_file() and not (tmp_path / "t.parquet.parts").exists() and _leftovers(tmp_path) == []


def test_failure_in_the_first_chunk_leaves_nothing(tmp_path, pair, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(builder, "trace_batch", boom)
    notes = []
    with pytest.raises(RuntimeError):
        build_traces(pair, tiny_prompts(2), CFG, tmp_path / "t.parquet", measure=False, on_stop=notes.append)
    assert list(tmp_path.iterdir()) == [] and "nothing was left behind" in notes[0]


def test_write_error_is_one_line_and_names_the_kept_parts(tmp_path, pair, monkeypatch):
    import pyarrow.parquet as pq

    real = pq.write_table

    def disk_full(table, where, **kwargs):
        if not os.path.basename(str(where)).startswith("part-"):
            raise OSError(28, "No space left on device")
        real(table, where, **kwargs)

    monkeypatch.setattr(pq, "write_table", disk_full)
    with pytest.raises(TraceError, match=r"cannot write traces for .*t\.parquet: .*No space left on device; "
                                         r"2 finished chunk\(s\) kept in .*t\.parquet\.parts for resuming"):
        build_traces(pair, tiny_prompts(4), CFG, tmp_path / "t.parquet", k_choices=(4,), batch_size=2,
                     measure=False)
    assert _leftovers(tmp_path) == []


def test_overwrite_replaces_the_file_atomically(tmp_path, pair):
    out = tmp_path / "t.parquet"
    out.write_bytes(b"old")
    build_traces(pair, tiny_prompts(3), CFG, out, k_choices=(4,), measure=False, overwrite=True)
    assert load_traces(out).n_prompts == 3 and _leftovers(tmp_path) == []
    assert oct(out.stat().st_mode & 0o777) != oct(0o600)  # the usual file mode, not mkstemp's


def test_two_builds_into_one_folder_do_not_collide(tmp_path, pair):
    """Concurrent builds of two outputs in one folder (and of one output twice) both finish cleanly."""
    errors = []

    def run(name, n):
        try:
            build_traces(tiny_pair(), tiny_prompts(n), CFG, tmp_path / name, k_choices=(4,), batch_size=2,
                         measure=False)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=args) for args in
               (("a.parquet", 4), ("b.parquet", 5), ("a.parquet", 4))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert load_traces(tmp_path / "a.parquet").n_prompts == 4 and load_traces(tmp_path / "b.parquet").n_prompts == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet", "b.parquet"]


def test_atomic_part_and_final_names_are_unique(tmp_path, pair, monkeypatch):
    import pyarrow.parquet as pq

    seen = []
    real = pq.write_table

    def spy(table, where, **kwargs):
        seen.append(os.path.basename(str(where)))
        real(table, where, **kwargs)

    monkeypatch.setattr(pq, "write_table", spy)
    build_traces(pair, tiny_prompts(4), CFG, tmp_path / "t.parquet", k_choices=(4,), batch_size=2, measure=False)
    assert len(seen) == 3 and len(set(seen)) == 3  # two parts and the final file
    for name in seen:  # "<target>.<random>.tmp", never the fixed "<target>.tmp" of before
        target, rest = (name.split(".parquet.", 1)[0] + ".parquet", name.split(".parquet.", 1)[1])
        assert rest.endswith(".tmp") and len(rest) > len(".tmp") + 4, name
        assert target == "t.parquet" or target.startswith("part-"), name


# ------------------------------------------------------------------------------- the command line
def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def tiny_cli(monkeypatch):
    """``hlm-gym traces build`` on the tiny pair and tiny prompts (records whether a model was loaded)."""
    import hlm_gym.lm.models as models

    loaded = []

    def fake_load_pair(**kwargs):
        loaded.append(kwargs)
        return tiny_pair()

    monkeypatch.setattr(models, "load_pair", fake_load_pair)
    monkeypatch.setattr(builder, "sharegpt_trace_prompts",
                        lambda tok, split, n, seed, offset=0, max_prompt_tokens=None: tiny_prompts(n, seed, split))
    monkeypatch.setattr(builder, "measure_step_times", lambda *a, **k: {"slm_step_s": 0.01, "llm_step_s": 0.02,
                                                                       "llm_catchup_per_token_s": 0.001})
    return loaded


def _build(*extra):
    from hlm_gym.cli.main import main

    return main(["traces", "build", "--prompts", "3", "--max-new-tokens", "5", "--k-choices", "4",
                 "--batch-size", "2", *extra])


def test_cli_default_output_is_a_user_folder_not_the_package(tmp_path, monkeypatch, tiny_cli, capsys):
    shipped = {s: _sha(default_trace_path(s)) for s in SPLITS if default_trace_path(s).is_file()}
    monkeypatch.chdir(tmp_path)
    assert _build("--split", "validation") == 0
    out = tmp_path / "runs" / "traces" / "embedded-validation.parquet"
    assert load_traces(out).n_prompts == 3 and f"-> {os.path.join('runs', 'traces', out.name)}" in capsys.readouterr().out
    assert {s: _sha(default_trace_path(s)) for s in shipped} == shipped
    # a second run does not overwrite silently
    assert _build("--split", "validation") == 2
    assert "embedded-validation.parquet already exists; pass --overwrite" in capsys.readouterr().err
    assert _build("--split", "validation", "--overwrite") == 0
    assert len(tiny_cli) == 2


@pytest.mark.parametrize("kind", ["folder", "exists", "under-a-file"])
def test_cli_refuses_a_bad_out_before_loading_a_model(tmp_path, tiny_cli, capsys, kind):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "old.parquet").write_text("x")
    out = {"folder": tmp_path, "exists": tmp_path / "old.parquet", "under-a-file": tmp_path / "afile" / "t.parquet"}
    assert _build("--out", str(out[kind])) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hlm-gym: error: --out ") and "\n" not in err
    assert tiny_cli == []  # no model was loaded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "old.parquet"]


@pytest.mark.parametrize("flag,value", [("--batch-size", "0"), ("--max-new-tokens", "0"), ("--prompts", "0"),
                                        ("--k", "0"), ("--threads", "0"), ("--offset", "-1"),
                                        ("--temperature", "0"), ("--theta-max", "nan"), ("--k-choices", "0,8")])
def test_cli_refuses_bad_numbers_before_loading_a_model(tmp_path, tiny_cli, capsys, flag, value):
    assert _build("--out", str(tmp_path / "t.parquet"), flag, value) == 2
    err = capsys.readouterr().err
    assert f"hlm-gym: error: {flag} must be" in err and value.split(",")[0] in err
    assert tiny_cli == [] and list(tmp_path.iterdir()) == []


def test_cli_interrupted_build_says_what_is_kept_and_resumes(tmp_path, tiny_cli, capsys, monkeypatch):
    real, calls = builder.trace_batch, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(builder, "trace_batch", interrupted)
    out = tmp_path / "t.parquet"
    assert _build("--out", str(out)) == 130
    err = capsys.readouterr().err
    assert "1 finished chunk(s) kept in" in err and "t.parquet.parts" in err and "hlm-gym: interrupted" in err
    assert _leftovers(tmp_path) == [] and not out.exists()
    monkeypatch.setattr(builder, "trace_batch", real)
    assert _build("--out", str(out)) == 0
    assert "reused" in capsys.readouterr().out
    tr = load_traces(out)
    assert tr.n_prompts == 3 and np.all(tr.lengths <= 5) and sorted(p.name for p in tmp_path.iterdir()) == [out.name]
