"""Decision policies for the hybrid loop: published baselines, U-HLM's fitted threshold,
Learn-then-Test calibration, a channel-aware analytic rule and SB3 models, under one interface.

See :mod:`hlm_gym.policies.base` for the interface and :mod:`hlm_gym.policies.spec` for spec strings.
"""

from hlm_gym.policies.base import Policy, PolicyError, as_draft_policy, draft_observation
from hlm_gym.policies.channel_aware import ChannelAwareThreshold
from hlm_gym.policies.fit import UHLMFit, fit_from_traces, fit_uhlm
from hlm_gym.policies.ltt import LTTResult, hb_pvalue, learn_then_test
from hlm_gym.policies.rules import (AlwaysSend, BiLDFallback, CALMSoftmax, NeverSend, RandomSkip,
                                    UncertaintyThreshold)
from hlm_gym.policies.spec import SB3Policy, load_sb3_policy, make_draft_policy, make_policy, validate_spec

__all__ = ["Policy", "PolicyError", "as_draft_policy", "draft_observation", "AlwaysSend", "NeverSend", "RandomSkip",
           "UncertaintyThreshold", "BiLDFallback", "CALMSoftmax", "ChannelAwareThreshold", "UHLMFit", "fit_uhlm",
           "fit_from_traces", "LTTResult", "hb_pvalue", "learn_then_test", "make_policy", "make_draft_policy",
           "validate_spec", "load_sb3_policy", "SB3Policy"]
