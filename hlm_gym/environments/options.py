"""Validation of environment options, shared by every env family.

Each helper returns the normalised value or raises :class:`EnvConfigError` with one line that
names the option, the value given and what is allowed.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from hlm_gym.errors import HLMGymError

__all__ = ["EnvConfigError", "UnknownOptionError", "bad_option", "real", "integer", "integers", "choice", "per_env"]


class EnvConfigError(HLMGymError, ValueError):
    """An environment option has a bad value."""


class UnknownOptionError(EnvConfigError, TypeError):
    """An environment was given an option it does not have."""


def bad_option(name: str, value: Any, what: str) -> EnvConfigError:
    """The one-line error of option ``name`` with ``value``: ``what`` says what is allowed."""
    return EnvConfigError(f"bad option {name}={value!r}: {what}")


def choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of ``allowed``."""
    if value not in allowed:
        raise bad_option(name, value, f"expected one of {', '.join(map(repr, allowed))}")
    return value


def real(name: str, value: Any, lo: float = -math.inf, hi: float = math.inf, open_lo: bool = False,
         what: Optional[str] = None) -> float:
    """``value`` as a finite float in ``[lo, hi]`` (``(lo, hi]`` if ``open_lo``); numpy numbers accepted,
    bools and non-numbers refused with an :class:`EnvConfigError` naming the option."""
    if what is None:
        what = f"a finite number {'>' if open_lo else '>='} {lo:g}" + (f" and <= {hi:g}" if hi < math.inf else "")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise bad_option(name, value, f"expected {what}")
    v = float(value)
    if not math.isfinite(v) or v < lo or v > hi or (open_lo and v == lo):
        raise bad_option(name, value, f"expected {what}")
    return v


def integer(name: str, value: Any, lo: int = 0) -> int:
    """``value`` as an int ``>= lo`` (numpy integers accepted; bools, floats and text refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or int(value) < lo:
        raise bad_option(name, value, f"expected an integer >= {lo}")
    return int(value)


def integers(name: str, values: Any, lo: int = 0) -> tuple[int, ...]:
    """A non-empty sequence of integers ``>= lo`` as a tuple."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise bad_option(name, values, f"expected a non-empty sequence of integers >= {lo}")
    out = tuple(values)
    if not out:
        raise bad_option(name, values, f"expected a non-empty sequence of integers >= {lo}")
    for v in out:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or int(v) < lo:
            raise bad_option(name, values, f"expected a non-empty sequence of integers >= {lo}; {v!r} is not")
    return tuple(int(v) for v in out)


def per_env(name: str, values: Any, n: int, default: float, lo: float, hi: float) -> np.ndarray:
    """``values`` as ``n`` finite floats in ``[lo, hi]`` (``None``: ``default`` for every env)."""
    if values is None:
        return np.full(n, default)
    arr = np.asarray(values, dtype=object).reshape(-1)
    if arr.size != n:
        raise EnvConfigError(f"bad option {name}: expected {n} values (one per env), got {arr.size}")
    return np.array([real(name, v, lo=lo, hi=hi) for v in arr], dtype=np.float64)
