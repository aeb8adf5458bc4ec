"""Registration of the hlm-gym environments with Gymnasium (called on ``import hlm_gym``).

Only strings are registered, so nothing heavy is imported until an environment is made. Nor is
gymnasium itself: if it is not imported yet, :func:`register_envs` registers the environments
right after its first import (a one-shot import hook), so ``import hlm_gym`` stays light (the
command line starts fast) and ``import hlm_gym; gym.make("hlm_gym/HybridLM-v0")`` still works.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import Optional, Sequence

#: Default ``max_episode_steps``: the shipped traces' response length limit.
MAX_EPISODE_STEPS = 128

ENV_IDS = ("hlm_gym/HybridLM-v0", "hlm_gym/HybridLMCompressed-v0", "hlm_gym/WDMoE-v0")
#: The env id commands and the harness use when none is given.
DEFAULT_ENV_ID = ENV_IDS[0]


def _register_now() -> None:
    """Register the environments with the (imported) gymnasium registry, skipping known ids."""
    from gymnasium.envs.registration import register, registry

    specs = {
        "hlm_gym/HybridLM-v0": ("hlm_gym.environments.hybrid_lm.env:HybridLMEnv",
                                "hlm_gym.environments.hybrid_lm.vector:HybridLMVectorEnv", MAX_EPISODE_STEPS),
        "hlm_gym/HybridLMCompressed-v0": ("hlm_gym.environments.hybrid_lm.env:HybridLMCompressedEnv",
                                          "hlm_gym.environments.hybrid_lm.vector:HybridLMCompressedVectorEnv",
                                          MAX_EPISODE_STEPS),
        # an episode is a whole sequence (tokens x MoE layers decisions); it always terminates
        "hlm_gym/WDMoE-v0": ("hlm_gym.environments.wdmoe.env:WDMoEEnv",
                             "hlm_gym.environments.wdmoe.vector:WDMoEVectorEnv", None),
    }
    for env_id, (entry, vector_entry, max_steps) in specs.items():
        if env_id in registry:
            continue
        register(id=env_id, entry_point=entry, vector_entry_point=vector_entry, max_episode_steps=max_steps)


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: lets the other finders load gymnasium, then registers the environments."""

    def __init__(self) -> None:
        self._searching = False

    def find_spec(self, fullname: str, path: Optional[Sequence[str]] = None,
                  target: Optional[ModuleType] = None) -> Optional[importlib.machinery.ModuleSpec]:
        """The spec the other finders give for ``gymnasium``, its loader wrapped to register after."""
        if fullname != "gymnasium" or self._searching:
            return None
        self._searching = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._searching = False
        if spec is None or isinstance(spec.loader, type) or not hasattr(spec.loader, "exec_module"):
            return spec  # not installed, or a loader shared by other modules: leave it alone
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_then_register(module: ModuleType) -> None:
            try:
                exec_module(module)
            finally:
                del loader.exec_module  # the loader's own method again
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            _register_now()

        loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


def register_envs() -> None:
    """Register every env id of :data:`ENV_IDS` (idempotent).

    Now if gymnasium is imported, else right after its first import; nothing if it is not
    installed (the package still imports).
    """
    if "gymnasium" in sys.modules:
        try:
            _register_now()
        except ImportError:  # gymnasium blocked or broken: the package still imports
            return
    elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
