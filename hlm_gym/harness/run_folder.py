"""Output folders owned by one run: a lock, a staging sub-folder, and a commit at the end.

* :class:`FolderLock`: ``fcntl.flock`` on ``<folder>/.hlm-gym.lock``. The kernel releases it
  when the process ends, however it ends (Ctrl-C, a crash, SIGKILL), so a lock is never stale;
  the file records who holds it (pid, host, start time) for the message a second run gets
  (:class:`~hlm_gym.harness.errors.RunFolderBusyError`), and is emptied on a clean release: a
  non-empty record found when taking the lock names a run that ended without releasing it,
  which is taken over with a note.
* :class:`RunFolder`: the lock plus a fresh staging folder ``<folder>/.partial-XXXX/`` the run
  writes its artifacts into. :meth:`RunFolder.commit` moves them into place when the run has
  completed: first the old ``summary.json`` is removed (the folder reads as unfinished), then
  the artifacts are moved in and the old ones the new run did not make are removed, and the new
  ``summary.json`` comes last. Until the commit an earlier run's files stay as they were; an
  interrupted run leaves nothing but its staging folder, removed on the way out (or, after
  SIGKILL, by the next run into the folder).
* :func:`sha256_file` and :func:`verify_artifacts`: the hashes ``summary.json`` records for each
  artifact, and the check ``compare --resume`` makes before reusing a run.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

from hlm_gym.harness.errors import RunFolderBusyError

__all__ = ["LOCK_NAME", "STAGING_PREFIX", "FolderLock", "RunFolder", "signals_deferred", "sha256_file",
           "verify_artifacts", "read_run_summary"]

LOCK_NAME = ".hlm-gym.lock"
STAGING_PREFIX = ".partial-"


def _owner() -> str:
    """Who holds a lock: pid, host and start time."""
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return f"pid {os.getpid()} on {socket.gethostname()} since {now}"


class FolderLock:
    """Exclusive ownership of ``folder`` for one process (``what`` names it in messages).

    A second :meth:`acquire` anywhere (another process, or another lock object) fails at once
    with :class:`RunFolderBusyError`; the lock goes with :meth:`release` or the process's end."""

    def __init__(self, folder: str | os.PathLike, what: str = "run folder") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self._fd: Optional[int] = None

    def acquire(self) -> "FolderLock":
        """Take the lock or raise :class:`RunFolderBusyError` naming its holder."""
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read(fd) or "another process"
            os.close(fd)
            raise RunFolderBusyError(f"{self.what} {str(self.folder)!r} is in use by another run ({holder}); "
                                     "wait for it to finish or choose another --out") from None
        previous = _read(fd)
        if previous:
            print(f"hlm-gym: note: taking over {self.what} {str(self.folder)!r} from a run that ended without "
                  f"releasing it ({previous})", file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (_owner() + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Empty the record and drop the lock (idempotent)."""
        import fcntl

        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read(fd: int) -> str:
    """The holder record in a lock file (one line)."""
    try:
        return os.pread(fd, 512, 0).decode("utf-8", "replace").strip().splitlines()[0]
    except (OSError, IndexError):
        return ""


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT/SIGTERM arriving inside the block take effect when it ends (main thread only;
    elsewhere the block runs as is). Keeps a commit of a few renames whole."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    sigs = [s for s in (signal.SIGINT, signal.SIGTERM) if s is not None]
    old = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in sigs}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if received:
            signal.raise_signal(received[0])


class RunFolder:
    """One run's ownership of its output folder: the lock, a fresh staging folder and the commit.

    ``artifacts``: the file names runs of this kind write (old ones the new run does not write
    are removed at the commit); ``marker``: the file written last that says the run finished."""

    def __init__(self, folder: str | os.PathLike, artifacts: Sequence[str], marker: str = "summary.json",
                 what: str = "run folder") -> None:
        self.folder = Path(folder)
        self.artifacts = tuple(artifacts)
        self.marker = marker
        self.lock = FolderLock(self.folder, what)
        self.staging: Optional[Path] = None

    def __enter__(self) -> "RunFolder":
        self.lock.acquire()
        try:
            for stale in self.folder.glob(STAGING_PREFIX + "*"):  # left by a killed run: we hold the lock
                shutil.rmtree(stale, ignore_errors=True)
            self.staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.folder))
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self.staging is not None:
                shutil.rmtree(self.staging, ignore_errors=True)
        finally:
            self.lock.release()

    def staged(self, name: str) -> Path:
        """Where the run writes artifact ``name`` until the commit."""
        assert self.staging is not None, "RunFolder used outside its with-block"
        return self.staging / name

    def final(self, name: str) -> Path:
        """Where artifact ``name`` lies after the commit."""
        return self.folder / name

    def commit(self) -> None:
        """Replace the folder's artifacts with the staged ones, the marker last (signals deferred)."""
        assert self.staging is not None, "RunFolder used outside its with-block"
        with signals_deferred():
            self.final(self.marker).unlink(missing_ok=True)
            for name in self.artifacts:
                if name != self.marker and not self.staged(name).is_file():
                    self.final(name).unlink(missing_ok=True)
            for name in self.artifacts:
                if name != self.marker and self.staged(name).is_file():
                    os.replace(self.staged(name), self.final(name))
            os.replace(self.staged(self.marker), self.final(self.marker))


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_run_summary(folder: str | os.PathLike) -> tuple[Optional[dict], str]:
    """``(summary, "")``: a run folder's ``summary.json`` as a dict; or ``(None, why not)`` in one line
    (missing: never trained or interrupted; unreadable; not a dict)."""
    try:
        s = json.loads((Path(folder) / "summary.json").read_text())
    except FileNotFoundError:
        return None, "no summary.json (never trained, or interrupted)"
    except (OSError, ValueError) as exc:
        return None, f"summary.json unreadable ({type(exc).__name__})"
    if not isinstance(s, dict):
        return None, "summary.json is not a run summary"
    return s, ""


def moved_path(path: str, recorded_folder: str | os.PathLike, folder: str | os.PathLike) -> str:
    """``path``, which a summary recorded under ``recorded_folder``, for the run now found in ``folder``
    (a finished run copied into another output folder); unchanged if it is not under ``recorded_folder``."""
    try:
        return str(Path(folder) / Path(path).relative_to(recorded_folder))
    except ValueError:
        return path


def verify_artifacts(folder: str | os.PathLike, artifacts: Any) -> Optional[str]:
    """None when every artifact a summary records (``{key: {"file": NAME, "sha256": HEX}}``) is in
    ``folder`` with that hash; else why not (one line)."""
    if not isinstance(artifacts, Mapping) or not artifacts:
        return "summary.json records no file hashes (written by an older hlm-gym)"
    for key, entry in artifacts.items():
        name = entry.get("file") if isinstance(entry, Mapping) else None
        if not isinstance(name, str) or Path(name).name != name or not isinstance(entry.get("sha256"), str):
            return f"summary.json's entry for {key} is malformed"
        path = Path(folder) / name
        if not path.is_file():
            return f"{name} is missing"
        if sha256_file(path) != entry["sha256"]:
            return f"{name} does not match the sha256 summary.json records (a mixed or modified folder)"
    return None
