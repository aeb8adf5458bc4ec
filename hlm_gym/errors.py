"""The package's error base class: every error a user can cause by bad input derives from it.

Each layer has its own subclass (``ScenarioError``, ``TraceError``, ``EnvConfigError``,
``PolicyError``, ``TrainingError``, ...), also a ``ValueError`` where it reports a bad value.
The command line prints any :class:`HLMGymError` as one line and exits with status 2.
"""

from __future__ import annotations


class HLMGymError(Exception):
    """Base class of hlm-gym's user-facing errors (one-line message naming the culprit)."""
