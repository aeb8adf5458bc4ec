"""File-system locations used by hlm-gym (no heavy imports here)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Optional


def cache_dir() -> Path:
    """Folder for converted model weights and parsed data (``$HLM_GYM_CACHE`` or ``~/.cache/hlm_gym``)."""
    return Path(os.environ.get("HLM_GYM_CACHE", Path.home() / ".cache" / "hlm_gym"))


def data_dir() -> Path:
    """Folder of artifacts shipped inside the package (SLM delta, default traces)."""
    return Path(__file__).resolve().parent / "data"


def _umask() -> int:
    """The process umask (read without changing it for longer than one call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """A unique temporary sibling of ``path`` for a writer that needs a file name (``model.save``,
    ``pq.write_table``, ...); moved onto ``path`` when the block ends normally, removed if it raises.

    ``suffix`` is kept at the end of the temporary name (SB3 appends ``.zip`` to names without it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def nearest_existing(path: str | os.PathLike) -> Path:
    """``path`` or its closest ancestor that exists (may be a file)."""
    p = Path(path).absolute()
    while not os.path.lexists(p) and p.parent != p:
        p = p.parent
    return p


def folder_problem(path: str | os.PathLike, probe: bool = True) -> Optional[str]:
    """Why ``path`` cannot be (or become) a folder this process writes in, or ``None``.

    The reasons: ``"<path> is a file, not a folder"``; ``"<ancestor> is a file, not a folder"`` (it
    cannot be created); ``"folder <ancestor> is not writable"``; with ``probe``, ``"cannot write in
    folder <ancestor> (<reason>)"`` when creating a file there fails (a read-only file system;
    root passes the permission test anywhere). Each layer words its own error around it.
    """
    p = Path(path)
    if os.path.lexists(p) and not p.is_dir():
        return f"{p} is a file, not a folder"
    base = nearest_existing(p)
    if not base.is_dir():
        return f"{base} is a file, not a folder"
    if not os.access(base, os.W_OK | os.X_OK):
        return f"folder {base} is not writable"
    if probe:
        try:
            fd, probe_file = tempfile.mkstemp(prefix=".hlm-gym-probe-", dir=base)
            os.close(fd)
            os.unlink(probe_file)
        except OSError as exc:
            return f"cannot write in folder {base} ({exc.strerror or exc})"
    return None
