"""TensorBoard callbacks of ``hlm-gym train``: the domain's own scalars next to SB3's curves.

* :class:`DomainScalarsCallback`: per rollout, the mean over the episodes that finished in it
  of the env family's ``train_metrics`` (HybridLM: ``tokens_per_s``, ``skip_rate``,
  ``transmission_rate``, ``risk``, ``error_rate``, ``energy_j_per_token``,
  ``uplink_bits_per_token``), under ``domain/``; plus ``domain/episodes`` (how many finished).
* :class:`HarnessEvalCallback`: every ``eval_freq`` timesteps, the current (deterministic)
  policy on the **validation** split through the evaluation harness
  (:func:`hlm_gym.harness.evaluation.evaluate`), means under ``eval/``; keeps the best
  checkpoint by validation ``reward_per_step`` (the environment's own objective at the run's
  risk weight). The env family's reference policy (HybridLM: the analytic U-HLM threshold
  ``uhlm``, fitted on the training traces) is evaluated once on the same validation episodes at
  the start and logged at every evaluation step under ``reference/<spec>/`` so it draws as a
  flat line beside ``eval/``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from hlm_gym.errors import HLMGymError
from hlm_gym.harness.evaluation import evaluate, make_eval_env
from hlm_gym.harness.family import EnvSettings
from hlm_gym.policies.sb3_model import SB3Policy

__all__ = ["DomainScalarsCallback", "HarnessEvalCallback"]


class DomainScalarsCallback(BaseCallback):
    """Domain scalars per rollout under ``domain/`` (mean over the episodes finished in the rollout)."""

    def __init__(self, keys: Sequence[str], prefix: str = "domain") -> None:
        super().__init__()
        self.keys = tuple(keys)
        self.prefix = prefix
        self._buf: dict[str, list[float]] = {k: [] for k in self.keys}
        self._episodes = 0

    def _on_rollout_start(self) -> None:
        self._buf = {k: [] for k in self.keys}
        self._episodes = 0

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", ()):
            if "episode" not in info:
                continue
            self._episodes += 1
            for k in self.keys:
                v = info.get(k)
                if v is not None and math.isfinite(v):
                    self._buf[k].append(float(v))
        return True

    def _on_rollout_end(self) -> None:
        self.logger.record(f"{self.prefix}/episodes", self._episodes)
        for k, vals in self._buf.items():
            if vals:
                self.logger.record(f"{self.prefix}/{k}", float(np.mean(vals)))


def _means(result: Any) -> dict[str, float]:
    return {k: float(v["mean"]) for k, v in result.summary.items()}


class HarnessEvalCallback(BaseCallback):
    """Periodic validation through the evaluation harness, best checkpoint, reference lines.

    ``env_id``/``settings``: the run's environment (validated on its ``validation`` split);
    ``keys``: the metrics logged under ``eval/`` (plus ``reward_per_step``); ``reference``: the
    spec drawn as a reference line (``None``: none); ``save(model, path, vecnorm) -> path``
    writes the best checkpoint."""

    def __init__(self, env_id: str, settings: EnvSettings, out: Path, eval_freq: int, keys: Sequence[str],
                 vecnorm: Any = None, episodes: int = 64, seed: int = 0, save: Optional[Callable] = None,
                 reference: Optional[str] = None, num_envs: int = 16) -> None:
        super().__init__()
        self.env_id = env_id
        self.settings = settings
        self.out = Path(out)
        self.eval_freq = max(int(eval_freq), 1)
        self.keys = tuple(keys) + ("reward_per_step",)
        self.vecnorm = vecnorm
        self.episodes = int(episodes)
        self.eval_seed = int(seed) + 10_000  # validation episodes: fixed, apart from training's seeds
        self.save = save
        self.reference_spec = reference
        self.num_envs = num_envs
        self._next = self.eval_freq
        self._env = None
        self.best: Optional[dict[str, float]] = None
        self.last: Optional[dict[str, float]] = None
        self.reference: Optional[dict[str, float]] = None
        self.reference_error: Optional[str] = None
        self.best_path: Optional[Path] = None
        self.history: list[dict[str, float]] = []
        self._last_eval_at = -1

    def _eval_env(self):
        """The evaluation env (validation split), made once."""
        if self._env is None:
            self._env = make_eval_env(self.settings, "validation", min(self.num_envs, self.episodes), self.env_id)
        return self._env

    def _evaluate(self, policy: Any) -> dict[str, float]:
        res = evaluate(policy, env_id=self.env_id, scenario=self.settings.scenario, split="validation",
                       episodes=self.episodes, seed=self.eval_seed, env=self._eval_env(), traces=self.settings.traces)
        return _means(res)

    def _on_training_start(self) -> None:
        if self.reference_spec:
            try:
                self.reference = self._evaluate(self.reference_spec)
            except (HLMGymError, ValueError) as exc:  # e.g. U-HLM undefined on these traces (or no training split): no line
                self.reference = None
                self.reference_error = str(exc).splitlines()[0]

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            self._next += self.eval_freq
            self._run_eval()
        return True

    def _record(self, prefix: str, metrics: Mapping[str, float]) -> None:
        for k in self.keys:
            if k in metrics:
                self.logger.record(f"{prefix}/{k}", metrics[k])

    def _run_eval(self) -> None:
        m = self._evaluate(SB3Policy(self.model, vecnorm=self.vecnorm))
        m["timesteps"] = int(self.num_timesteps)
        self.last = m
        self.history.append(m)
        self._last_eval_at = self.num_timesteps
        self._record("eval", m)
        if self.reference:
            self._record(f"reference/{self.reference_spec}", self.reference)
        if self.best is None or m.get("reward_per_step", -math.inf) > self.best.get("reward_per_step", -math.inf):
            self.best = m
            if self.save is not None:
                self.best_path = self.save(self.model, self.out / "best_model.zip", self.vecnorm)
        self.logger.record("eval/best_reward_per_step", self.best.get("reward_per_step", math.nan))
        self.logger.dump(self.num_timesteps)

    def final_evaluation(self) -> None:
        """Evaluate the final model unless the last periodic evaluation was at the last step."""
        if self._last_eval_at != self.num_timesteps:
            self._run_eval()

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
