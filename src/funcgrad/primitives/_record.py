"""The record every primitive carries, and the store the registry reads.

:func:`funcgrad.primitive` builds one :class:`Primitive` record per rule and adds it to the
store here. :mod:`funcgrad.registry` exposes the store as the read-only, live mapping
``PRIMITIVES``; the store lives in this package so that primitives import nothing above them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Arg", "Primitive", "BROADCAST_PAIRS", "UNARY_SHAPES", "register", "unregister"]

Shape = tuple[int, ...]

#: Broadcast pairs used by every binary elementwise primitive (DESIGN.md, check (a)).
BROADCAST_PAIRS: tuple[tuple[Shape, Shape], ...] = (
    ((), ()),
    ((3, 4), ()),
    ((1,), (3, 4)),
    ((3, 1), (1, 4)),
    ((3, 4), (3, 4)),
    ((2, 3, 4), (3, 1)),
    ((1, 4), (2, 3, 4)),
)
#: Shapes used by every unary primitive.
UNARY_SHAPES: tuple[tuple[Shape], ...] = (((),), ((1,),), ((3, 1),), ((3, 4),), ((2, 3, 4),))

KINDS = ("float", "labels", "const")
DOMAINS = ("real", "positive", "nonzero", "unit")


@dataclasses.dataclass(frozen=True)
class Arg:
    """One array argument of a primitive.

    Attributes:
        name: the argument's name in the public signature.
        kind: ``"float"`` (differentiable), ``"labels"`` (integer class indices, no
            gradient) or ``"const"`` (a float array that gets no gradient).
        domain: where samples are drawn: ``"real"``, ``"positive"``, ``"nonzero"`` or
            ``"unit"`` (the interval [0, 1]).
    """

    name: str
    kind: str = "float"
    domain: str = "real"


@dataclasses.dataclass(frozen=True)
class Primitive:
    """A registered primitive and what is known about its rule.

    Attributes:
        name: the registry name; the rule's calls are tagged ``funcgrad.<name>``.
        fn: the public function (a ``jax.custom_vjp`` with the hand-written rule).
        reference: the same function in plain ``jnp``/``jax.nn``, or ``None``; when set,
            the checker differentiates it with JAX's own autodiff as an oracle.
        formula: the derivative, for people (written once, here).
        residuals: what the forward pass saves for the backward pass.
        args: the array arguments, in signature order.
        sample_shapes: shape tuples (one shape, or a pytree of shapes, per argument) that
            the checks run over.
        params: static keyword arguments passed to both ``fn`` and ``reference``.
        kinks: the convention at non-differentiable points, or ``""``.
        precision: notes on numerical stability, or ``""``.
        category: the lesson's grouping (arithmetic, reduction, linear, activation, ...).
        kink_points: ``(x, declared derivative)`` pairs of a unary elementwise rule at its
            kinks (relu: ``((0.0, 0.0),)``).
        edge_points: inputs of a unary elementwise rule where the float32/float16 gradient
            must match a float64 truth (large ``|x|``, values near a domain limit).
        broadcasting: whether array arguments broadcast together (NumPy rules) and the
            rule's cotangents are summed back to each argument's shape.
        static: names of the static (hashable, non-array) parameters.
    """

    name: str
    fn: Callable[..., Any]
    reference: Callable[..., Any] | None
    formula: str
    residuals: str
    args: tuple[Arg, ...]
    sample_shapes: tuple[tuple[Any, ...], ...]
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    kinks: str = ""
    precision: str = ""
    category: str = ""
    kink_points: tuple[tuple[float, float], ...] = ()
    edge_points: tuple[float, ...] = ()
    broadcasting: bool = False
    static: tuple[str, ...] = ()

    @property
    def domain(self) -> str:
        """The input domain, one entry per argument."""
        return ", ".join(f"{a.name}: {a.domain if a.kind == 'float' else a.kind}"
                         for a in self.args)

    @property
    def arg_kinds(self) -> tuple[str, ...]:
        """The kind of each argument (``"float"``, ``"labels"`` or ``"const"``)."""
        return tuple(a.kind for a in self.args)

    def call(self, *args: Any) -> Any:
        """Call the custom-rule function with the registered static parameters."""
        return self.fn(*args, **self.params)

    def call_reference(self, *args: Any) -> Any:
        """Call the reference implementation with the registered static parameters.

        Raises:
            TypeError: when the primitive was registered without a reference.
        """
        if self.reference is None:
            raise TypeError(f"{self.name}: this primitive has no reference implementation; "
                            "check it against finite differences instead")
        return self.reference(*args, **self.params)


_STORE: dict[str, Primitive] = {}


def register(record: Primitive, *, replace: bool = False) -> Primitive:
    """Add a record to the registry (``funcgrad.primitive`` does this for you).

    Args:
        record: the :class:`Primitive` record.
        replace: allow replacing a record registered under the same name.

    Returns:
        ``record``.

    Raises:
        ValueError: when the name is taken and ``replace`` is false.
    """
    old = _STORE.get(record.name)
    if old is not None and not replace and old.fn is not record.fn:
        where = getattr(old.fn, "__module__", "?")
        raise ValueError(
            f"primitive: argument 'name' {record.name!r} is already registered (by "
            f"{where}.{getattr(old.fn, '__qualname__', record.name)}); choose another name "
            "or pass replace=True to replace it")
    _STORE[record.name] = record
    return record


def unregister(name: str) -> Primitive:
    """Remove a primitive from the registry and return its record.

    Args:
        name: the registry name.

    Returns:
        The removed record.

    Raises:
        KeyError: naming the unknown primitive.
    """
    try:
        return _STORE.pop(name)
    except KeyError:
        raise KeyError(f"unregister: argument 'name' {name!r} is not a registered "
                       f"primitive; known: {sorted(_STORE)}") from None

