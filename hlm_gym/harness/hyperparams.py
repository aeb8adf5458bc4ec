"""Hyperparameters of ``hlm-gym train``: rl-zoo style YAML files (``agents/<algo>.yml``) and
``--hp KEY=VALUE`` overrides, each key checked for its type and range when it is read.

Every key an algorithm takes has a :class:`Rule` (:data:`RULES`): ``batch_size``, ``n_steps``
and ``n_epochs`` are positive integers, ``gamma`` and ``gae_lambda`` lie in (0, 1],
``learning_rate`` is > 0 (or a zoo schedule ``lin_<number>``), ... A bad key or value is a
:class:`~hlm_gym.harness.errors.HyperparameterError` naming where it came from (the file and
env id, or ``--hp``), the key, the value and what is allowed, raised before anything is built.
Numbers given as text (``--hp learning_rate=3e-4``, which YAML reads as a string) are accepted
and converted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from hlm_gym.harness.errors import HyperparameterError, TrainingError

__all__ = ["ALGOS", "ZOO_KEYS", "ALGO_KEYS", "RULES", "Rule", "load_hyperparams", "check_hyperparams", "check_keys",
           "split_hyperparams"]

ALGOS = ("ppo", "a2c", "dqn")


class _Bad(Exception):
    """A value outside its rule (internal; the message says what is allowed)."""


@dataclass(frozen=True)
class Rule:
    """How one hyperparameter is checked: ``check(value)`` returns the value (numbers given as
    text converted) or raises ``_Bad``; ``allowed`` says what is accepted, for the message."""

    allowed: str
    check: Callable[[Any], Any]


def _as_number(value: Any) -> Optional[float]:
    """``value`` as a float (numbers and numeric text; not booleans); None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    try:  # numpy scalars
        import numpy as np

        if isinstance(value, np.number):
            return float(value)
    except ImportError:  # pragma: no cover
        pass
    return None


def _interval(lo: Optional[float], hi: Optional[float], lo_open: bool, hi_open: bool) -> str:
    """``a number in (0, 1]``, ``a number > 0``, ``a number >= 0`` ..."""
    if lo is not None and hi is not None:
        return f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"a number {'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"a number {'<' if hi_open else '<='} {hi:g}"
    return "a finite number"


def number(lo: Optional[float] = None, hi: Optional[float] = None, lo_open: bool = False,
           hi_open: bool = False) -> Rule:
    """A finite number in the given interval."""
    allowed = _interval(lo, hi, lo_open, hi_open)

    def check(value: Any) -> float:
        x = _as_number(value)
        if x is None or not math.isfinite(x):
            raise _Bad(allowed)
        if lo is not None and (x < lo or (lo_open and x == lo)):
            raise _Bad(allowed)
        if hi is not None and (x > hi or (hi_open and x == hi)):
            raise _Bad(allowed)
        return x

    return Rule(allowed, check)


def integer(lo: int, also: tuple[int, ...] = ()) -> Rule:
    """An integer >= ``lo`` (or one of ``also``, e.g. SB3's -1 for "as many as collected")."""
    allowed = f"an integer >= {lo}" + "".join(f" or {a}" for a in also)

    def check(value: Any) -> int:
        x = _as_number(value)
        if x is None or not math.isfinite(x) or not x.is_integer() or (x < lo and int(x) not in also):
            raise _Bad(allowed)
        return int(x)

    return Rule(allowed, check)


def boolean() -> Rule:
    """true or false."""

    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise _Bad("true or false")
        return value

    return Rule("true or false", check)


def optional(rule: Rule) -> Rule:
    """``rule`` or null."""

    allowed = f"{rule.allowed} or null"

    def check(value: Any) -> Any:
        try:
            return None if value is None else rule.check(value)
        except _Bad:
            raise _Bad(allowed) from None

    return Rule(allowed, check)


def schedule(rule: Rule) -> Rule:
    """``rule``'s number, or a zoo linear schedule ``lin_<number>`` starting at one."""

    allowed = f"{rule.allowed} (or lin_<such a number>)"

    def check(value: Any) -> Any:
        try:
            if isinstance(value, str) and value.strip().startswith("lin_"):
                rule.check(value.strip()[4:])
                return value.strip()
            return rule.check(value)
        except _Bad:
            raise _Bad(allowed) from None

    return Rule(allowed, check)


def only(value: Any, why: str) -> Rule:
    """Exactly ``value`` (``why``: the reason, for the message)."""
    allowed = f"{str(value).lower() if isinstance(value, bool) else value} ({why})"

    def check(v: Any) -> Any:
        if v != value or type(v) is not type(value):
            raise _Bad(allowed)
        return v

    return Rule(allowed, check)


def _eval_expr(text: Any, what: str) -> Any:
    """zoo's string-valued settings (``"dict(net_arch=[64, 64])"``) in a small namespace."""
    if not isinstance(text, str):
        return text
    import torch

    try:
        return eval(text, {"__builtins__": {}}, {"dict": dict, "nn": torch.nn, "list": list, "True": True,
                                                 "False": False, "None": None})
    except Exception as exc:  # noqa: BLE001 - user text
        raise _Bad(f"a Python expression such as dict(...) ({type(exc).__name__}: {exc})") from None


def _layers(value: Any) -> bool:
    """A list of positive layer widths."""
    return isinstance(value, (list, tuple)) and all(isinstance(w, int) and not isinstance(w, bool) and w >= 1
                                                    for w in value)


def _policy_kwargs(separate_heads: bool) -> Rule:
    """``dict(...)`` (text or a mapping) whose ``net_arch``, if given, is a list of positive widths
    (or, for actor-critic algorithms, ``dict(pi=[...], vf=[...])``)."""
    allowed = ("dict(...) with net_arch a list of positive layer widths"
               + (" or dict(pi=[...], vf=[...])" if separate_heads else ""))

    def check(value: Any) -> Any:
        kwargs = _eval_expr(value, "policy_kwargs")
        if not isinstance(kwargs, dict):
            raise _Bad(allowed)
        arch = kwargs.get("net_arch")
        if arch is not None and not _layers(arch):
            heads_ok = separate_heads and isinstance(arch, dict) and set(arch) <= {"pi", "vf"} and all(
                _layers(v) for v in arch.values())
            if not heads_ok:
                raise _Bad(allowed)
        return value

    return Rule(allowed, check)


_NORMALIZE_RULES = {"norm_obs": boolean(), "norm_reward": boolean(), "clip_obs": number(0, lo_open=True),
                    "clip_reward": number(0, lo_open=True), "gamma": number(0, 1, lo_open=True),
                    "epsilon": number(0, lo_open=True)}


def _normalize() -> Rule:
    """true/false, or ``dict(...)`` of VecNormalize's options."""
    allowed = f"true, false or dict(...) of {', '.join(_NORMALIZE_RULES)}"

    def check(value: Any) -> Any:
        if isinstance(value, bool):
            return value
        kwargs = _eval_expr(value, "normalize")
        if not isinstance(kwargs, dict) or not set(kwargs) <= set(_NORMALIZE_RULES):
            raise _Bad(allowed)
        for key, v in kwargs.items():
            try:
                _NORMALIZE_RULES[key].check(v)
            except _Bad as bad:
                raise _Bad(f"{key} = {bad}") from None
        return value

    return Rule(allowed, check)


def _train_freq() -> Rule:
    """DQN's ``train_freq``: a positive integer or ``[n, step|episode]``."""
    allowed = "an integer >= 1 or [n, step] / [n, episode]"
    positive = integer(1)

    def check(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            if len(value) != 2 or value[1] not in ("step", "episode"):
                raise _Bad(allowed)
            try:
                return [positive.check(value[0]), value[1]]
            except _Bad:
                raise _Bad(allowed) from None
        try:
            return positive.check(value)
        except _Bad:
            raise _Bad(allowed) from None

    return Rule(allowed, check)


_UNIT = number(0, 1, lo_open=True)  # (0, 1]
_PROB = number(0, 1)  # [0, 1]
_POSITIVE = number(0, lo_open=True)
_NONNEG = number(0)
_NO_SDE = only(False, "gSDE needs continuous actions; hlm-gym's are discrete")

#: Keys a zoo YAML may hold besides the algorithm's constructor arguments (zoo pops these).
ZOO_RULES: dict[str, Rule] = {"n_envs": integer(1), "n_timesteps": integer(1),
                              "policy": only("MlpPolicy", "the observation is a flat vector"),
                              "normalize": _normalize()}
_COMMON: dict[str, Rule] = {"learning_rate": schedule(_POSITIVE), "gamma": _UNIT, "max_grad_norm": _POSITIVE,
                            "stats_window_size": integer(1)}
_ON_POLICY: dict[str, Rule] = {"n_steps": integer(1), "gae_lambda": _UNIT, "ent_coef": _NONNEG, "vf_coef": _NONNEG,
                               "normalize_advantage": boolean(), "use_sde": _NO_SDE, "sde_sample_freq": integer(-1)}

#: The rule of every key each algorithm accepts (zoo keys included).
RULES: dict[str, dict[str, Rule]] = {
    "ppo": ZOO_RULES | {"policy_kwargs": _policy_kwargs(True)} | _COMMON | _ON_POLICY | {
        "batch_size": integer(2), "n_epochs": integer(1), "clip_range": schedule(_UNIT),
        "clip_range_vf": optional(_POSITIVE), "target_kl": optional(_POSITIVE)},
    "a2c": ZOO_RULES | {"policy_kwargs": _policy_kwargs(True)} | _COMMON | _ON_POLICY | {
        "rms_prop_eps": _POSITIVE, "use_rms_prop": boolean()},
    "dqn": ZOO_RULES | {"policy_kwargs": _policy_kwargs(False)} | _COMMON | {
        "buffer_size": integer(1), "learning_starts": integer(0), "batch_size": integer(1), "tau": _UNIT,
        "train_freq": _train_freq(), "gradient_steps": integer(1, also=(-1,)), "target_update_interval": integer(1),
        "exploration_fraction": _PROB, "exploration_initial_eps": _PROB, "exploration_final_eps": _PROB},
}
ZOO_KEYS = tuple(ZOO_RULES) + ("policy_kwargs",)
#: Each algorithm's constructor arguments (the keys besides :data:`ZOO_KEYS`).
ALGO_KEYS: dict[str, tuple[str, ...]] = {algo: tuple(k for k in rules if k not in ZOO_KEYS)
                                         for algo, rules in RULES.items()}


def _show(value: Any) -> str:
    """A value as the user wrote it (text as is, booleans and null as YAML spells them)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return repr(value)


def check_algo(algo: Any) -> str:
    """``algo`` lower-cased, if it is one of :data:`ALGOS`."""
    name = str(algo).lower()
    if name not in ALGOS:
        raise TrainingError(f"--algo {algo!r}: unknown algorithm; choose one of {', '.join(ALGOS)}")
    return name


def check_keys(algo: str, hp: Mapping[str, Any], where: str) -> None:
    """Every key of ``hp`` is one ``algo`` takes (``where``: the file and env id, or ``--hp``)."""
    allowed = RULES[algo]
    for key in hp:
        if key not in allowed:
            raise HyperparameterError(f"{where}: unknown key {key!r} for {algo}; allowed: "
                                      f"{', '.join(sorted(allowed))}")


def check_hyperparams(algo: str, hp: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``hp`` with every key known to ``algo`` and every value of the right type and range
    (numbers given as text converted); :class:`HyperparameterError` naming ``where``, the key,
    the value and what is allowed otherwise."""
    algo = check_algo(algo)
    check_keys(algo, hp, where)
    out: dict[str, Any] = {}
    for key, value in hp.items():
        try:
            out[key] = RULES[algo][key].check(value)
        except _Bad as bad:
            raise HyperparameterError(f"{where} {key}={_show(value)}: expected {bad}") from None
    return out


def _yaml_source(algo: str, path: Optional[str]) -> tuple[str, str]:
    """``(name for messages, text)`` of the hyperparameter file (``None``: the shipped one)."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise TrainingError(f"--hyperparams {str(p)!r}: file not found")
        try:
            return str(p), p.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise TrainingError(f"--hyperparams {str(p)!r}: cannot be read ({exc})") from None
    res = resources.files("hlm_gym._agents").joinpath(f"{algo}.yml")
    if not res.is_file():
        raise TrainingError(f"no shipped hyperparameters for algo {algo!r} (agents/{algo}.yml); pass --hyperparams")
    return f"agents/{algo}.yml", res.read_text()


def load_hyperparams(algo: str, env_id: str, path: Optional[str] = None) -> dict[str, Any]:
    """The hyperparameters of ``env_id`` in an rl-zoo style YAML, checked key by key and value by value."""
    import yaml

    algo = check_algo(algo)
    where, text = _yaml_source(algo, path)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TrainingError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise TrainingError(f"{where}: expected a mapping of environment ids")
    if env_id not in doc:
        raise TrainingError(f"{where}: no entry for env id {env_id!r} (has: {', '.join(map(str, doc))})")
    hp = doc[env_id]
    if not isinstance(hp, dict):
        raise TrainingError(f"{where}: entry {env_id!r} must be a mapping")
    return check_hyperparams(algo, hp, f"{where} [{env_id}]")


def _schedule(value: Any) -> Any:
    """zoo's ``lin_3e-4`` linear schedules as functions of the remaining progress; numbers as they are."""
    if isinstance(value, str) and value.startswith("lin_"):
        start = float(value[4:])
        return lambda progress_remaining: progress_remaining * start
    return value


def split_hyperparams(algo: str, hp: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(run settings, algorithm kwargs)`` of checked hyperparameters: n_envs/n_timesteps/normalize
    apart, the rest for the constructor (``policy_kwargs`` evaluated, schedules as functions)."""
    hp = check_hyperparams(algo, hp, "hyperparameters")
    run = {"n_envs": int(hp.pop("n_envs", 1)), "n_timesteps": int(hp.pop("n_timesteps", 100_000))}
    norm = hp.pop("normalize", False)
    run["normalize"] = (_eval_expr(norm, "normalize") if isinstance(norm, str) else dict(norm)
                        if isinstance(norm, dict) else ({} if norm else None))
    kwargs = {"policy": hp.pop("policy", "MlpPolicy")}
    if "policy_kwargs" in hp:
        kwargs["policy_kwargs"] = _eval_expr(hp.pop("policy_kwargs"), "policy_kwargs")
    for key in ("learning_rate", "clip_range"):
        if key in hp:
            hp[key] = _schedule(hp[key])
    kwargs.update(hp)
    return run, kwargs
