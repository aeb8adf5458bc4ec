"""Arguments shared by the ``hlm-gym`` sub-commands: types that reject bad values in one line,
and the options several commands take (``--env``, ``--risk-weight``, ``--threads``, ``--hp``).

Nothing heavy is imported here (the env ids are plain strings), so ``hlm-gym --help`` stays fast.
"""

from __future__ import annotations

import argparse
from typing import Any

from hlm_gym.environments.registration import DEFAULT_ENV_ID, ENV_IDS

__all__ = ["positive_int", "nonneg_float", "unit_float", "float_list", "str_list", "hyper_override",
           "add_env_argument", "add_risk_weight_argument", "add_threads_argument", "apply_threads"]


def positive_int(text: str) -> int:
    """A positive integer; scientific notation of an integer (``1e5``) is accepted."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if not value.is_integer() or value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(value)


def nonneg_float(text: str) -> float:
    """A number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def unit_float(text: str) -> float:
    """A number in [0, 1] (a probability)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value}")
    return value


def float_list(text: str) -> list[float]:
    """Comma-separated numbers; ``none`` for an empty list."""
    if text.strip().lower() == "none":
        return []
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def str_list(text: str) -> list[str]:
    """Comma-separated names."""
    return [x.strip() for x in text.split(",") if x.strip()]


def hyper_override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as YAML (``--hp n_steps=64``)."""
    import yaml

    key, eq, val = text.partition("=")
    if not eq or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), yaml.safe_load(val)


def add_env_argument(p: argparse.ArgumentParser) -> None:
    """``--env ENV_ID`` (the command checks it against the env families the harness knows)."""
    p.add_argument("--env", dest="env_id", default=DEFAULT_ENV_ID, metavar="ENV_ID",
                   help=f"environment id: {', '.join(ENV_IDS)} (default %(default)s)")


def add_risk_weight_argument(p: argparse.ArgumentParser, what: str = "risk weight lambda of the reward") -> None:
    """``--risk-weight L`` (old spelling ``--lambda`` still accepted, not shown)."""
    p.add_argument("--risk-weight", dest="risk_weight", type=nonneg_float, default=None, metavar="L",
                   help=f"{what} (default: the environment's)")
    p.add_argument("--lambda", dest="risk_weight", type=nonneg_float, default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)


def add_threads_argument(p: argparse.ArgumentParser) -> None:
    """``--threads N``: torch CPU threads."""
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def apply_threads(n: int) -> None:
    """Set torch's CPU threads when ``n > 0`` (imports torch)."""
    if n and n > 0:
        import torch

        torch.set_num_threads(n)
