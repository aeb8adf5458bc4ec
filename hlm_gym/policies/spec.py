"""Policy spec strings -> :class:`~hlm_gym.policies.base.Policy` objects, and SB3 models as policies.

==============================  ==============================================================
spec                            policy
==============================  ==============================================================
``always`` / ``hlm``            send every token
``never`` / ``slm``             never send
``random:R``                    Rand-HLM, skip with probability R in [0, 1] (seeded)
``threshold:U``                 send iff u > U, U in [0, 1]
``uhlm`` / ``uhlm:averse``      U-HLM risk-averse threshold -b/a fitted on the training traces
``uhlm:prone``                  U-HLM risk-prone threshold (Delta - b)/a
``bild[:A]``                    BiLD fallback, send iff top-1 probability < A (default 0.6)
``calm[:L]``                    CALM softmax response, send iff margin < lambda(t) (default 0.9)
``ltt[:delta=D,eps=E,risk=R,cal=C]``  threshold on u calibrated by Learn-then-Test on the traces'
                                split C (validation [default], train or train+validation;
                                defaults delta=0.05, eps=0.1, risk=skipped)
``channel-aware[:lambda=L,target=R]``  the channel-aware analytic rule (lambda defaults to the env's, R to 0)
``ppo:PATH`` / ``sb3:PATH``     a saved Stable-Baselines3 model (.zip), deterministic actions
==============================  ==============================================================

``make_policy(spec, **context)`` takes what some policies need from ``context``: ``max_tokens``,
``seed``/``rng`` (random), ``traces`` (trace set for the fit and calibration; ``None`` = shipped
default), ``fit`` (a ready :class:`UHLMFit`), ``scenario``, ``lambda_``, ``latency_ref``,
``vocab_size`` (channel-aware). Errors are :class:`PolicyError` (a ``ValueError``) with one line.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from hlm_gym.policies.base import OBS_DIM, Policy, PolicyError
from hlm_gym.policies.rules import AlwaysSend, BiLDFallback, CALMSoftmax, NeverSend, RandomSkip, UncertaintyThreshold

__all__ = ["make_policy", "make_draft_policy", "validate_spec", "load_sb3_policy", "SB3Policy", "VALID_FORMS", "parse_spec"]

VALID_FORMS = ("always, never, random:R, threshold:U, uhlm[:averse|prone], bild[:A], calm[:L], "
               "ltt[:delta=D,eps=E,risk=skipped|token,cal=validation|train|train+validation], channel-aware[:lambda=L,target=R,lookahead=0|1], ppo:PATH.zip")
_ALIASES = {"hlm": "always", "send": "always", "slm": "never", "slm-only": "never", "rand": "random",
            "rand-hlm": "random", "u-hlm": "uhlm", "channel": "channel-aware", "sb3": "ppo"}


def _err(spec: str, why: str) -> PolicyError:
    return PolicyError(f"bad policy {spec!r}: {why}; valid forms: {VALID_FORMS}")


def parse_spec(spec: str) -> tuple[str, str]:
    """``(kind, argument)`` of a spec string (kind lower-cased and de-aliased)."""
    if not isinstance(spec, str) or not spec.strip():
        raise _err(str(spec), "empty spec")
    kind, _, arg = spec.strip().partition(":")
    kind = kind.strip().lower()
    return _ALIASES.get(kind, kind), arg.strip()


def _number(spec: str, raw: str, what: str, unit: bool = True) -> float:
    try:
        v = float(raw)
    except ValueError:
        raise _err(spec, f"{what} must be a number, got {raw!r}") from None
    if not np.isfinite(v):
        raise _err(spec, f"{what} must be finite")
    if unit and not 0.0 <= v <= 1.0:
        raise _err(spec, f"{what} must be in [0, 1], got {v}")
    return v


def _kwargs(spec: str, raw: str, allowed: dict[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    if not raw:
        return out
    for part in raw.split(","):
        key, eq, val = part.partition("=")
        key = key.strip().lower()
        if not eq or key not in allowed:
            raise _err(spec, f"expected key=value with keys {sorted(allowed)}, got {part.strip()!r}")
        out[allowed[key]] = val.strip()
    return out


def _fit(context: dict[str, Any]) -> Any:
    if context.get("fit") is not None:
        return context["fit"]
    from hlm_gym.policies.fit import fit_from_traces

    return fit_from_traces(context.get("traces"), "train")


def make_policy(spec: str, **context: Any) -> Policy:
    """Build the policy of a spec string (see the module docstring)."""
    kind, arg = parse_spec(spec)
    max_tokens = context.get("max_tokens")
    if kind == "always" and not arg:
        return AlwaysSend()
    if kind == "never" and not arg:
        return NeverSend()
    if kind == "random":
        if not arg:
            raise _err(spec, "random needs a skip rate, e.g. random:0.3")
        return RandomSkip(_number(spec, arg, "skip rate"), rng=context.get("rng"), seed=context.get("seed"))
    if kind == "threshold":
        if not arg:
            raise _err(spec, "threshold needs a value, e.g. threshold:0.1")
        return UncertaintyThreshold(_number(spec, arg, "threshold"), label=spec)
    if kind == "uhlm":
        which = arg.lower() or "averse"
        if which not in ("averse", "prone", "risk-averse", "risk-prone"):
            raise _err(spec, f"uhlm takes averse or prone, got {arg!r}")
        fit = _fit(context)
        return UncertaintyThreshold(fit.threshold(which), fit=fit, label=f"uhlm:{which.replace('risk-', '')}")
    if kind == "bild":
        return BiLDFallback(_number(spec, arg, "alpha_FB") if arg else 0.6)
    if kind == "calm":
        lam = _number(spec, arg, "lambda") if arg else 0.9
        return CALMSoftmax(lam, max_tokens=int(max_tokens or 128))
    if kind == "ltt":
        kw = _kwargs(spec, arg, {"delta": "delta", "eps": "epsilon", "epsilon": "epsilon", "risk": "risk", "cal": "cal"})
        delta = _number(spec, kw.get("delta", "0.05"), "delta")
        eps = _number(spec, kw.get("epsilon", "0.1"), "eps")
        if not (0 < delta < 1 and 0 < eps < 1):
            raise _err(spec, "delta and eps must be in (0, 1)")
        risk = kw.get("risk", "skipped")
        if risk not in ("skipped", "token"):
            raise _err(spec, f"risk must be skipped or token, got {risk!r}")
        from hlm_gym.policies.data import trace_columns
        from hlm_gym.policies.ltt import learn_then_test

        cal_split = kw.get("cal", "validation")
        if cal_split not in ("validation", "train", "train+validation"):
            raise _err(spec, f"cal must be validation, train or train+validation, got {cal_split!r}")
        cal = context.get("calibration")
        if cal is not None:
            cols = trace_columns(cal, "validation")
        else:
            parts = [trace_columns(context.get("traces"), sp) for sp in cal_split.split("+")]
            cols = {k: np.concatenate([p[k] + (i * 10**7 if k == "prompt" else 0) for i, p in enumerate(parts)])
                    for k in ("u", "beta", "prompt")}
        res = learn_then_test(cols["u"], cols["beta"], cols["prompt"], delta=delta, epsilon=eps, risk=risk)
        pol: Policy
        if res.threshold is None:
            pol = UncertaintyThreshold(-np.inf, label=f"ltt:delta={delta},eps={eps} (no safe threshold)")
        else:
            pol = UncertaintyThreshold(res.threshold, label=f"ltt:delta={delta},eps={eps}")
        pol.ltt = res  # type: ignore[attr-defined]
        return pol
    if kind == "channel-aware":
        kw = _kwargs(spec, arg, {"lambda": "lam", "lam": "lam", "lookahead": "lookahead", "target": "target"})
        lam = _number(spec, kw["lam"], "lambda", unit=False) if "lam" in kw else context.get("lambda_")
        if lam is None or not lam > 0:
            raise _err(spec, "channel-aware needs lambda > 0 (lambda=L or the environment's)")
        scenario = context.get("scenario")
        if scenario is None:
            raise _err(spec, "channel-aware needs a scenario")
        if isinstance(scenario, str):
            from hlm_gym.wireless.scenarios import load_scenario

            scenario = load_scenario(scenario)
        latency_ref = context.get("latency_ref")
        if latency_ref is None or max_tokens is None:
            raise _err(spec, "channel-aware needs latency_ref and max_tokens from the environment")
        from hlm_gym.policies.channel_aware import ChannelAwareThreshold

        return ChannelAwareThreshold(scenario, lam=float(lam), latency_ref=float(latency_ref),
                                     max_tokens=int(max_tokens), fit=_fit(context),
                                     vocab_size=context.get("vocab_size"),
                                     lookahead=kw.get("lookahead", "0") in ("1", "true", "yes"),
                                     target=_number(spec, kw["target"], "target") if "target" in kw else 0.0)
    if kind == "ppo":
        if not arg:
            raise _err(spec, "ppo needs a model path, e.g. ppo:runs/model.zip")
        return load_sb3_policy(arg)
    raise _err(spec, "unknown policy")


def validate_spec(spec: str) -> None:
    """Check a spec's syntax and ranges (and that a model file is an SB3 zip) without fitting,
    calibrating or loading anything; raises :class:`PolicyError`."""
    kind, arg = parse_spec(spec)
    if kind in ("always", "never") and not arg:
        return
    if kind in ("random", "threshold"):
        if not arg:
            raise _err(spec, f"{kind} needs a value in [0, 1]")
        _number(spec, arg, "value")
        return
    if kind == "uhlm":
        if arg.lower() not in ("", "averse", "prone", "risk-averse", "risk-prone"):
            raise _err(spec, f"uhlm takes averse or prone, got {arg!r}")
        return
    if kind in ("bild", "calm"):
        if arg:
            _number(spec, arg, "value")
        return
    if kind == "ltt":
        kw = _kwargs(spec, arg, {"delta": "delta", "eps": "epsilon", "epsilon": "epsilon", "risk": "risk", "cal": "cal"})
        if kw.get("cal", "validation") not in ("validation", "train", "train+validation"):
            raise _err(spec, "cal must be validation, train or train+validation")
        d = _number(spec, kw.get("delta", "0.05"), "delta")
        e = _number(spec, kw.get("epsilon", "0.1"), "eps")
        if not (0 < d < 1 and 0 < e < 1):
            raise _err(spec, "delta and eps must be in (0, 1)")
        if kw.get("risk", "skipped") not in ("skipped", "token"):
            raise _err(spec, "risk must be skipped or token")
        return
    if kind == "channel-aware":
        kw = _kwargs(spec, arg, {"lambda": "lam", "lam": "lam", "lookahead": "lookahead", "target": "target"})
        if "lam" in kw and not _number(spec, kw["lam"], "lambda", unit=False) > 0:
            raise _err(spec, "lambda must be > 0")
        if "target" in kw:
            _number(spec, kw["target"], "target")
        return
    if kind == "ppo":
        if not arg:
            raise _err(spec, "ppo needs a model path, e.g. ppo:runs/model.zip")
        _check_sb3_zip(Path(arg))
        return
    raise _err(spec, "unknown policy")


def _check_sb3_zip(p: Path) -> Path:
    where = f"policy model {str(p)!r}"
    if not p.is_file():
        if p.with_suffix(".zip").is_file():
            p = p.with_suffix(".zip")
        else:
            raise PolicyError(f"{where}: file not found")
    if not zipfile.is_zipfile(p):
        raise PolicyError(f"{where} is not a Stable-Baselines3 model (not a zip archive)")
    with zipfile.ZipFile(p) as zf:
        names = set(zf.namelist())
    if "data" not in names or "policy.pth" not in names:
        raise PolicyError(f"{where} is not a Stable-Baselines3 model (no 'data'/'policy.pth' inside)")
    return p


def make_draft_policy(spec: str, *, max_tokens: int, channel: Any = None, **context: Any):
    """A live-decoder policy (``draft -> bool send``) from a spec string: :func:`make_policy`
    wrapped by :func:`hlm_gym.policies.base.as_draft_policy` (for ``hlm-gym generate --policy``).
    Build a new one per response (it tracks ``skip_frac``)."""
    from hlm_gym.policies.base import as_draft_policy

    return as_draft_policy(make_policy(spec, max_tokens=max_tokens, **context), max_tokens=max_tokens,
                           channel=channel)


class SB3Policy(Policy):
    """A Stable-Baselines3 model as a :class:`Policy` (deterministic actions by default)."""

    name = "sb3"

    def __init__(self, model: Any, path: str = "", deterministic: bool = True) -> None:
        self.model = model
        self.path = path
        self.deterministic = deterministic
        self._state: Any = None

    def reset(self, n: int = 1) -> None:
        self._state = None

    def _act(self, obs: np.ndarray) -> np.ndarray:
        act, self._state = self.model.predict(obs.astype(np.float32), state=self._state,
                                              deterministic=self.deterministic)
        return np.asarray(act).reshape(obs.shape[0])

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "algo": type(self.model).__name__}


def load_sb3_policy(path: str, algo: str | None = None, deterministic: bool = True) -> SB3Policy:
    """Load a saved SB3 model zip (PPO by default; the algorithm is read from the file when possible)."""
    p = _check_sb3_zip(Path(path))
    where = f"policy model {str(p)!r}"
    import stable_baselines3 as sb3

    candidates = [algo.upper()] if algo else ["PPO", "A2C", "DQN"]
    last: Exception | None = None
    for name in candidates:
        cls = getattr(sb3, name, None)
        if cls is None:
            raise PolicyError(f"{where}: unknown SB3 algorithm {name!r}")
        try:
            model = cls.load(str(p), device="cpu")
        except Exception as exc:  # wrong algorithm or corrupt file
            last = exc
            continue
        obs_shape = getattr(model.observation_space, "shape", None)
        if obs_shape != (OBS_DIM,):
            raise PolicyError(f"{where} expects observations of shape {obs_shape}, not the HybridLM layout ({OBS_DIM},)")
        n_act = getattr(model.action_space, "n", None)
        if n_act != 2:
            raise PolicyError(f"{where} has {n_act} actions; the policies here are binary (skip/send, HybridLM-v0)")
        return SB3Policy(model, str(p), deterministic)
    raise PolicyError(f"{where} could not be loaded as an SB3 model ({type(last).__name__}: "
                      f"{str(last).splitlines()[0] if last and str(last) else ''})")
