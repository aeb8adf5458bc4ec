"""Decision policies for the hybrid loop: published baselines, U-HLM's fitted threshold,
Learn-then-Test calibration, a channel-aware analytic rule and SB3 models, under one interface.

See :mod:`hlm_gym.policies.base` for the interface, :mod:`hlm_gym.policies.registry` for spec
strings and :mod:`hlm_gym.policies.context` for what building a policy may need. SB3 models
(:mod:`hlm_gym.policies.sb3_model`, which imports torch) are loaded on first use.
"""

from typing import Any

from hlm_gym.policies.base import MappedActions, Policy, PolicyError, as_draft_policy, draft_observation, on_action_space
from hlm_gym.policies.channel_aware import ChannelAwareThreshold
from hlm_gym.policies.context import PolicyContext
from hlm_gym.policies.fit import UHLMFit, fit_from_traces, fit_uhlm
from hlm_gym.policies.ltt import LTTResult, hb_pvalue, learn_then_test
from hlm_gym.policies.registry import REGISTRY, PolicyRegistry, make_draft_policy, make_policy, validate_spec
from hlm_gym.policies.rules import (AlwaysSend, BiLDFallback, CALMSoftmax, NeverSend, RandomSkip,
                                    UncertaintyThreshold)

__all__ = ["Policy", "PolicyError", "PolicyContext", "MappedActions", "on_action_space", "as_draft_policy",
           "draft_observation", "AlwaysSend", "NeverSend", "RandomSkip", "UncertaintyThreshold", "BiLDFallback",
           "CALMSoftmax", "ChannelAwareThreshold", "UHLMFit", "fit_uhlm", "fit_from_traces", "LTTResult", "hb_pvalue",
           "learn_then_test", "REGISTRY", "PolicyRegistry", "make_policy", "make_draft_policy", "validate_spec",
           "load_sb3_policy", "SB3Policy"]

_SB3_NAMES = ("load_sb3_policy", "SB3Policy")


def __getattr__(name: str) -> Any:  # SB3 names on first use: importing them loads torch
    if name in _SB3_NAMES:
        from hlm_gym.policies import sb3_model

        return getattr(sb3_model, name)
    raise AttributeError(f"module 'hlm_gym.policies' has no attribute {name!r}")
