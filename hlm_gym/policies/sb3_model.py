"""Stable-Baselines3 models as policies: the saved-model loader, the policy wrapper the trainer
evaluates with, and the frozen observation normalisation saved models carry.

* :class:`NormalizedObsExtractor`: flatten + ``clip((obs - mean) / sqrt(var + eps), +-clip)``, a
  frozen ``VecNormalize`` inside the policy network, so that a saved zip is self-contained.
* :class:`SB3Policy`: an SB3 model as a :class:`~hlm_gym.policies.base.Policy` acting in the
  model's own action space; with ``vecnorm`` (the live ``VecNormalize`` of a run being trained)
  observations are normalised first.
* :func:`load_sb3_policy`: a saved zip as an :class:`SB3Policy`, its spaces checked against a
  :class:`~hlm_gym.policies.context.PolicyContext`.

Saved zips pickle the extractor's class path. Zips written before the package was layered name
it ``hlm_gym.training.NormalizedObsExtractor`` or ``hlm_gym.harness.training.NormalizedObsExtractor``;
the loader unpickles the model's ``policy_kwargs`` itself, resolving those old paths to this
module's class (:data:`LEGACY_CLASS_PATHS`), and hands them to SB3 as ``custom_objects``. No
module alias is installed anywhere.

This module imports torch and SB3; the spec layer imports it only when it builds a ``ppo:`` policy.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

from hlm_gym.policies.base import Policy, PolicyError
from hlm_gym.policies.context import PolicyContext
from hlm_gym.policies.sb3_zip import check_sb3_zip

__all__ = ["NormalizedObsExtractor", "SB3Policy", "load_sb3_policy", "saved_policy_kwargs", "LEGACY_CLASS_PATHS",
           "SB3_ALGOS"]

SB3_ALGOS = ("PPO", "A2C", "DQN")

#: ``(module, name)`` pairs that saved zips may name for :class:`NormalizedObsExtractor`.
LEGACY_CLASS_PATHS = frozenset({("hlm_gym.training", "NormalizedObsExtractor"),
                                ("hlm_gym.harness.training", "NormalizedObsExtractor")})


class NormalizedObsExtractor(BaseFeaturesExtractor):
    """Flatten + fixed observation normalisation ``clip((obs - mean) / sqrt(var + eps), +-clip)``,
    i.e. a frozen :class:`~stable_baselines3.common.vec_env.VecNormalize` inside the policy."""

    def __init__(self, observation_space, mean, var, epsilon: float = 1e-8, clip_obs: float = 10.0) -> None:
        super().__init__(observation_space, features_dim=int(np.prod(observation_space.shape)))
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean, dtype=np.float32)))
        self.register_buffer("std", torch.as_tensor(np.sqrt(np.asarray(var, dtype=np.float64) + epsilon)
                                                    .astype(np.float32)))
        self.clip_obs = float(clip_obs)

    def forward(self, observations):
        x = observations.flatten(1).float()
        return torch.clamp((x - self.mean) / self.std, -self.clip_obs, self.clip_obs)


class SB3Policy(Policy):
    """A Stable-Baselines3 model as a :class:`Policy` (deterministic actions by default).

    ``vecnorm``: a ``VecNormalize`` whose current statistics normalise the observations first
    (the trainer's periodic evaluations); ``None`` for saved models, which carry their own."""

    name = "sb3"

    def __init__(self, model: Any, path: str = "", deterministic: bool = True, vecnorm: Any = None) -> None:
        self.model = model
        self.path = path
        self.deterministic = deterministic
        self.vecnorm = vecnorm
        self.n_actions = int(model.action_space.n)
        self.obs_dim = int(np.prod(model.observation_space.shape))
        self._state: Any = None

    def reset(self, n: int = 1) -> None:
        self._state = None

    def _act(self, obs: np.ndarray) -> np.ndarray:
        o = obs.astype(np.float32)
        if self.vecnorm is not None:
            o = self.vecnorm.normalize_obs(o).astype(np.float32)
        act, self._state = self.model.predict(o, state=self._state, deterministic=self.deterministic)
        return np.asarray(act).reshape(obs.shape[0])

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "algo": type(self.model).__name__}


class _LegacyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in LEGACY_CLASS_PATHS:
            return NormalizedObsExtractor
        return super().find_class(module, name)


def saved_policy_kwargs(path: Path) -> Optional[dict[str, Any]]:
    """The ``policy_kwargs`` a saved zip records, old extractor class paths resolved; None when absent."""
    with zipfile.ZipFile(path) as zf:
        data = json.loads(zf.read("data").decode("utf-8"))
    pk = data.get("policy_kwargs")
    if isinstance(pk, dict) and ":serialized:" in pk:
        return _LegacyUnpickler(io.BytesIO(base64.b64decode(pk[":serialized:"].encode()))).load()
    return pk


def load_sb3_policy(path: str, algo: Optional[str] = None, deterministic: bool = True,
                    context: Optional[PolicyContext] = None) -> SB3Policy:
    """Load a saved SB3 model zip (the algorithm is found by trying PPO, A2C, DQN unless ``algo``).

    The model must take the context's ``observation_shape`` and act in its ``Discrete(n_actions)``
    or be binary (the harness maps a binary policy onto a larger action space); the default
    context is the binary HybridLM env."""
    context = context or PolicyContext()
    p = check_sb3_zip(Path(path))
    where = f"policy model {str(p)!r}"
    import stable_baselines3 as sb3

    try:
        policy_kwargs = saved_policy_kwargs(p)
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise PolicyError(f"{where} could not be loaded as an SB3 model ({type(exc).__name__}: {first})") from None
    custom = None if policy_kwargs is None else {"policy_kwargs": policy_kwargs}
    candidates = [algo.upper()] if algo else list(SB3_ALGOS)
    last: Exception | None = None
    for name in candidates:
        cls = getattr(sb3, name, None)
        if cls is None:
            raise PolicyError(f"{where}: unknown SB3 algorithm {name!r}")
        try:
            model = cls.load(str(p), device="cpu", custom_objects=custom)
        except Exception as exc:  # wrong algorithm or corrupt file
            last = exc
            continue
        obs_shape = getattr(model.observation_space, "shape", None)
        if obs_shape != tuple(context.observation_shape):
            raise PolicyError(f"{where} expects observations of shape {obs_shape}, not {context.env_id}'s "
                              f"{tuple(context.observation_shape)}")
        n_act = getattr(model.action_space, "n", None)
        if n_act not in (context.n_actions, 2):
            raise PolicyError(f"{where} has {n_act} actions; {context.env_id} has {context.n_actions} "
                              "(a model must match it or be binary skip/send)")
        return SB3Policy(model, str(p), deterministic)
    raise PolicyError(f"{where} could not be loaded as an SB3 model ({type(last).__name__}: "
                      f"{str(last).splitlines()[0] if last and str(last) else ''})")
