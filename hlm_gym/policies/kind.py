"""One row of the policy registry: a spec kind's grammar (parse) and its constructor (build).

A spec string is ``kind[:argument]``. A :class:`PolicyKind` turns the argument into typed
arguments without building anything (``parse``) and builds the policy from them and a
:class:`~hlm_gym.policies.context.PolicyContext` (``build``). Both report a bad spec by raising
:class:`SpecArgumentError` with the reason only; the registry adds the spec and the valid forms.
The helpers below parse the argument shapes the kinds share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from hlm_gym.policies.base import Policy
from hlm_gym.policies.context import PolicyContext

__all__ = ["PolicyKind", "ParsedSpec", "SpecArgumentError", "number", "key_values", "no_argument"]


class SpecArgumentError(Exception):
    """A spec's argument is malformed (the reason only; the registry makes it a PolicyError)."""


@dataclass(frozen=True)
class ParsedSpec:
    """A spec string parsed by its kind: ``text`` as given, ``kind`` (de-aliased) and the kind's typed ``args``."""

    text: str
    kind: str
    args: Any = None


@dataclass(frozen=True)
class PolicyKind:
    """A spec kind: ``form`` (as the valid-forms list shows it), ``parse(argument) -> args``,
    ``build(parsed, context) -> Policy``, ``aliases`` and the ``env_ids`` whose observations it reads
    (empty: any env, e.g. a saved model, whose spaces are checked when it is built)."""

    name: str
    form: str
    parse: Callable[[str], Any]
    build: Callable[[ParsedSpec, PolicyContext], Policy]
    env_ids: tuple[str, ...]
    aliases: tuple[str, ...] = ()


def no_argument(kind: str) -> Callable[[str], None]:
    """``parse`` of a kind that takes no argument."""

    def parse(arg: str) -> None:
        if arg:
            raise SpecArgumentError(f"{kind} takes no argument, got {arg!r}")
        return None

    return parse


def number(raw: str, what: str, unit: bool = True) -> float:
    """``raw`` as a finite float (in [0, 1] when ``unit``)."""
    try:
        v = float(raw)
    except ValueError:
        raise SpecArgumentError(f"{what} must be a number, got {raw!r}") from None
    if not np.isfinite(v):
        raise SpecArgumentError(f"{what} must be finite")
    if unit and not 0.0 <= v <= 1.0:
        raise SpecArgumentError(f"{what} must be in [0, 1], got {v}")
    return v


def key_values(raw: str, allowed: dict[str, str]) -> dict[str, str]:
    """``k1=v1,k2=v2`` with keys from ``allowed`` (alias -> canonical key) -> ``{canonical: value}``."""
    out: dict[str, str] = {}
    if not raw:
        return out
    for part in raw.split(","):
        key, eq, val = part.partition("=")
        key = key.strip().lower()
        if not eq or key not in allowed:
            raise SpecArgumentError(f"expected key=value with keys {sorted(allowed)}, got {part.strip()!r}")
        out[allowed[key]] = val.strip()
    return out
