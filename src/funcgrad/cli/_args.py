"""Argument types and choices shared by the ``funcgrad`` subcommands (no JAX here).

Every type names its flag in the error, in the core dialect: ``--lr must be > 0; got -1``.
The choice lists are plain names, so ``--help`` never imports the modules that define
them; ``tests/test_startup.py`` checks they agree with :mod:`funcgrad.nn`.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = [
    "ACTIVATIONS",
    "EXAMPLES",
    "INITIALIZERS",
    "SEED_MAX",
    "finite_float",
    "momentum_float",
    "positive_float",
    "positive_int",
    "seed_int",
]

#: Names of :data:`funcgrad.nn.ACTIVATIONS`.
ACTIVATIONS = ("leaky_relu", "relu", "sigmoid", "softplus", "tanh")
#: Names of :data:`funcgrad.nn.INITIALIZERS`.
INITIALIZERS = ("glorot", "he", "normal")
#: The lesson's worked examples that ``funcgrad explain`` draws.
EXAMPLES = ("backprop", "graph", "pytorch", "chain")
#: Largest seed a JAX PRNG key holds without wrapping (uint32).
SEED_MAX = 2**32 - 1


def _number(flag: str, text: str, kind: type) -> float:
    try:
        return kind(text)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{flag} must be {noun}; got {text!r}") from None


def finite_float(flag: str) -> Callable[[str], float]:
    """argparse type: a finite float, with an error that names the flag.

    Args:
        flag: the flag, e.g. ``"--learning-rate"``.

    Returns:
        The parser.

    Examples:
        >>> finite_float("--learning-rate")("0.1")
        0.1
    """
    def parse(text: str) -> float:
        value = _number(flag, text, float)
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{flag} must be a finite number; got {text}")
        return value
    return parse


def positive_float(flag: str) -> Callable[[str], float]:
    """argparse type: a finite float > 0, with an error that names the flag.

    Args:
        flag: the flag, e.g. ``"--lr"``.

    Returns:
        The parser.

    Examples:
        >>> positive_float("--lr")("0.05")
        0.05
    """
    def parse(text: str) -> float:
        value = _number(flag, text, float)
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"{flag} must be a finite number > 0; got {text}")
        return value
    return parse


def positive_int(flag: str) -> Callable[[str], int]:
    """argparse type: an int >= 1, with an error that names the flag.

    Args:
        flag: the flag, e.g. ``"--epochs"``.

    Returns:
        The parser.

    Examples:
        >>> positive_int("--epochs")("3")
        3
    """
    def parse(text: str) -> int:
        value = _number(flag, text, int)
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} must be >= 1; got {text}")
        return value
    return parse


def seed_int(flag: str = "--seed") -> Callable[[str], int]:
    """argparse type: a seed in ``[0, 2**32 - 1]`` (larger ones would wrap silently).

    Args:
        flag: the flag.

    Returns:
        The parser.

    Examples:
        >>> seed_int()("7")
        7
    """
    def parse(text: str) -> int:
        value = _number(flag, text, int)
        if not 0 <= value <= SEED_MAX:
            raise argparse.ArgumentTypeError(f"{flag} must be in [0, {SEED_MAX}]; got {text}")
        return value
    return parse


def momentum_float(text: str) -> float:
    """argparse type for ``--momentum``: a float in ``[0, 1)``.

    Args:
        text: the command-line value.

    Returns:
        The momentum.

    Raises:
        argparse.ArgumentTypeError: naming ``--momentum``, outside ``[0, 1)``.

    Examples:
        >>> momentum_float("0.9")
        0.9
    """
    value = _number("--momentum", text, float)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"--momentum must be in [0, 1); got {text}")
    return value
