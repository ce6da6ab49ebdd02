"""What every command line of the toolkit shares: checked number types for argparse (a typo or a
NaN fails at parse time with a short message), a help formatter that shows defaults, and the
one-line error convention (exit code 2)."""
from __future__ import annotations

import argparse
import math
import sys


def _num(text: str, cast, what: str):
    try:
        v = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if isinstance(v, float) and not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def positive_int(text: str) -> int:
    v = _num(text, int, "an integer")
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def nonneg_int(text: str) -> int:
    v = _num(text, int, "an integer")
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def finite_float(text: str) -> float:
    return _num(text, float, "a number")


def positive_float(text: str) -> float:
    v = finite_float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


def nonneg_float(text: str) -> float:
    v = finite_float(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def unit_float(text: str) -> float:
    """A number in (0, 1)."""
    v = finite_float(text)
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {v}")
    return v


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows every flag's default, unless the help text already says it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is argparse.SUPPRESS or "default" in text \
                or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return text
        return super()._get_help_string(action)


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)


def fail(message: object) -> int:
    """Print a one-line error (the message says what to do) and return exit code 2."""
    text = " ".join(str(message).split()) if "\n" not in str(message).strip() else str(message).strip()
    print(f"error: {text}", file=sys.stderr)
    return 2
