"""The ``hlm-gym`` command line: one entry point, one error handler, one module per command.

Each command lives in ``hlm_gym.cli.<command>`` and exposes ``register(subparsers)``, which adds
its parser(s) with ``set_defaults(func=...)``; heavy libraries (torch, transformers, gymnasium,
Stable-Baselines3, scipy, matplotlib) are imported only inside the command functions, so
``hlm-gym --help`` starts fast. An error a user can cause (:class:`hlm_gym.errors.HLMGymError`)
prints one line, ``hlm-gym: error: <message>``, and exits 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from hlm_gym import __version__
from hlm_gym.cli import compare, evaluate, generate, moe, slm, traces, train
from hlm_gym.cli.argtypes import one_line_errors
from hlm_gym.errors import HLMGymError

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

#: The command modules, in the order ``--help`` lists their commands.
COMMAND_MODULES = (generate, traces, slm, moe, evaluate, train, compare)

def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every command's sub-parser (imports no heavy library)."""
    parser = argparse.ArgumentParser(prog="hlm-gym", description="Hybrid small/large language-model inference "
                                     "over a wireless link: environments, policies, traces and models.")
    parser.add_argument("--version", action="version", version=f"hlm-gym {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMAND_MODULES:
        module.register(sub)
    _one_line_everywhere(parser)
    return parser


def _one_line_everywhere(parser: argparse.ArgumentParser) -> None:
    """Usage errors of ``parser`` and of every sub-parser below it are one-line errors (exit 2)."""
    one_line_errors(parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                _one_line_everywhere(child)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hlm-gym`` console script: parse, run the command, report errors."""
    try:
        args: Any = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("hlm-gym: interrupted", file=sys.stderr)
        return 130
    except HLMGymError as exc:
        print(f"hlm-gym: error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
