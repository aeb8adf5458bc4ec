"""The HybridLM environments: simulation core, single env, numpy and torch vector envs, SB3 adapter.

Import the submodules directly (``hlm_gym.environments.hybrid_lm.env`` etc.); this package
imports nothing heavy.
"""
