"""One-line pytest helpers: put your own primitives under the full battery.

In a test module::

    import funcgrad as fg
    import mypkg.rules  # registers its primitives with fg.primitive(...)

    test_my_rules = fg.testing.parametrize_primitives(["softsign", "my_clip"])

or, inside any test, ``fg.testing.assert_primitive_ok("softsign")``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["assert_primitive_ok", "parametrize_primitives"]


def _record(prim: Any) -> Any:
    if isinstance(prim, str):
        from ..registry import PRIMITIVES

        if prim not in PRIMITIVES:
            raise KeyError(f"assert_primitive_ok: argument 'prim' {prim!r} is not a registered "
                           f"primitive; known: {sorted(PRIMITIVES)}")
        return PRIMITIVES[prim]
    return getattr(prim, "record", prim)


def assert_primitive_ok(prim: Any, **kwargs: Any) -> Any:
    """Run the battery on ``prim`` and raise ``AssertionError`` listing every failing row.

    Args:
        prim: a registered name, or a registry record.
        **kwargs: options of :func:`funcgrad.testing.check_primitive` (``checks``,
            ``quick``, ``seed``).

    Returns:
        The passing :class:`~funcgrad.testing.PrimitiveReport`.

    Raises:
        AssertionError: with one line per failing check (worst element or error).

    Examples:
        >>> assert_primitive_ok("relu", checks=["kinks"]).ok
        True
    """
    from .battery import check_primitive

    report = check_primitive(_record(prim), **kwargs)
    if not report.ok:
        raise AssertionError(f"primitive {report.name!r} failed the battery:\n"
                             + "\n".join("  " + f for f in report.failures))
    return report


def parametrize_primitives(names: Sequence[str] | None = None,
                           **kwargs: Any) -> Callable[..., None]:
    """A pytest test function that runs the battery once per primitive.

    Assign it to a ``test_...`` name in a test module; pytest collects one test per
    primitive, with the primitive's name as its id.

    Args:
        names: registered names; default: every primitive registered at collection time.
        **kwargs: options of :func:`funcgrad.testing.check_primitive`.

    Returns:
        A test function parametrised over ``names``.
    """
    import pytest

    from ..registry import PRIMITIVES

    chosen = list(PRIMITIVES) if names is None else list(names)

    @pytest.mark.parametrize("primitive_name", chosen)
    def test_primitive_battery(primitive_name: str) -> None:
        assert_primitive_ok(primitive_name, **kwargs)

    return test_primitive_battery
