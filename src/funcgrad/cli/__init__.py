"""The ``funcgrad`` command line: the only package that prints.

Subcommands, one module each (``add_parser(subparsers)`` builds its parser without
importing JAX; ``run(args)`` does the work and imports what it needs):
    check    run the rule checker over every registered primitive.
    explain  draw one of the lesson's worked examples as a graph with values and gradients.
    train    train an MLP on the embedded digits (or your .npz) with SGD and clipping.
    flow     measure vanishing and exploding gradients (the lesson's experiments).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import check, explain, flow, train

__all__ = ["build_parser", "console", "main"]

_COMMANDS = {"check": check, "explain": explain, "train": train, "flow": flow}


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser for the ``funcgrad`` command.

    Returns:
        The parser, one subparser per command.
    """
    parser = argparse.ArgumentParser(
        prog="funcgrad",
        description="funcgrad: hand-written custom VJP rules for JAX, checked, explained "
                    "and trained.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in _COMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``funcgrad`` command line.

    Args:
        argv: arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        The process exit status.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(_COMMANDS[args.command].run(args) or 0)
    except (ValueError, TypeError, KeyError, OSError, ImportError) as exc:
        # OSError: unwritable paths, a full disk, funcgrad.checkpoint.CheckpointError;
        # ImportError: a missing optional extra (its message says what to install)
        # a KeyError's str() is the repr of its message: show the message itself
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        text = " ".join(str(message).split()) or type(exc).__name__
        print(f"funcgrad {args.command}: error: {text}", file=sys.stderr)
        return 2


def console(argv: Sequence[str] | None = None) -> None:
    """The ``funcgrad`` executable: :func:`main`, then exit without the interpreter's
    teardown.

    Once JAX's C++ runtime is loaded, tearing the interpreter down takes 0.2-0.35 s on a
    2-core machine (``python -c "import jax"``: 0.90 s, against 0.56 s with
    ``os._exit``), longer than a warm ``funcgrad train`` spends loading its programs from
    the compilation cache. Every file
    the commands open is closed before :func:`main` returns (checkpoints are waited
    for), so after a normal return this flushes stdout and stderr, runs the registered
    exit handlers (JAX's, logging's, file locks', coverage's) and ends the process with
    ``os._exit``. It exits normally instead while a non-daemon Python thread is still
    running or a profiler or tracer is installed (``python -m cProfile`` writes its
    results after the program returns; debuggers trace), and an exception propagates as
    usual. Tests and embedding code call :func:`main`.

    Args:
        argv: arguments without the program name; default ``sys.argv[1:]``.
    """
    import atexit
    import os
    import threading

    status = main(argv)
    others = [t for t in threading.enumerate()
              if t is not threading.current_thread() and not t.daemon and t.is_alive()]
    if others or sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(status)  # the interpreter joins the threads; a profiler writes its results
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    atexit._run_exitfuncs()  # what a normal exit runs first (the handlers unregister)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(status)
