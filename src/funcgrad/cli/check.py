"""``funcgrad check``: the full rule battery over registered primitives, one row per check.

``funcgrad check`` checks every registered primitive; ``funcgrad check relu tanh`` a
selection; ``funcgrad check --module mypkg.rules`` (or ``--module path/to/rules.py``)
imports a module and checks the primitives it registers. A failing or crashing rule is a
FAIL row naming the worst element or the error; the exit status is 1 if any row fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ._args import seed_int

__all__ = ["add_parser", "run", "import_rules"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``check`` subcommand (no JAX import here).

    Args:
        subparsers: the ``add_subparsers()`` object of the ``funcgrad`` parser.

    Returns:
        The subcommand's parser.
    """
    p = subparsers.add_parser(
        "check", help="run the full rule battery (reference, finite differences, kinks, "
                      "edge points, dtypes, transformations) on registered primitives")
    p.add_argument("names", nargs="*", metavar="NAME", help="check only these primitives")
    p.add_argument("--primitive", action="append", metavar="NAME", default=[],
                   help="check only this primitive (repeatable; same as NAME)")
    p.add_argument("--module", action="append", metavar="MODULE", default=[],
                   help="import MODULE (dotted name or .py file) and check the primitives "
                        "it registers (repeatable)")
    p.add_argument("--quick", action="store_true",
                   help="first sample shape only; no transformations or grad of grad")
    p.add_argument("--no-second-order", action="store_true", help="skip grad of grad")
    p.add_argument("--seed", type=seed_int(), default=0,
                   help="seed of the random samples (default %(default)s)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    return p


def _loaded(path: Any) -> Any:
    """The module already imported from ``path`` (under any name), or ``None``."""
    import pathlib

    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and pathlib.Path(file).resolve() == path:
            return module
    return None


def _load(spec: str) -> Any:
    """Import a module by dotted name or ``.py`` path, once per file.

    A file already imported under another name is reused, so its primitives are not
    registered twice.
    """
    import importlib
    import importlib.util
    import os
    import pathlib

    if spec.endswith(".py") or os.sep in spec or "/" in spec:
        path = pathlib.Path(spec).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"check: --module {spec!r}: no such file")
        module = _loaded(path)
        if module is not None:
            return module
        name = f"_funcgrad_check_{path.stem}_{abs(hash(str(path))):x}"
        mod_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        try:
            mod_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module
    if spec not in sys.modules:
        if os.getcwd() not in sys.path:  # like `python -m`: the working directory too
            sys.path.append(os.getcwd())
        found = importlib.util.find_spec(spec)
        if found is not None and found.origin and os.path.isfile(found.origin):
            module = _loaded(pathlib.Path(found.origin).resolve())
            if module is not None:
                return module
    return importlib.import_module(spec)


def import_rules(spec: str) -> list[str]:
    """Import a module of rules and return the names of the primitives it registers.

    Args:
        spec: a dotted module name (``mypkg.rules``; the working directory is searched too)
            or a path to a ``.py`` file.

    Returns:
        The registered names, in registration order.

    Raises:
        ValueError: when the module cannot be imported or registers no primitive.
        FileNotFoundError: for a path that does not exist.
    """
    from ..registry import PRIMITIVES

    before = set(PRIMITIVES)
    try:
        module = _load(spec)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"check: --module {spec!r} could not be imported: "
                         f"{type(exc).__name__}: {exc}") from exc
    names = [n for n in PRIMITIVES if n not in before]
    if not names:  # imported before: find its records by the rule's module
        names = [n for n, p in PRIMITIVES.items()
                 if getattr(p.fn, "__module__", None) == module.__name__]
    if not names:
        raise ValueError(f"check: --module {spec!r} registers no primitive; create them "
                         "with funcgrad.primitive(...) at import time")
    return names


def _short(text: str, width: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def run(args: argparse.Namespace) -> int:
    """Run ``funcgrad check`` with parsed arguments.

    Args:
        args: the parsed arguments.

    Returns:
        The exit status: 0 if every row passed, 1 if any failed.
    """
    from .._cache import enable_for_cli
    from .._text import text_table
    from ..testing import CHECKS, check_registry

    enable_for_cli()  # a second run loads its compiled programs (FUNCGRAD_COMPILATION_CACHE=0: off)
    t0, c0 = time.perf_counter(), time.process_time()
    names = list(args.names) + list(args.primitive)
    for spec in args.module:
        names += [n for n in import_rules(spec) if n not in names]
    checks = [c for c in CHECKS if not (args.no_second_order and c == "grad of grad")]
    reports = check_registry(names or None, checks=None if args.quick else checks,
                             quick=args.quick, seed=args.seed,
                             progress=lambda line: print(line, file=sys.stderr, flush=True))
    rows = [[r.primitive, r.check, "PASS" if r.ok else "FAIL", _short(r.detail)]
            for rep in reports for r in rep.rows]
    print(text_table(rows, ["primitive", "check", "status", "detail"]))
    failed = [r for rep in reports for r in rep.rows if not r.ok]
    for rep in reports:
        if not rep.ok:
            print(f"\n{rep.name} FAILED:")
            for f in rep.failures:
                print("  " + f)
    bad = sorted({r.primitive for r in failed})
    print(f"\n{len(reports)} primitive(s), {len(rows)} checks: {len(rows) - len(failed)} "
          f"passed, {len(failed)} failed{' (' + ', '.join(bad) + ')' if bad else ''} "
          f"in {time.perf_counter() - t0:.1f} s (CPU {time.process_time() - c0:.1f} s)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([{"name": rep.name, "ok": rep.ok, "formula": rep.formula,
                        "seconds": rep.seconds,
                        "rows": [{"check": r.check, "ok": r.ok, "detail": r.detail}
                                 for r in rep.rows]} for rep in reports], fh, indent=2)
    return 1 if failed else 0
