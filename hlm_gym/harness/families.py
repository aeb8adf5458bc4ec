"""The env families the harness knows (:data:`FAMILIES`) and the lookup by env id.

A new env family declares its :class:`~hlm_gym.harness.family.EnvFamily` in a module of its
own beside :mod:`hlm_gym.harness.hybrid_lm` and is added to :data:`FAMILIES`.
"""

from __future__ import annotations

from hlm_gym.harness.errors import UnknownEnvError
from hlm_gym.harness.family import EnvFamily
from hlm_gym.harness.hybrid_lm import HYBRID_LM
from hlm_gym.harness.wdmoe import WDMOE
from hlm_gym.policies.context import DEFAULT_ENV_ID

__all__ = ["FAMILIES", "DEFAULT_ENV_ID", "env_ids", "family_for", "default_scenario"]

FAMILIES: tuple[EnvFamily, ...] = (HYBRID_LM, WDMOE)


def env_ids() -> tuple[str, ...]:
    """Every env id the harness can evaluate, train and compare on."""
    return tuple(i for fam in FAMILIES for i in fam.env_ids)


def family_for(env_id: str) -> EnvFamily:
    """The family of ``env_id``; :class:`UnknownEnvError` (one line, listing the known ids) otherwise."""
    for fam in FAMILIES:
        if env_id in fam.env_ids:
            return fam
    raise UnknownEnvError(f"unknown env id {env_id!r}; known: {', '.join(env_ids())}")


def default_scenario(env_id: str, fallback: str) -> str:
    """The scenario a command uses for ``env_id`` when none is given: ``fallback`` for a family without
    compare defaults of its own (HybridLM), else the first of its default scenarios."""
    defaults = family_for(env_id).compare_defaults
    return str(defaults["scenarios"][0]) if defaults else fallback
