"""The ``ppo:PATH.zip`` (``sb3:``) spec kind: a saved Stable-Baselines3 model, for any env.

Parsing checks that the file is an SB3 zip (nothing is loaded, so no torch import); building
loads it with :func:`hlm_gym.policies.sb3_model.load_sb3_policy` and checks its spaces against
the context's environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hlm_gym.policies.base import Policy
from hlm_gym.policies.context import PolicyContext
from hlm_gym.policies.kind import ParsedSpec, PolicyKind, SpecArgumentError
from hlm_gym.policies.sb3_zip import check_sb3_zip

__all__ = ["SB3_KIND", "SB3Args"]


@dataclass(frozen=True)
class SB3Args:
    """``ppo:PATH``: the model file (``.zip`` added when the path has none and that file exists)."""

    path: Path


def _parse(arg: str) -> SB3Args:
    if not arg:
        raise SpecArgumentError("ppo needs a model path, e.g. ppo:runs/model.zip")
    return SB3Args(check_sb3_zip(Path(arg)))


def _build(spec: ParsedSpec, context: PolicyContext) -> Policy:
    from hlm_gym.policies.sb3_model import load_sb3_policy

    return load_sb3_policy(str(spec.args.path), context=context)


SB3_KIND = PolicyKind("ppo", "ppo:PATH.zip", _parse, _build, env_ids=(), aliases=("sb3",))
