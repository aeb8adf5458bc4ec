"""TensorBoard callbacks of ``hlm-gym train``: the domain's own scalars next to SB3's curves.

* :class:`DomainScalarsCallback`: per rollout, the mean over the episodes that finished in it
  of ``tokens_per_s``, ``skip_rate``, ``transmission_rate``, ``risk``, ``error_rate``,
  ``energy_j_per_token`` (and ``uplink_bits_per_token``), under ``domain/``; plus
  ``domain/episodes`` (how many finished).
* :class:`HarnessEvalCallback`: every ``eval_freq`` timesteps, the current (deterministic)
  policy on the **validation** split through the evaluation harness
  (:func:`hlm_gym.harness.evaluation.evaluate`), means under ``eval/``; keeps the best checkpoint by
  validation ``reward_per_step`` (the environment's own objective at the run's lambda). The
  analytic U-HLM threshold (``uhlm``, fitted on the training traces) is evaluated once on the
  same validation episodes at the start and logged at every evaluation step under
  ``reference/uhlm/`` so it draws as a flat line beside ``eval/``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

__all__ = ["DOMAIN_KEYS", "EVAL_KEYS", "DomainScalarsCallback", "HarnessEvalCallback"]

DOMAIN_KEYS = ("tokens_per_s", "skip_rate", "transmission_rate", "risk", "error_rate", "energy_j_per_token",
               "uplink_bits_per_token")
EVAL_KEYS = DOMAIN_KEYS + ("reward_per_step",)


class DomainScalarsCallback(BaseCallback):
    """Domain scalars per rollout under ``domain/`` (mean over the episodes finished in the rollout)."""

    def __init__(self, prefix: str = "domain") -> None:
        super().__init__()
        self.prefix = prefix
        self._buf: dict[str, list[float]] = {k: [] for k in DOMAIN_KEYS}

    def _on_rollout_start(self) -> None:
        self._buf = {k: [] for k in DOMAIN_KEYS}

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", ()):
            if "episode" not in info:
                continue
            for k in DOMAIN_KEYS:
                v = info.get(k)
                if v is not None and math.isfinite(v):
                    self._buf[k].append(float(v))
        return True

    def _on_rollout_end(self) -> None:
        n = len(self._buf["tokens_per_s"])
        self.logger.record(f"{self.prefix}/episodes", n)
        for k, vals in self._buf.items():
            if vals:
                self.logger.record(f"{self.prefix}/{k}", float(np.mean(vals)))


def _means(result: Any) -> dict[str, float]:
    return {k: float(v["mean"]) for k, v in result.summary.items()}


class HarnessEvalCallback(BaseCallback):
    """Periodic validation through the evaluation harness, best checkpoint, U-HLM reference lines."""

    def __init__(self, config: Any, out: Path, eval_freq: int, vecnorm: Any = None, episodes: int = 64,
                 seed: int = 0, save: Optional[Callable] = None, num_envs: int = 16) -> None:
        super().__init__()
        self.config = config
        self.out = Path(out)
        self.eval_freq = max(int(eval_freq), 1)
        self.vecnorm = vecnorm
        self.episodes = int(episodes)
        self.eval_seed = int(seed) + 10_000  # validation episodes: fixed, apart from training's seeds
        self.save = save
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

    # the evaluation env (validation split), made once
    def _eval_env(self):
        if self._env is None:
            from hlm_gym.harness.evaluation import make_eval_env
            from hlm_gym.harness.training import env_kwargs_for

            kw = env_kwargs_for(self.config, "validation")
            kw.pop("scenario"), kw.pop("split")
            n = min(self.num_envs, self.episodes)
            self._env = make_eval_env(self.config.scenario, "validation", None, n, None, kw)
        return self._env

    def _evaluate(self, policy: Any) -> dict[str, float]:
        from hlm_gym.harness.evaluation import evaluate

        ctx = {"traces": self.config.traces}
        res = evaluate(policy, scenario=self.config.scenario, split="validation", episodes=self.episodes,
                       seed=self.eval_seed, env=self._eval_env(), policy_context=ctx)
        return _means(res)

    def _on_training_start(self) -> None:
        if getattr(self.config, "reference", True):
            try:
                self.reference = self._evaluate("uhlm")
            except ValueError as exc:  # U-HLM undefined on these traces (or no training split): no line
                self.reference = None
                self.reference_error = str(exc).splitlines()[0]

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            self._next += self.eval_freq
            self._run_eval()
        return True

    def _run_eval(self) -> None:
        from hlm_gym.policies.sb3_model import SB3Policy

        m = self._evaluate(SB3Policy(self.model, vecnorm=self.vecnorm))
        m["timesteps"] = int(self.num_timesteps)
        self.last = m
        self.history.append(m)
        self._last_eval_at = self.num_timesteps
        for k in EVAL_KEYS:
            if k in m:
                self.logger.record(f"eval/{k}", m[k])
        if self.reference:
            for k in EVAL_KEYS:
                if k in self.reference:
                    self.logger.record(f"reference/uhlm/{k}", self.reference[k])
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

    def _on_training_end(self) -> None:
        pass

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
