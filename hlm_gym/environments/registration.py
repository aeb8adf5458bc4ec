"""Registration of the hlm-gym environments with Gymnasium (called on ``import hlm_gym``).

Only strings are registered, so nothing heavy is imported until an environment is made.
"""

from __future__ import annotations

#: Default ``max_episode_steps``: the shipped traces' response length limit.
MAX_EPISODE_STEPS = 128

ENV_IDS = ("hlm_gym/HybridLM-v0", "hlm_gym/HybridLMCompressed-v0")


def register_envs() -> None:
    """Register ``hlm_gym/HybridLM-v0`` and ``hlm_gym/HybridLMCompressed-v0`` (idempotent)."""
    try:
        from gymnasium.envs.registration import register, registry
    except ImportError:  # gymnasium missing: the package still imports
        return
    specs = {
        "hlm_gym/HybridLM-v0": ("hlm_gym.environments.hybrid_lm.env:HybridLMEnv",
                                "hlm_gym.environments.hybrid_lm.vector:HybridLMVectorEnv"),
        "hlm_gym/HybridLMCompressed-v0": ("hlm_gym.environments.hybrid_lm.env:HybridLMCompressedEnv",
                                          "hlm_gym.environments.hybrid_lm.vector:HybridLMCompressedVectorEnv"),
    }
    for env_id, (entry, vector_entry) in specs.items():
        if env_id in registry:
            continue
        register(id=env_id, entry_point=entry, vector_entry_point=vector_entry,
                 max_episode_steps=MAX_EPISODE_STEPS)
