"""What a saved Stable-Baselines3 model file must be, checked without loading it (no torch import)."""

from __future__ import annotations

import zipfile
from pathlib import Path

from hlm_gym.policies.base import PolicyError

__all__ = ["check_sb3_zip"]


def check_sb3_zip(p: Path) -> Path:
    """``p`` (or ``p.zip``) when it is a zip holding SB3's ``data`` and ``policy.pth``; else PolicyError."""
    where = f"policy model {str(p)!r}"
    if not p.is_file():
        if p.with_suffix(".zip").is_file():
            p = p.with_suffix(".zip")
        else:
            raise PolicyError(f"{where}: file not found")
    if not zipfile.is_zipfile(p):
        raise PolicyError(f"{where} is not a Stable-Baselines3 model (not a zip archive)")
    with zipfile.ZipFile(p) as zf:
        names = set(zf.namelist())
    if "data" not in names or "policy.pth" not in names:
        raise PolicyError(f"{where} is not a Stable-Baselines3 model (no 'data'/'policy.pth' inside)")
    return p
