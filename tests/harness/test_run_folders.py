"""Run folders owned by one run: the lock, the staging folder and its commit, the hashes
``summary.json`` records, and what ``compare --resume`` makes of a folder. Includes a ``train``
interrupted by SIGINT and two ``train`` runs into one folder (subprocesses, tiny budgets)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from hlm_gym.harness.errors import RunFolderBusyError
from hlm_gym.harness.run_folder import (LOCK_NAME, STAGING_PREFIX, FolderLock, RunFolder, sha256_file,
                                        signals_deferred, verify_artifacts)
from tests.harness.helpers import TINY, make_traces, snapshot, start_cli, train_argv

ARTIFACTS = ("model_last.zip", "best_model.zip", "vecnormalize.pkl", "summary.json")


@pytest.fixture(autouse=True)
def keyboard_interrupt_on_sigint():
    """Python's own SIGINT handler in this process for the test (it is not installed when the test
    run was started with SIGINT ignored, as a background job of a non-interactive shell is)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    return make_traces(tmp_path_factory.mktemp("folder-traces"))


# ------------------------------------------------------------------------------ the lock
def test_second_lock_on_a_folder_is_refused_in_one_line(tmp_path):
    first = FolderLock(tmp_path, "run folder").acquire()
    try:
        with pytest.raises(RunFolderBusyError) as exc:
            FolderLock(tmp_path).acquire()
        msg = str(exc.value)
        assert f"run folder {str(tmp_path)!r} is in use by another run (pid " in msg and "\n" not in msg
        assert "choose another --out" in msg
    finally:
        first.release()
    with FolderLock(tmp_path):  # released: free again
        pass
    assert (tmp_path / LOCK_NAME).read_text() == ""  # a clean release empties the record


def test_record_of_a_run_that_died_is_taken_over_with_a_note(tmp_path, capsys):
    (tmp_path / LOCK_NAME).write_text("pid 999999 on some-host since 2020-01-01T00:00:00+00:00\n")
    with FolderLock(tmp_path):
        assert "pid " in (tmp_path / LOCK_NAME).read_text()
    err = capsys.readouterr().err
    assert "note: taking over run folder" in err and "pid 999999 on some-host" in err


# ------------------------------------------------------------------------------ staging and commit
def test_commit_replaces_the_whole_set_summary_last(tmp_path):
    for name in ARTIFACTS:
        (tmp_path / name).write_text(f"old {name}")
    with RunFolder(tmp_path, ARTIFACTS) as folder:
        assert folder.staging.parent == tmp_path and folder.staging.name.startswith(STAGING_PREFIX)
        folder.staged("model_last.zip").write_text("new model")
        folder.staged("summary.json").write_text("new summary")
        assert (tmp_path / "summary.json").read_text() == "old summary.json"  # untouched until the commit
        folder.commit()
    assert snapshot(tmp_path) == {LOCK_NAME: b"", "model_last.zip": b"new model", "summary.json": b"new summary"}


def test_a_run_that_fails_leaves_the_folder_as_it_was(tmp_path):
    for name in ARTIFACTS:
        (tmp_path / name).write_text(f"old {name}")
    before = snapshot(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with RunFolder(tmp_path, ARTIFACTS) as folder:
            folder.staged("best_model.zip").write_text("half a run")
            raise KeyboardInterrupt
    after = snapshot(tmp_path)
    assert after.pop(LOCK_NAME) == b"" and after == before
    with FolderLock(tmp_path):  # and the lock is free
        pass


def test_staging_left_by_a_killed_run_is_removed_by_the_next(tmp_path):
    stale = tmp_path / f"{STAGING_PREFIX}killed"
    stale.mkdir(parents=True)
    (stale / "best_model.zip").write_text("orphan")
    with RunFolder(tmp_path, ARTIFACTS):
        assert not stale.exists()


def test_signals_during_a_commit_take_effect_after_it():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with signals_deferred():
            signal.raise_signal(signal.SIGINT)
            done.append("renamed")
    assert done == ["renamed"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_verify_artifacts(tmp_path):
    (tmp_path / "a.zip").write_bytes(b"model")
    good = {"model_best": {"file": "a.zip", "sha256": sha256_file(tmp_path / "a.zip")}}
    assert verify_artifacts(tmp_path, good) is None
    assert "no file hashes" in verify_artifacts(tmp_path, None)
    assert "b.zip is missing" in verify_artifacts(tmp_path, {"m": {"file": "b.zip", "sha256": "0"}})
    assert "malformed" in verify_artifacts(tmp_path, {"m": {"file": "../a.zip", "sha256": "0"}})
    (tmp_path / "a.zip").write_bytes(b"another run's model")
    assert "a.zip does not match the sha256" in verify_artifacts(tmp_path, good)


# ------------------------------------------------------------------------------ real runs
def _config(traces, out, **kw):
    from hlm_gym.harness.training import TrainConfig

    base = dict(algo="ppo", scenario="pedestrian", risk_weight=5.0, n_envs=4, timesteps=256, seed=3, out=str(out),
                traces=str(traces), overrides=dict(TINY), eval_freq=128, eval_episodes=8,
                reference=False)
    return TrainConfig(**(base | kw))


def _wait_for(predicate, proc, timeout_s: float = 180.0) -> None:
    t0 = time.monotonic()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early (rc {proc.returncode}): {proc.communicate()[1][-2000:]}")
        if time.monotonic() - t0 > timeout_s:
            proc.kill()
            raise AssertionError("the run did not reach the expected point in time")
        time.sleep(0.05)


def _staged(folder: Path, name: str):
    return lambda: any(folder.glob(f"{STAGING_PREFIX}*/{name}"))


def test_summary_records_settings_and_hashes_of_every_model_file(traces, tmp_path):
    from hlm_gym.harness.training import config_dict, train

    cfg = _config(traces, tmp_path / "run")
    res = train(cfg)
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["config"] == config_dict(cfg)
    assert set(s["artifacts"]) == {"model_last", "model_best", "vecnormalize"}
    for entry in s["artifacts"].values():
        assert sha256_file(tmp_path / "run" / entry["file"]) == entry["sha256"]
    assert res.files["model_best"] == tmp_path / "run" / "best_model.zip"
    assert not list((tmp_path / "run").glob(f"{STAGING_PREFIX}*")) and not list((tmp_path / "run").glob("*.tmp*"))


def test_interrupted_rerun_leaves_the_finished_run_intact_and_resume_is_right(traces, tmp_path):
    """SIGINT while a second run trains into a finished folder: exit 130, the first run's files
    as they were (summary and models matching), no staging left, the lock free; --resume reuses
    the first run for its own settings, not for the interrupted one's; a re-run completes."""
    from hlm_gym.harness.compare import finished_run
    from hlm_gym.harness.training import train

    run = tmp_path / "run"
    first = _config(traces, run)
    train(first)
    before = snapshot(run)
    proc = start_cli(train_argv(traces, run, timesteps=200_000, seed=4))
    _wait_for(_staged(run, "best_model.zip"), proc)  # mid-way: it has a best checkpoint of its own
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "hlm-gym: interrupted" in err, err[-2000:]
    after = snapshot(run)
    for name in (*ARTIFACTS, LOCK_NAME):
        assert after.get(name) == before.get(name) or (name == LOCK_NAME and after[name] == b""), name
    assert not list(run.glob(f"{STAGING_PREFIX}*")) and not list(run.glob("*.tmp*"))
    with FolderLock(run):
        pass
    info, why = finished_run(first)
    assert info is not None and info["reused"] and "same settings" in why
    info, why = finished_run(_config(traces, run, seed=4))
    assert info is None and "settings differ: seed 3 -> 4" in why
    second = _config(traces, run, seed=4)
    train(second)
    info, _ = finished_run(second)
    assert info is not None and json.loads((run / "summary.json").read_text())["seed"] == 4


def test_interrupted_first_run_leaves_no_model(traces, tmp_path):
    """The same in this process (a watcher thread sends the SIGINT): a first run into an empty
    folder, interrupted, leaves no model and no summary; the lock is free."""
    import os
    import threading

    from hlm_gym.harness.compare import finished_run
    from hlm_gym.harness.training import train

    run = tmp_path / "fresh"
    started = _staged(run, "best_model.zip")

    def interrupt_when_started() -> None:
        t0 = time.monotonic()
        while not started() and time.monotonic() - t0 < 120:
            time.sleep(0.02)
        if started():
            os.kill(os.getpid(), signal.SIGINT)

    watcher = threading.Thread(target=interrupt_when_started, daemon=True)
    watcher.start()
    with pytest.raises(KeyboardInterrupt):
        train(_config(traces, run, timesteps=200_000))
    watcher.join()
    assert not any((run / name).exists() for name in ARTIFACTS)  # no model without a matching summary
    assert not list(run.glob(f"{STAGING_PREFIX}*"))
    with FolderLock(run):
        pass
    info, why = finished_run(_config(traces, run))
    assert info is None and why.startswith("no summary.json")


def test_second_train_into_a_folder_in_use_is_refused_and_the_first_completes(traces, tmp_path, capsys):
    from hlm_gym.cli.main import main
    from hlm_gym.harness.compare import finished_run

    run = tmp_path / "shared"
    proc = start_cli(train_argv(traces, run, timesteps=2048, eval_freq=1024, seed=5))
    _wait_for(lambda: any(run.glob(f"{STAGING_PREFIX}*")), proc)  # it holds the lock
    assert main(train_argv(traces, run, seed=6)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"is in use by another run (pid {proc.pid} on " in err, err
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-2000:]
    s = json.loads((run / "summary.json").read_text())
    assert s["seed"] == 5 and verify_artifacts(run, s["artifacts"]) is None
    info, _ = finished_run(_config(traces, run, seed=5, timesteps=2048, eval_freq=1024))
    assert info is not None


def test_resume_retrains_a_mixed_folder_and_says_why(traces, tmp_path, capsys, monkeypatch):
    """Two finished runs; one folder then gets the other's best model (a mixed folder): --resume
    reuses the intact run, retrains the mixed one, one line each."""
    from hlm_gym.harness import compare as cmp
    from hlm_gym.harness.training import train

    a, b = _config(traces, tmp_path / "a"), _config(traces, tmp_path / "b", risk_target=0.3)
    train(a)
    train(b)
    (tmp_path / "a" / "best_model.zip").write_bytes((tmp_path / "b" / "best_model.zip").read_bytes())
    trained = []
    monkeypatch.setattr(cmp, "_train_job", lambda cfg, *args: trained.append(cfg.out) or {"reused": False})
    capsys.readouterr()
    infos = cmp._train_all([a, b], 1, None, resume=True)
    lines = capsys.readouterr().out.strip().splitlines()
    assert trained == [a.out] and infos[1]["reused"] is True
    assert lines == [f"resume: retrain {a.out}: best_model.zip does not match the sha256 summary.json records "
                     "(a mixed or modified folder)",
                     f"resume: reuse {b.out}: finished with the same settings, files match their sha256"]
    (tmp_path / "b" / "summary.json").write_text("{not json")
    assert cmp.finished_run(b) == (None, "summary.json unreadable (JSONDecodeError)")
