"""Policy spec strings -> policies, through one table of spec kinds.

A spec is ``kind[:argument]`` (``threshold:0.3``, ``ltt:delta=0.1``, ``ppo:run/best_model.zip``).
Each :class:`~hlm_gym.policies.kind.PolicyKind` of the table parses its argument into typed
arguments and builds its policy from them and a :class:`~hlm_gym.policies.context.PolicyContext`:

* :func:`validate_spec`: the :class:`~hlm_gym.policies.kind.ParsedSpec`,
  with nothing fitted, calibrated or loaded;
* :func:`make_policy`: parse + build for a context (the harness passes the environment's);
* :func:`make_draft_policy`: a policy for the live decoder (``draft -> bool send``).

Every error is a :class:`~hlm_gym.policies.base.PolicyError` (a ``ValueError``) of one line
naming the spec and the valid forms.

The table: :data:`REGISTRY`, made of each env family's kinds (the HybridLM rules of
:mod:`hlm_gym.policies.hybrid_lm_kinds`, plus the SB3 model kind that serves every env). A new
env family writes its kinds beside them (each names the env ids it applies to) and adds its
tuple to :data:`KINDS`; a program that wants extra kinds of its own builds
``REGISTRY.extended(more_kinds)`` (registries are immutable).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Iterable, Mapping, Optional

from hlm_gym.policies.base import Policy, PolicyError, as_draft_policy, on_action_space
from hlm_gym.policies.context import PolicyContext
from hlm_gym.policies.hybrid_lm_kinds import HYBRID_LM_KINDS
from hlm_gym.policies.kind import ParsedSpec, PolicyKind, SpecArgumentError
from hlm_gym.policies.sb3_kind import SB3_KIND
from hlm_gym.policies.wdmoe_kinds import WDMOE_KINDS

__all__ = ["PolicyRegistry", "REGISTRY", "KINDS", "validate_spec", "make_policy", "make_draft_policy",
           "valid_forms"]


class PolicyRegistry:
    """An immutable table ``kind -> PolicyKind`` (aliases resolved) that parses and builds specs."""

    def __init__(self, kinds: Iterable[PolicyKind]) -> None:
        table: dict[str, PolicyKind] = {}
        aliases: dict[str, str] = {}
        for kind in kinds:
            for name in (kind.name, *kind.aliases):
                if name in table or name in aliases:
                    raise ValueError(f"policy kind {name!r} registered twice")
            table[kind.name] = kind
            aliases.update({a: kind.name for a in kind.aliases})
        self._kinds: Mapping[str, PolicyKind] = MappingProxyType(table)
        self._aliases: Mapping[str, str] = MappingProxyType(aliases)

    @property
    def kinds(self) -> tuple[PolicyKind, ...]:
        """The kinds, in registration order."""
        return tuple(self._kinds.values())

    def extended(self, kinds: Iterable[PolicyKind]) -> "PolicyRegistry":
        """A new registry with ``kinds`` after this one's."""
        return PolicyRegistry((*self.kinds, *kinds))

    def valid_forms(self, env_id: Optional[str] = None) -> str:
        """The forms of the kinds (those that apply to ``env_id`` when given), comma-separated."""
        return ", ".join(k.form for k in self.kinds if env_id is None or not k.env_ids or env_id in k.env_ids)

    def _error(self, spec: Any, why: str, env_id: Optional[str] = None) -> PolicyError:
        return PolicyError(f"bad policy {str(spec)!r}: {why}; valid forms: {self.valid_forms(env_id)}")

    def parse(self, spec: str) -> ParsedSpec:
        """The parsed spec (kind de-aliased, arguments typed); nothing is built or loaded."""
        if not isinstance(spec, str) or not spec.strip():
            raise self._error(spec, "empty spec")
        name, _, arg = spec.strip().partition(":")
        name = name.strip().lower()
        name = self._aliases.get(name, name)
        kind = self._kinds.get(name)
        if kind is None:
            raise self._error(spec, "unknown policy")
        try:
            return ParsedSpec(spec.strip(), name, kind.parse(arg.strip()))
        except SpecArgumentError as exc:
            raise self._error(spec, str(exc)) from None

    def build(self, spec: str | ParsedSpec, context: Optional[PolicyContext] = None) -> Policy:
        """The policy of ``spec`` for ``context``'s environment (default: the binary HybridLM env),
        acting in its action space (a binary rule's SEND becomes ``context.send_action``)."""
        context = context or PolicyContext()
        parsed = spec if isinstance(spec, ParsedSpec) else self.parse(spec)
        kind = self._kinds[parsed.kind]
        if kind.env_ids and context.env_id not in kind.env_ids:
            raise self._error(parsed.text, f"{kind.name} does not apply to {context.env_id}", context.env_id)
        try:
            policy = kind.build(parsed, context)
        except SpecArgumentError as exc:
            raise self._error(parsed.text, str(exc), context.env_id) from None
        return on_action_space(policy, context.n_actions, context.send_action)


#: Every env family's policy kinds (a new family adds its tuple here).
KINDS: tuple[PolicyKind, ...] = (*HYBRID_LM_KINDS, *WDMOE_KINDS, SB3_KIND)
#: The registry the harness, the CLI and :func:`make_policy` use.
REGISTRY = PolicyRegistry(KINDS)


def valid_forms(env_id: Optional[str] = None) -> str:
    """The valid spec forms (for ``env_id`` when given)."""
    return REGISTRY.valid_forms(env_id)


def validate_spec(spec: str) -> ParsedSpec:
    """Check a spec's syntax and ranges (and that a model file is an SB3 zip) without fitting,
    calibrating or loading anything; returns the parsed spec, raises :class:`PolicyError`."""
    return REGISTRY.parse(spec)


def make_policy(spec: str | ParsedSpec, context: Optional[PolicyContext] = None) -> Policy:
    """Build the policy of a spec string for ``context`` (see :class:`PolicyContext`)."""
    return REGISTRY.build(spec, context)


def make_draft_policy(spec: str, *, max_tokens: int, channel: Any = None,
                      context: Optional[PolicyContext] = None):
    """A live-decoder policy (``draft -> bool send``) from a spec string: :func:`make_policy`
    for the binary env (``context`` with ``max_tokens`` set) wrapped by
    :func:`~hlm_gym.policies.base.as_draft_policy` (``hlm-gym generate --policy``).
    Build a new one per response (it tracks ``skip_frac``)."""
    ctx = (context or PolicyContext()).replace(max_tokens=max_tokens)
    return as_draft_policy(make_policy(spec, ctx), max_tokens=max_tokens, channel=channel)
