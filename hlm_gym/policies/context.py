"""What building a policy may need from its environment and run: :class:`PolicyContext`.

The evaluation harness fills one from the environment it drives (its env family knows how);
code that builds policies without an environment passes the fields it has. The defaults
describe the binary HybridLM environment with nothing else known.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from hlm_gym.environments.registration import DEFAULT_ENV_ID
from hlm_gym.policies.base import OBS_DIM, SEND, PolicyError

__all__ = ["PolicyContext", "DEFAULT_ENV_ID"]


@dataclass(frozen=True)
class PolicyContext:
    """The environment and run a policy is built for (every field optional but ``env_id``).

    ``n_actions``/``send_action``: the env's action space and the action a binary rule's SEND
    becomes there (binary rules are mapped onto it); ``observation_shape``: the observation a
    model must take. ``max_tokens``, ``latency_ref`` (s), ``risk_weight`` (lambda),
    ``risk_target``, ``scenario`` (a name or a :class:`~hlm_gym.wireless.scenarios.Scenario`) and
    ``vocab_size`` come from the environment; ``seed``/``rng`` seed stochastic rules; ``traces``
    (a trace folder/file, ``None`` = the shipped set) feeds the U-HLM fit and Learn-then-Test, or
    pass a ready ``fit`` (:class:`~hlm_gym.policies.fit.UHLMFit`) or ``calibration`` columns.
    """

    env_id: str = DEFAULT_ENV_ID
    n_actions: int = 2
    send_action: int = SEND
    observation_shape: tuple[int, ...] = (OBS_DIM,)
    max_tokens: Optional[int] = None
    latency_ref: Optional[float] = None
    risk_weight: Optional[float] = None
    risk_target: Optional[float] = None
    scenario: Any = None
    vocab_size: Optional[int] = None
    seed: Optional[int] = None
    rng: Optional[np.random.Generator] = None
    traces: Any = None
    fit: Any = None
    calibration: Optional[Mapping[str, Any]] = None

    def replace(self, **changes: Any) -> "PolicyContext":
        """A copy with ``changes``; an unknown field is a one-line :class:`PolicyError`."""
        known = {f.name for f in dataclasses.fields(self)}
        bad = sorted(set(changes) - known)
        if bad:
            raise PolicyError(f"unknown policy context field(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **changes)
