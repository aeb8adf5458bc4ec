"""The ``ppo:PATH.zip`` (``sb3:``) spec kind: a saved Stable-Baselines3 model, for any env.

Parsing checks that the file is an SB3 zip (nothing is loaded, so no torch import); building
loads it with :func:`hlm_gym.policies.sb3_model.load_sb3_policy` and checks its spaces against
the context's environment.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

from hlm_gym.policies.base import Policy, PolicyError
from hlm_gym.policies.context import PolicyContext
from hlm_gym.policies.kind import ParsedSpec, PolicyKind, SpecArgumentError

__all__ = ["SB3_KIND", "SB3Args", "check_sb3_zip"]


@dataclass(frozen=True)
class SB3Args:
    """``ppo:PATH``: the model file (``.zip`` added when the path has none and that file exists)."""

    path: Path


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


def _parse(arg: str) -> SB3Args:
    if not arg:
        raise SpecArgumentError("ppo needs a model path, e.g. ppo:runs/model.zip")
    return SB3Args(check_sb3_zip(Path(arg)))


def _build(spec: ParsedSpec, context: PolicyContext) -> Policy:
    from hlm_gym.policies.sb3_model import load_sb3_policy

    return load_sb3_policy(str(spec.args.path), context=context)


SB3_KIND = PolicyKind("ppo", "ppo:PATH.zip", _parse, _build, env_ids=(), aliases=("sb3",))
