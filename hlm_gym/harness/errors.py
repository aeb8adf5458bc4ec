"""The harness's user-facing errors (one-line messages; all :class:`~hlm_gym.errors.HLMGymError`)."""

from __future__ import annotations

from hlm_gym.errors import HLMGymError

__all__ = ["HarnessError", "EvaluationError", "TrainingError", "UnknownEnvError"]


class HarnessError(HLMGymError, ValueError):
    """Bad settings of an evaluation, training run or comparison."""


class EvaluationError(HarnessError):
    """Bad evaluation settings."""


class TrainingError(HarnessError):
    """Bad training settings or hyperparameter file."""


class UnknownEnvError(HarnessError):
    """An env id no env family of the harness declares."""
