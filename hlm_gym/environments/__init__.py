"""Environment families, one folder each, on the shared wireless and language-model layers.

* :mod:`hlm_gym.environments.hybrid_lm`: ``hlm_gym/HybridLM-v0`` and
  ``hlm_gym/HybridLMCompressed-v0`` (U-HLM and CU-HLM: skip or send each SLM draft).
* :mod:`hlm_gym.environments.backends`: the array backends (Python scalars, numpy, torch) a
  family's ONE step kernel runs on, so its single, numpy-batched and torch-batched envs share it.
* :mod:`hlm_gym.environments.registration`: the env ids, registered with Gymnasium on
  ``import hlm_gym``.

Import the submodules directly; this package imports nothing heavy.
"""
