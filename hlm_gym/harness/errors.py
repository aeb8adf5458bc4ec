"""The harness's user-facing errors (one-line messages; all :class:`~hlm_gym.errors.HLMGymError`).

A bad value (a flag, a hyperparameter, a sweep) is a :class:`HarnessError` (also a ``ValueError``)
and is raised before any training, evaluation or writing; a run folder held by another run is a
:class:`RunFolderBusyError`.
"""

from __future__ import annotations

from hlm_gym.errors import HLMGymError

__all__ = ["HarnessError", "EvaluationError", "TrainingError", "UnknownEnvError", "HyperparameterError",
           "CompareError", "DeviceError", "OutputPathError", "RunFolderBusyError"]


class HarnessError(HLMGymError, ValueError):
    """Bad settings of an evaluation, training run or comparison."""


class EvaluationError(HarnessError):
    """Bad evaluation settings."""


class TrainingError(HarnessError):
    """Bad training settings or hyperparameter file."""


class HyperparameterError(TrainingError):
    """A hyperparameter (``--hp KEY=VALUE`` or an ``agents/*.yml`` entry) of the wrong type or range."""


class CompareError(HarnessError):
    """Bad comparison settings (an empty sweep, a sweep value out of range, an unknown scenario)."""


class UnknownEnvError(HarnessError):
    """An env id no env family of the harness declares."""


class DeviceError(HarnessError):
    """A ``--device`` torch cannot use (unknown name, CUDA asked for but absent)."""


class OutputPathError(HarnessError):
    """An output folder that is a file, cannot be created or is not writable."""


class RunFolderBusyError(HLMGymError):
    """A run or comparison folder another live process is writing into (its lock is held)."""
